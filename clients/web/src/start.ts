// Start from your own video: upload it in chunks, pick a reference frame, draw the regions to edit, fit, and
// open the session when the fit is done. The fit runs detached on the server, so closing the tab does not
// stop it: its id is kept in localStorage and the page follows it again when it comes back.
import type { Call, Connection } from "./connection";
import { WireRequestError } from "./connection";
import { byId, el } from "./dom";
import { decodeFitProgress, type FitInfo, type FitProgress, type UploadFrame, type WsResponse } from "./generated/received";
import { RoiEditor } from "./roi_editor";

const CHUNK_BYTES = 1 << 20;
const WINDOW_CHUNKS = 4; // chunks sent ahead of the server's acknowledgements
const FRAME_SIDE = 1280; // long side of the frames shown for drawing
const STORAGE_KEY = "vatlas.fit";
const STAGES: Record<string, string> = {
  fitting: "Preparing the video",
  flow: "Tracking motion",
  init: "Starting the mapping",
  main: "Fitting the atlas",
  refine: "Refining the mask",
  inverse: "Learning the inverse map",
  bake: "Baking the layers",
  done: "Done",
};

type Step = "choose" | "roi" | "fit";

export interface StartHost {
  /** Open a new editing session on a bundle (the page may reload for it). */
  openBundle(name: string): Promise<void>;
  bundleNames(): Promise<string[]>;
}

export class StartFlow {
  private readonly editor: RoiEditor;
  private file: File | null = null;
  private uploadId = "";
  private video: UploadFrame | null = null;
  private frameWanted = 0;
  private frameLoading = false;
  private fitId = "";
  private fitStream: number | null = null;
  private lastPreview = 0;
  /** True while the start page is open (the app then leaves the page alone on reconnects). */
  active = false;

  constructor(private readonly conn: Connection, private readonly host: StartHost) {
    this.editor = new RoiEditor(byId<HTMLCanvasElement>("roi-canvas"));
    this.editor.onChange = () => this.refreshRoiUi();
    for (const id of ["new-video-btn", "open-new-video"]) byId(id).addEventListener("click", () => this.open());
    byId("start-close").addEventListener("click", () => this.close());
    const input = byId<HTMLInputElement>("video-file");
    input.addEventListener("change", () => {
      const file = input.files?.[0];
      if (file) void this.upload(file);
      input.value = "";
    });
    const drop = byId("drop-zone");
    drop.addEventListener("dragover", (e) => {
      e.preventDefault();
      drop.dataset.over = "true";
    });
    drop.addEventListener("dragleave", () => delete drop.dataset.over);
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      delete drop.dataset.over;
      const file = e.dataTransfer?.files?.[0];
      if (file) void this.upload(file);
    });
    byId("upload-retry").addEventListener("click", () => this.file && void this.upload(this.file));
    const scrubber = byId<HTMLInputElement>("ref-scrubber");
    scrubber.addEventListener("input", () => this.showFrame(Number(scrubber.value)));
    byId("roi-new").addEventListener("click", () => this.editor.newRegion());
    byId("roi-remove").addEventListener("click", () => this.editor.removeRegion());
    byId("roi-clear").addEventListener("click", () => this.editor.clear());
    byId("fit-start").addEventListener("click", () => void this.startFit());
    byId("fit-name").addEventListener("input", () => this.refreshRoiUi());
    byId("fit-back").addEventListener("click", () => this.step(this.uploadId ? "roi" : "choose"));
    byId("fit-cancel").addEventListener("click", () => void this.cancelFit());
    byId("share-box-close").addEventListener("click", () => (byId("share-box").hidden = true));
    this.exposeForTests();
  }

  /** Open the start page at its first step. */
  open(): void {
    this.active = true;
    byId("open-dialog").hidden = true;
    byId("start-page").hidden = false;
    if (!this.fitId) this.step("choose");
  }

  close(): void {
    this.active = false;
    byId("start-page").hidden = true;
  }

  /** The socket is (re)open: follow a fit this browser started, if the server still knows it. True when the
   * start page is showing (the app should not put its open dialog over it). */
  async onConnected(): Promise<boolean> {
    const stored = storedFit();
    if (stored && this.fitStream === null) {
      const fits = (await this.conn.request({ list_fits: {} })).fits?.fits ?? [];
      const known = fits.find((f) => f.fit_id === stored.fit_id);
      if (known) {
        this.follow(known);
        return true;
      }
      localStorage.removeItem(STORAGE_KEY);
    }
    return this.active;
  }

  /** Called by the app's open dialog: with no bundles the start page opens; running fits are listed. */
  async offer(noBundles: boolean): Promise<void> {
    if (noBundles) {
      this.open();
      return;
    }
    const fits = ((await this.conn.request({ list_fits: {} })).fits?.fits ?? []).filter((f) => f.running);
    byId("running-fits").replaceChildren(
      ...fits.map((info) => {
        const button = el("button", { "data-testid": "follow-fit" }, [
          el("span", {}, [`Fitting ${info.name}`]),
          el("span", { class: "muted" }, [`${Math.round((info.progress?.fraction ?? 0) * 100)}%`]),
        ]);
        button.addEventListener("click", () => this.follow(info));
        return el("li", {}, [button]);
      }),
    );
  }

  // ------------------------------------------------------------------ step 1: upload

  private async upload(file: File): Promise<void> {
    this.file = file;
    this.step("choose");
    const bar = byId<HTMLProgressElement>("upload-progress");
    const label = byId("upload-label");
    byId("upload-box").hidden = false;
    byId("upload-retry").hidden = true;
    this.error("");
    bar.value = 0;
    label.textContent = `Uploading ${file.name}…`;
    try {
      const result = await this.sendFile(file, (bytes) => {
        bar.value = bytes / Math.max(file.size, 1);
        label.textContent = `Uploading ${file.name}: ${mb(bytes)} of ${mb(file.size)} MB`;
      });
      this.uploadId = result;
      bar.value = 1;
      label.textContent = `Uploaded ${file.name} (${mb(file.size)} MB); reading its frames…`;
      const first = await this.frame(0);
      this.video = first;
      const scrubber = byId<HTMLInputElement>("ref-scrubber");
      scrubber.max = String(Math.max(0, first.frames - 1));
      scrubber.value = "0";
      this.editor.clear();
      await this.display(first);
      byId<HTMLInputElement>("fit-name").value = await this.suggestName(file.name);
      this.step("roi");
    } catch (error) {
      this.error(messageOf(error));
      label.textContent = `Upload of ${file.name} failed`;
      byId("upload-retry").hidden = false;
    }
  }

  /** The file in CHUNK_BYTES chunks under one request id, WINDOW_CHUNKS ahead of the acknowledgements. */
  private sendFile(file: File, progress: (bytes: number) => void): Promise<string> {
    return new Promise((resolve, reject) => {
      let acked = 0;
      let sent = 0;
      let id: number | null = null;
      let failed = false;
      const fail = (error: Error) => {
        if (failed) return;
        failed = true;
        if (id !== null) this.conn.endStream(id);
        reject(error);
      };
      const handle = (response: WsResponse) => {
        if (response.error) fail(new WireRequestError(response.error));
        else if (response.upload_progress) {
          acked = response.upload_progress.bytes || acked;
          progress(acked);
          void pump();
        } else if (response.upload) {
          if (id !== null) this.conn.endStream(id);
          progress(file.size);
          resolve(response.upload.upload_id);
        }
      };
      const chunk = async (offset: number): Promise<Call> => {
        const data = new Uint8Array(await file.slice(offset, offset + CHUNK_BYTES).arrayBuffer());
        const last = offset + CHUNK_BYTES >= file.size;
        return offset === 0
          ? { upload: { filename: file.name, data, last, total_bytes: file.size } }
          : { upload: { data, last } };
      };
      let pumping = false;
      const pump = async (): Promise<void> => {
        if (pumping || failed) return;
        pumping = true;
        try {
          while (sent < file.size && sent - acked < WINDOW_CHUNKS * CHUNK_BYTES && !failed) {
            const call = await chunk(sent);
            if (id === null) {
              id = this.conn.stream(call, handle);
              if (id === null) throw new Error("not connected to the server");
            } else if (!this.conn.sendAs(id, call)) throw new Error("the connection was lost during the upload");
            sent += CHUNK_BYTES;
          }
        } catch (error) {
          fail(error instanceof Error ? error : new Error(String(error)));
        } finally {
          pumping = false;
        }
      };
      if (file.size === 0) reject(new Error(`${file.name} is empty`));
      else void pump();
    });
  }

  // ------------------------------------------------------------------ step 2: reference frame and regions

  private async frame(index: number): Promise<UploadFrame> {
    const response = await this.conn.request({
      upload_frame: { upload_id: this.uploadId, frame: index, max_side: FRAME_SIDE },
    });
    if (!response.upload_frame) throw new Error("the server sent no frame");
    return response.upload_frame;
  }

  /** Latest wins: one frame request in flight, the newest wish fetched next. */
  private async showFrame(index: number): Promise<void> {
    this.frameWanted = index;
    byId("ref-label").textContent = `Reference frame ${index + 1} of ${this.video?.frames ?? 0}`;
    if (this.frameLoading) return;
    this.frameLoading = true;
    try {
      while (true) {
        const wanted = this.frameWanted;
        const frame = await this.frame(wanted);
        if (wanted === this.frameWanted) {
          await this.display(frame);
          break;
        }
      }
    } catch (error) {
      this.error(messageOf(error));
    } finally {
      this.frameLoading = false;
    }
  }

  private async display(frame: UploadFrame): Promise<void> {
    const image = await createImageBitmap(new Blob([frame.jpeg as BlobPart], { type: "image/jpeg" }));
    this.editor.setFrame(image, frame.width || image.width, frame.height || image.height);
    const canvas = this.editor.canvas;
    canvas.dataset.frame = String(frame.frame);
    byId("ref-label").textContent = `Reference frame ${frame.frame + 1} of ${frame.frames}`;
    byId("video-label").textContent = `${frame.width}×${frame.height} · ${frame.frames} frames · ${frame.fps.toFixed(2)} fps`;
  }

  private refreshRoiUi(): void {
    const count = this.editor.closedCount();
    const name = byId<HTMLInputElement>("fit-name").value.trim();
    byId<HTMLButtonElement>("fit-start").disabled = count === 0 || !/^[A-Za-z0-9_.-]{1,64}$/.test(name);
    byId("roi-count").textContent =
      count === 0 ? "No region yet" : count === 1 ? "1 region" : `${count} regions (kept separate)`;
    byId<HTMLButtonElement>("roi-remove").disabled = this.editor.regions.length === 0;
    byId<HTMLButtonElement>("roi-clear").disabled = this.editor.regions.length === 0;
  }

  private async suggestName(filename: string): Promise<string> {
    const base = (filename.replace(/\.[^.]*$/, "").replace(/[^A-Za-z0-9_.-]+/g, "-").replace(/^[-.]+|-+$/g, "") || "clip")
      .slice(0, 56)
      .toLowerCase();
    const taken = new Set(await this.host.bundleNames().catch(() => []));
    let name = base;
    for (let i = 2; taken.has(name); i++) name = `${base}-${i}`;
    return name;
  }

  // ------------------------------------------------------------------ step 3: the fit

  private async startFit(): Promise<void> {
    this.editor.newRegion(); // an open region of 3+ points counts
    const polygons = this.editor.polygons();
    if (!polygons.length) return;
    const name = byId<HTMLInputElement>("fit-name").value.trim();
    const iterations = Number(byId<HTMLInputElement>("fit-iterations").value) || 0;
    const ref = Number(this.editor.canvas.dataset.frame ?? 0);
    const button = byId<HTMLButtonElement>("fit-start");
    button.disabled = true;
    this.error("");
    const call: Call = {
      start_fit: {
        upload_id: this.uploadId,
        name,
        roi_json: JSON.stringify({ ref_frame: ref, polygons }),
        preset: byId<HTMLSelectElement>("fit-preset").value,
        iterations,
        detach: true, // the fit keeps running when this tab closes; the page finds it again by id
      },
    };
    // Until the server reports, the fit shows as starting.
    this.showFit({ ...decodeFitProgress({ stage: "fitting" }), name });
    this.step("fit");
    this.fitStream = this.conn.stream(call, (response) => this.onFitResponse(response, name));
    if (this.fitStream === null) {
      this.step("roi");
      this.error("not connected to the server");
      button.disabled = false;
    }
  }

  /** Show a fit's progress and follow it (after a reload or a reconnect, or from the open dialog's list). */
  private follow(info: FitInfo): void {
    this.open();
    this.fitId = info.fit_id;
    this.step("fit");
    if (info.progress) this.showFit({ ...info.progress, name: info.name });
    if (info.error) {
      this.fitFailed(info.error.message || "the fit failed");
      return;
    }
    this.fitStream = this.conn.stream({ attach_fit: { fit_id: this.fitId } }, (r) => this.onFitResponse(r, info.name));
  }

  private onFitResponse(response: WsResponse, name: string): void {
    if (response.error) {
      this.fitStream = null;
      if (this.fitId) this.fitFailed(response.error.message);
      else {
        // refused before it started (a bad region, a taken name, a busy server): back to the drawing
        this.step("roi");
        this.error(response.error.message || "the fit was refused");
        this.refreshRoiUi();
      }
      return;
    }
    const event = response.fit;
    if (!event) return;
    if (!this.fitId && event.fit_id) {
      this.fitId = event.fit_id;
      localStorage.setItem(STORAGE_KEY, JSON.stringify({ fit_id: this.fitId, name }));
    }
    this.showFit({ ...event, name });
    if (event.done) void this.finished(event.bundle?.name || name);
  }

  private showFit(event: FitProgress & { name?: string }): void {
    const fraction = event.fraction;
    byId<HTMLProgressElement>("fit-progress").value = fraction;
    byId("fit-percent").textContent = `${Math.floor(fraction * 100)}%`;
    const stage = STAGES[event.stage] ?? event.stage;
    const number = event.stage_number ? `Step ${event.stage_number} of ${event.stage_count}: ` : "";
    byId("fit-stage").textContent = `${number}${stage}`;
    byId("fit-stage").dataset.stage = event.stage;
    byId("fit-cancel").hidden = Boolean(event.done);
    const eta = event.eta_seconds;
    byId("fit-eta").textContent = event.done ? "" : eta > 0 ? `about ${duration(eta)} left` : "estimating time left…";
    byId("fit-readout").textContent = event.readout || event.message;
    if (event.name) byId("fit-title").textContent = `Fitting ${event.name}`;
    if (event.preview?.length) {
      const url = URL.createObjectURL(new Blob([event.preview as BlobPart], { type: "image/jpeg" }));
      const img = byId<HTMLImageElement>("fit-preview");
      const old = img.src;
      img.src = url;
      img.hidden = false;
      img.dataset.previews = String(++this.lastPreview);
      if (old.startsWith("blob:")) URL.revokeObjectURL(old);
    }
  }

  /** Stop the running fit on the server; its stream then ends with CANCELLED (fitFailed shows that). */
  private async cancelFit(): Promise<void> {
    if (!this.fitId) return;
    const button = byId<HTMLButtonElement>("fit-cancel");
    button.disabled = true;
    try {
      const response = await this.conn.request({ cancel_fit: { fit_id: this.fitId } });
      if (response.error) this.error(response.error.message || "the fit could not be cancelled");
    } catch (error) {
      this.error(messageOf(error));
    } finally {
      button.disabled = false;
    }
  }

  private fitFailed(message: string): void {
    localStorage.removeItem(STORAGE_KEY);
    this.fitId = "";
    this.fitStream = null;
    byId("fit-cancel").hidden = true;
    byId("fit-stage").textContent = "The fit stopped";
    byId("fit-eta").textContent = "";
    this.error(message);
    byId("fit-back").hidden = false;
  }

  private async finished(bundle: string): Promise<void> {
    localStorage.removeItem(STORAGE_KEY);
    if (this.fitStream !== null) this.conn.endStream(this.fitStream);
    this.fitStream = null;
    this.fitId = "";
    byId("fit-stage").textContent = "Done: opening your clip…";
    try {
      await this.host.openBundle(bundle);
      this.close();
      byId("share-box").hidden = false;
      byId<HTMLInputElement>("share-url").value = location.href;
    } catch (error) {
      this.error(messageOf(error));
    }
  }

  // ------------------------------------------------------------------ page

  private step(step: Step): void {
    const page = byId("start-page");
    page.dataset.step = step;
    for (const section of page.querySelectorAll<HTMLElement>("[data-step]")) section.hidden = section.dataset.step !== step;
    byId("fit-back").hidden = true;
    if (step !== "fit") byId("fit-cancel").hidden = true;
    if (step === "roi") {
      this.refreshRoiUi();
      this.editor.draw();
      this.editor.canvas.focus();
    }
  }

  private error(message: string): void {
    const box = byId("start-error");
    box.textContent = message;
    box.hidden = !message;
  }

  private exposeForTests(): void {
    (window as unknown as { vatlasStart: unknown }).vatlasStart = {
      clientPoint: (x: number, y: number) => this.editor.clientPoint(x, y),
      regions: () => this.editor.polygons(),
      get fitId() {
        return storedFit()?.fit_id ?? "";
      },
    };
  }
}

/** Load a page that opens bundle `name` in a new session (this page already has one). */
export async function reopenWith(name: string, token: string): Promise<void> {
  const url = new URL(location.href);
  url.search = "";
  url.searchParams.set("bundle", name);
  if (token) url.searchParams.set("token", token);
  location.assign(url.toString());
  await new Promise(() => undefined); // the page is going away
}

function storedFit(): { fit_id: string; name: string } | null {
  try {
    const value = JSON.parse(localStorage.getItem(STORAGE_KEY) ?? "null") as { fit_id?: unknown; name?: unknown } | null;
    return value && typeof value.fit_id === "string" ? { fit_id: value.fit_id, name: String(value.name ?? "") } : null;
  } catch {
    return null;
  }
}

function mb(bytes: number): string {
  return (bytes / 1e6).toFixed(bytes < 1e7 ? 2 : 0);
}

function duration(seconds: number): string {
  const s = Math.round(seconds);
  return s < 60 ? `${s} s` : `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
}

function messageOf(error: unknown): string {
  return error instanceof WireRequestError ? error.wire.message || error.message : error instanceof Error ? error.message : String(error);
}
