// The editor: session lifecycle, rendering requests, tools, panels. DOM ids are stable (tests rely on them).
import { Connection, SERVER_STOPPED, WireRequestError, type ConnectionState } from "./connection";
import { OBJECT_TYPES, SessionDocument, type Layer } from "./document";
import type {
  BundleInfo,
  EditOp,
  RenderedFrame,
  ServerEvent,
  SessionInfo,
  Vec2,
  WsResponse,
} from "./generated/messages";
import { Exporter } from "./export";
import { hexToRgb, rounded, simplify } from "./geometry";
import { adjustmentOp, stickerOp, strokeOp, textureOp } from "./ops";
import { renderLayers, renderMarks, renderParticipants } from "./panels";
import { $, byId, el, readNumber } from "./dom";
import { reopenWith, StartFlow } from "./start";
import { ROI_MASK_SIDE } from "./roi";
import { Playback } from "./playback";
import { Selection } from "./select-tool";
import { SessionProtocol } from "./session";
import { exposeForTests } from "./test-hooks";
import { View, type Preview, type Rect } from "./view";

type Tool = "select" | "brush" | "eraser" | "image" | "adjust" | "sticker" | "pan";
const TOOLS: Tool[] = ["select", "brush", "eraser", "image", "adjust", "sticker", "pan"];
const TOOL_KEYS: Record<string, Tool> = { v: "select", b: "brush", e: "eraser", i: "image", a: "adjust", s: "sticker", h: "pan" };
const PALETTE = ["#ff6b6b", "#4da3ff", "#34c759", "#ffb020", "#bf5af2", "#5ac8fa", "#ff9f0a", "#ff375f"];
/** Renders while scrubbing, drawing, panning or zooming: half the final scale, quick; refined once the user
 *  pauses. The final scale and region follow the viewport: the frame's visible part, at one rendered pixel per
 *  device pixel (at most the frame's own resolution). */
const DRAFT = { factor: 0.5, quality: 60 };
const FINAL_QUALITY = 90;
const IDLE_MS = 250;
const MIN_SCALE = 1 / 16; // the server's floor
const SCALE_STEP = 64; // scales are whole 64ths, rounded down (never more pixels than the canvas shows)
const MAX_POINTS = 4000;

interface Params {
  bundle: string;
  session: string;
  join: string;
  token: string;
  name: string;
}

export class App {
  private readonly conn: Connection;
  private readonly view: View;
  private readonly doc = new SessionDocument();
  private readonly params: Params;
  private session: SessionInfo | null = null;
  private bundle: BundleInfo | null = null;
  private readonly protocol = new SessionProtocol(); // join, resume, resend: the session protocol (session.ts)
  private name: string;
  private readonly color: string;
  private tool: Tool = "brush";
  private frame = 0;
  private atlas = false;
  private opCounter = 0;
  private readonly idPrefix = Math.random().toString(36).slice(2, 8);
  // Rendering: one request in flight at most; a newer wish replaces an older one (latest wins).
  private renderInFlight = false;
  private renderWanted = false;
  private renderCounter = 0;
  private lastActivity = 0;
  private shownDraft = false;
  private idleTimer: number | undefined;
  private renders = 0;
  private readonly editLatencies: number[] = [];
  private drafts = 0;
  // Pointer interaction.
  private drag: { kind: "pan" | "draw"; last: [number, number]; pointerId: number } | null = null;
  private imageBytes: Uint8Array | null = null;
  /** The picked image, for the local preview while it is placed. */
  private imageBitmap: ImageBitmap | null = null;
  private selection!: Selection;
  private stickerBytes: Uint8Array | null = null;
  private stickerAspect = 1;
  private pendingStickerAt: { at: Vec2; frame: number } | null = null;
  private presenceTimer: number | undefined;
  private pendingPresence: Vec2 | null = null;
  private readonly exporter: Exporter;
  private readonly start: StartFlow;
  private readonly playback: Playback;

  constructor() {
    const query = new URLSearchParams(location.search);
    this.params = {
      bundle: query.get("bundle") ?? "",
      session: query.get("session") ?? "",
      join: query.get("join") ?? "",
      token: query.get("token") ?? "",
      name: query.get("name") ?? "",
    };
    this.name = (this.params.name || storedName() || `Guest ${Math.floor(100 + Math.random() * 900)}`).slice(0, 40);
    byId<HTMLInputElement>("my-name").value = this.name;
    this.color = PALETTE[Math.floor(Math.random() * PALETTE.length)] ?? "#4da3ff";
    this.view = new View(byId<HTMLCanvasElement>("view-canvas"));
    this.view.onTransform = () => this.onTransform();
    this.view.onEditShown = (ms) => {
      this.editLatencies.push(ms);
      this.view.canvas.dataset.editLatencyMs = ms.toFixed(1);
    };
    // Relative to the page, so the app also works behind a reverse proxy under a path prefix.
    const wsUrl = new URL("ws", location.href);
    wsUrl.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    wsUrl.search = "";
    wsUrl.hash = "";
    this.conn = new Connection({
      url: wsUrl.toString(),
      // A share link carries only the session's join token: the server accepts it as a hello for that session.
      token: this.params.token || this.params.join,
      onState: (state, detail) => this.showConnection(state, detail),
      onOpen: (reconnected) => void this.onOpen(reconnected),
      onUnsolicited: (response) => this.onUnsolicited(response),
    });
    this.exporter = new Exporter(this.conn);
    const app = this;
    this.playback = new Playback({
      conn: this.conn,
      playable: () => (this.session && !this.atlas ? this.session.session_id ?? "" : null),
      get frames() { return app.bundle?.frames ?? 1; },
      get fps() { return app.bundle?.fps ?? 0; },
      get frame() { return app.frame; },
      scale: () => this.finalScale(),
      wantsRegions: () => this.view.regions.size < (this.bundle?.frames ?? 1),
      show: (frame, scale) => void this.display(frame, false, false, scale),
      step: () => {
        if (this.renderInFlight) return;
        this.frame = (this.frame + 1) % (this.bundle?.frames ?? 1);
        this.renderNow(true);
        this.setFrame(this.frame, false);
      },
      stopped: () => this.renderNow(),
    }, ROI_MASK_SIDE);
    this.start = new StartFlow(this.conn, {
      // after a fit: open it here, or (with a session already open) in a fresh page for the new bundle
      openBundle: (name) => (this.session ? reopenWith(name, this.params.token) : this.openBundle(name)),
      bundleNames: async () => ((await this.conn.request({ list_bundles: {} })).bundles?.bundles ?? []).map((b) => b.name ?? ""),
    });
    this.selection = new Selection({
      view: this.view,
      doc: this.doc,
      frame: () => this.frame,
      newOpId: (kind) => this.newOpId(kind),
      sendOp: (op, preview) => this.sendOp(op, preview),
      changed: () => this.refreshLayers(),
    });
    this.bindUi();
    this.exposeForTests();
    this.conn.start();
  }

  // ------------------------------------------------------------------ session lifecycle

  private async onOpen(reconnected: boolean): Promise<void> {
    // Streams of the old socket are gone: reset what was waiting on them.
    this.playback.connectionLost();
    this.exporter.abandon();
    try {
      if (this.session) {
        await this.rejoin(reconnected);
      } else if (this.params.session) {
        await this.join(this.params.session, this.params.join, false);
      } else if (this.params.bundle) {
        await this.openBundle(this.params.bundle);
      } else if (!(await this.start.onConnected())) {
        await this.showOpenDialog();
      }
    } catch (error) {
      this.toast(messageOf(error));
      if (!this.session) await this.showOpenDialog(messageOf(error)).catch(() => undefined);
    }
  }

  private async showOpenDialog(error = ""): Promise<void> {
    const dialog = byId("open-dialog");
    dialog.hidden = false;
    byId("open-error").textContent = error;
    const list = byId("bundle-list");
    const response = await this.conn.request({ list_bundles: {} });
    const bundles = response.bundles?.bundles ?? [];
    list.replaceChildren(
      ...(bundles.length
        ? bundles.map((info) => {
            const button = el("button", { "data-testid": "open-bundle", "data-bundle": info.name ?? "" }, [
              el("span", {}, [info.name ?? ""]),
              el("span", { class: "muted" }, [`${info.width ?? 0}×${info.height ?? 0} · ${info.frames ?? 0} frames`]),
            ]);
            button.addEventListener("click", () => {
              for (const b of list.querySelectorAll("button")) b.disabled = true;
              byId("open-error").textContent = "";
              button.dataset.opening = "true";
              this.openBundle(info.name ?? "")
                .catch((e: unknown) => (byId("open-error").textContent = messageOf(e)))
                .finally(() => {
                  for (const b of list.querySelectorAll("button")) b.disabled = false;
                  delete button.dataset.opening;
                });
            });
            return el("li", {}, [button]);
          })
        : [el("li", { class: "empty" }, ["No bundles on this server yet."])]),
    );
    await this.start.offer(bundles.length === 0);
  }

  /** Back after a reconnect: resume the session; if the server no longer has it, recreate it from our copy. */
  private async rejoin(reconnected: boolean): Promise<void> {
    const session = this.session as SessionInfo;
    try {
      await this.join(session.session_id ?? "", session.join_token ?? "", reconnected);
    } catch (error) {
      if (error instanceof WireRequestError && error.wire.code === "OUT_OF_RANGE") {
        // The server is behind what we saw (it lost a tail of its log): take its full state instead.
        await this.join(session.session_id ?? "", session.join_token ?? "", false);
        return;
      }
      if (!(error instanceof WireRequestError) || error.wire.code !== "NOT_FOUND" || !session.bundle) throw error;
      const ops = this.doc.live().map((layer) => layer.op);
      await this.conn.request({ load_bundle: { name: session.bundle } });
      const created = await this.conn.request({ create_session: { bundle: session.bundle, document: { version: 1, ops } } });
      const info = created.session_info;
      if (!info?.session_id) throw new Error("the server did not return a session");
      this.toast(`The server lost session ${session.session_id ?? ""}; reopened it with your ${ops.length} edits`, false);
      await this.join(info.session_id, info.join_token ?? "", false);
    }
  }

  private async openBundle(name: string): Promise<void> {
    await this.conn.request({ load_bundle: { name } });
    const created = await this.conn.request({ create_session: { bundle: name } });
    const info = created.session_info;
    if (!info?.session_id) throw new Error("the server did not return a session");
    await this.join(info.session_id, info.join_token ?? "", false);
  }

  /** Join (or rejoin after a reconnect, replaying what we missed) and wait for the snapshot. */
  private async join(sessionId: string, joinToken: string, resume: boolean): Promise<void> {
    const join = this.protocol.join({ sessionId, joinToken, name: this.name, color: this.color },
                                    resume ? this.doc.seq : 0);
    const snapshot = await new Promise<ServerEvent>((resolve, reject) => {
      let settled = false;
      const id = this.conn.stream(
        {
          session: { join },
        },
        (response) => {
          if (!settled && response.error) {
            settled = true;
            reject(new WireRequestError(response.error));
          } else if (response.event) {
            // Resume may answer with replayed ops instead of a snapshot; either means we are in.
            if (!settled) {
              settled = true;
              resolve(response.event);
            }
            this.onEvent(response.event);
          } else if (response.error) {
            this.toast(`${response.error.code}: ${response.error.message}`);
          }
        },
      );
      if (id === null) reject(new Error("not connected"));
    });
    if (!snapshot.snapshot && !this.session) throw new Error("join did not return a snapshot");
    byId("open-dialog").hidden = true;
    for (const op of this.protocol.resend()) this.conn.send({ session: { op } });
    this.renderNow();
  }

  private async adoptSession(info: SessionInfo): Promise<void> {
    const changed = this.session?.bundle !== info.bundle || !this.bundle;
    this.session = info;
    const link = new URL(location.href);
    link.search = "";
    link.searchParams.set("session", info.session_id ?? "");
    link.searchParams.set("join", info.join_token ?? "");
    // No server token in the address bar: it is what people copy, and the join token is enough to come back.
    history.replaceState(null, "", link.toString());
    byId("session-label").textContent = `${info.bundle ?? ""} · session ${(info.session_id ?? "").slice(0, 8)}`;
    byId<HTMLButtonElement>("share-btn").disabled = false;
    byId<HTMLButtonElement>("export-btn").disabled = false;
    if (changed && info.bundle) {
      const response = await this.conn.request({ bundle_info: { name: info.bundle } });
      this.bundle = response.bundle_info ?? null;
      const frames = this.bundle?.frames ?? 1;
      const scrubber = byId<HTMLInputElement>("scrubber");
      scrubber.max = String(Math.max(0, frames - 1));
      this.view.setSize(this.bundle?.width ?? 1, this.bundle?.height ?? 1);
      this.offerRegions(this.bundle?.roi?.polygons?.length ?? 0);
      byId("fps-label").textContent = `${(this.bundle?.fps ?? 0).toFixed(2)} fps`;
      this.setFrame(Math.min(this.frame, frames - 1), false);
      this.refreshMarks();
      this.renderNow();
    }
  }

  // ------------------------------------------------------------------ server events

  private onUnsolicited(response: WsResponse): void {
    if (response.event) this.onEvent(response.event);
    else if (response.error) this.toast(`${response.error.code}: ${response.error.message}`);
  }

  private onEvent(event: ServerEvent): void {
    if (event.snapshot) {
      const snap = event.snapshot;
      // On resume the server may send an empty document and then replay the ops we missed: keep ours.
      if (this.protocol.snapshot(snap)) this.doc.reset(snap.document, snap.session?.seq ?? 0, snap.authors ?? []);
      this.doc.participants.clear();
      for (const p of snap.participants ?? []) {
        if (!p.participant_id) continue;
        this.doc.participants.set(p.participant_id, p);
        this.doc.remember(p.participant_id, p.name ?? "", p.color ?? "");
      }
      if (snap.session) void this.adoptSession(snap.session).catch((e: unknown) => this.toast(messageOf(e)));
      this.refreshPanels();
      this.renderNow();
      byId("app").dataset.ready = "true";
    } else if (event.applied) {
      const { op, seq, participant_id: author } = event.applied;
      if (op && this.doc.applyOp(op, author ?? "", seq ?? 0)) {
        this.refreshLayers();
        this.renderNow();
      }
    } else if (event.accepted) {
      this.protocol.accepted(event.accepted.op_id ?? "");
      const preview = this.view.previews.find((p) => p.opId === event.accepted?.op_id);
      if (preview) preview.seq = event.accepted.seq ?? 0;
    } else if (event.rejected) {
      const opId = event.rejected.op_id ?? "";
      const { duplicate, plain, message } = this.protocol.rejected(opId, event.rejected.error,
                                                                   this.doc.get(opId) !== undefined);
      this.view.previews = this.view.previews.filter((p) => p.opId !== opId);
      this.view.invalidate();
      if (!duplicate) this.toast(plain ? message : `Edit rejected: ${message}`);
    } else if (event.presence?.participant) {
      const p = event.presence.participant;
      const id = p.participant_id ?? "";
      if (event.presence.left) this.doc.participants.delete(id);
      else {
        this.doc.participants.set(id, p);
        this.doc.remember(id, p.name ?? "", p.color ?? "");
      }
      this.refreshParticipants();
      this.refreshLayers();
    } else if (event.error) {
      this.toast(`${event.error.code}: ${event.error.message}`);
    }
  }

  // ------------------------------------------------------------------ rendering

  /** Ask for the current frame; coalesced so at most one request is in flight. */
  private renderNow(force = false): void {
    if (!this.session || (this.playback.playing && !force)) return;
    if (this.renderInFlight) {
      this.renderWanted = true;
      return;
    }
    void this.renderOnce();
  }

  private interactive(): boolean {
    return performance.now() - this.lastActivity < IDLE_MS;
  }

  private async renderOnce(): Promise<void> {
    if (!this.session || !this.conn.isOpen) return;
    this.renderInFlight = true;
    this.renderWanted = false;
    const draft = this.interactive();
    const frame = this.frame;
    const atlas = this.atlas;
    const view = atlas ? { scale: 1, region: null } : this.viewport();
    const scale = draft ? snapScale(view.scale * DRAFT.factor) : view.scale;
    const region = view.region;
    const counter = ++this.renderCounter;
    try {
      const render = {
        session_id: this.session.session_id ?? "",
        frame,
        format: "jpeg",
        quality: draft ? DRAFT.quality : FINAL_QUALITY,
        scale,
        atlas,
        request_id: counter,
        // The frame's editable region, once per frame (kept in view.regions).
        ...(!atlas && !this.view.regions.has(frame) ? { roi_mask_side: ROI_MASK_SIDE } : {}),
        ...(region ? { region: { x: region[0], y: region[1], width: region[2], height: region[3] } } : {}),
      };
      const response = await this.conn.request({ render }, 15_000);
      if (response.frame) await this.display(response.frame, atlas, draft, scale, region);
    } catch (error) {
      if (this.conn.isOpen) this.toast(`Render failed: ${messageOf(error)}`);
    } finally {
      this.renderInFlight = false;
    }
    if (this.renderWanted || frame !== this.frame || atlas !== this.atlas) this.renderNow();
    else if (draft) this.scheduleRefine();
  }

  /** Full resolution unless the frame is shown smaller: then only the pixels the screen can show. */
  private finalScale(): number {
    return snapScale(this.view.zoom * (window.devicePixelRatio || 1));
  }

  /** What the canvas shows of the frame: its visible part in full-resolution pixels (null when all of it is
   *  on the canvas) and the final scale, so a render holds no more pixels than the canvas shows of it. */
  private viewport(): { scale: number; region: Rect | null } {
    const scale = this.finalScale();
    const width = this.bundle?.width ?? 0;
    const height = this.bundle?.height ?? 0;
    const visible = this.view.visibleRect(width, height);
    const whole = !visible || (visible[2] === width && visible[3] === height);
    return { scale, region: whole ? null : visible };
  }

  /** Whether the frame on the canvas covers what the viewport shows now, at its resolution. */
  private shownCoversView(): boolean {
    const shown = this.view.shown;
    if (!shown || shown.atlas) return true;
    const want = this.viewport();
    if (shown.scale < want.scale) return false;
    const [x, y, w, h] = shown.region ?? [0, 0, shown.width, shown.height];
    const [vx, vy, vw, vh] = want.region ?? [0, 0, shown.width, shown.height];
    return x <= vx && y <= vy && x + w >= vx + vw && y + h >= vy + vh;
  }

  private onTransform(): void {
    this.updateZoomLabel();
    // Zoomed in past what the last render resolved, or panned beyond its region: ask again.
    if (!this.playback.playing && !this.shownCoversView()) this.renderNow();
  }

  /** A zoom or pan by the user: interactive (drafts) until it pauses, then refined to the new viewport. */
  private userTransform(): void {
    this.lastActivity = performance.now();
    this.onTransform();
  }

  private scheduleRefine(): void {
    window.clearTimeout(this.idleTimer);
    this.idleTimer = window.setTimeout(() => {
      if (this.interactive()) this.scheduleRefine();
      else if (this.shownDraft) this.renderNow();
    }, IDLE_MS);
  }

  /** Decode off the main thread (createImageBitmap) and show it. */
  private async display(frame: RenderedFrame, atlas: boolean, draft: boolean, scale: number,
                        region: Rect | null = null): Promise<void> {
    if (frame.roi_mask && !atlas) {
      this.view.regions.add(frame.frame ?? 0, frame.roi_mask);
      this.showRegionState();
    }
    const data = frame.data ?? new Uint8Array();
    const format = frame.format || "jpeg";
    let bitmap: ImageBitmap;
    if (format === "raw") {
      const w = frame.width ?? 0;
      const h = frame.height ?? 0;
      const rgba = new Uint8ClampedArray(w * h * 4);
      for (let i = 0, j = 0; i < w * h; i++, j += 3) {
        rgba[i * 4] = data[j] ?? 0;
        rgba[i * 4 + 1] = data[j + 1] ?? 0;
        rgba[i * 4 + 2] = data[j + 2] ?? 0;
        rgba[i * 4 + 3] = 255;
      }
      bitmap = await createImageBitmap(new ImageData(rgba, w, h));
    } else {
      bitmap = await createImageBitmap(new Blob([data as BlobPart], { type: `image/${format}` }));
    }
    const full: [number, number] = atlas
      ? [Math.round(bitmap.width / scale), Math.round(bitmap.height / scale)]
      : [this.bundle?.width ?? bitmap.width, this.bundle?.height ?? bitmap.height];
    this.view.show({ bitmap, frame: frame.frame ?? 0, atlas, seq: frame.seq ?? 0, scale, width: full[0], height: full[1],
                     region });
    this.shownDraft = draft;
    this.renders++;
    if (draft) this.drafts++;
    const canvas = this.view.canvas;
    canvas.dataset.frame = String(frame.frame ?? 0);
    canvas.dataset.seq = String(frame.seq ?? 0);
    canvas.dataset.renders = String(this.renders);
    canvas.dataset.draft = String(draft);
    canvas.dataset.drafts = String(this.drafts);
    canvas.dataset.atlas = String(atlas);
    canvas.dataset.renderMs = String(frame.render_ms ?? 0);
    canvas.dataset.scale = String(scale);
    canvas.dataset.region = region ? region.join(",") : "";
    byId("render-label").textContent = `${draft ? "draft" : `${Math.round(scale * 100)}%`} · ${(frame.render_ms ?? 0).toFixed(1)} ms`;
    if (this.playback.playing) this.setFrame(frame.frame ?? 0, false);
  }

  private setFrame(frame: number, render = true): void {
    const last = Math.max(0, (this.bundle?.frames ?? 1) - 1);
    this.frame = Math.max(0, Math.min(last, Math.round(frame)));
    this.view.currentFrame = this.frame;
    byId<HTMLInputElement>("scrubber").value = String(this.frame);
    byId("frame-label").textContent = `${this.frame} / ${last}`;
    this.selection.refresh();
    this.showRegionState();
    if (render) {
      this.renderNow();
      this.sendPresence(this.pendingPresence);
    }
  }

  // ------------------------------------------------------------------ edits

  private newOpId(kind: string): string {
    return `${kind}-${this.idPrefix}-${++this.opCounter}`;
  }

  private sendOp(op: EditOp, preview?: Preview): void {
    if (!this.session) return;
    const region = this.view.regions.selected;
    if (region && OBJECT_TYPES.has(op.type ?? "") && op.roi_region === undefined) op = { ...op, roi_region: region };
    if (preview) {
      preview.sentAt = performance.now();
      this.view.previews.push(preview);
      this.view.invalidate();
    }
    this.protocol.sent(op);
    // While disconnected the op waits in the protocol's unanswered ops (its preview stays) and goes out after the rejoin.
    if (this.conn.send({ session: { op } }) === null) this.toast("Offline: the edit will be sent on reconnect", false);
  }

  private finishPath(preview: Preview): void {
    const points = rounded(simplify(preview.points, 0.35)).slice(0, MAX_POINTS);
    const id = this.newOpId(preview.kind);
    preview.opId = id;
    preview.points = points;
    const hardness = readNumber("brush-hardness");
    const op =
      preview.kind === "adjust"
        ? adjustmentOp(id, this.frame, points, preview.width, hardness, {
            exposure: readNumber("adj-exposure"),
            contrast: readNumber("adj-contrast"),
            saturation: readNumber("adj-saturation"),
            hue: readNumber("adj-hue"),
            temperature: readNumber("adj-temperature"),
          })
        : strokeOp({
            id,
            frame: this.frame,
            points,
            width: preview.width,
            rgb: hexToRgb(byId<HTMLInputElement>("brush-color").value),
            opacity: preview.opacity,
            hardness,
            erase: preview.kind === "erase",
          });
    this.sendOp(op, preview);
  }

  private placeImage(a: Vec2, b: Vec2, preview: Preview): void {
    if (!this.imageBytes) return;
    const id = this.newOpId("texture");
    const op = textureOp(id, this.frame, this.imageBytes, a, b, readNumber("image-opacity"));
    if (!op) {
      this.toast("Drag a rectangle to place the image");
      return;
    }
    preview.opId = id;
    if (this.imageBitmap) preview.image = this.imageBitmap;
    preview.opacity = readNumber("image-opacity");
    this.sendOp(op, preview);
  }

  private placeSticker(at: Vec2): void {
    if (!this.stickerBytes) {
      // Point first, image second: remember the point and place the sticker once an image is picked.
      this.pendingStickerAt = { at, frame: this.frame };
      this.toast("Now pick the sticker image", false);
      byId<HTMLInputElement>("sticker-file").click();
      return;
    }
    const size = readNumber("sticker-size");
    const id = this.newOpId("sticker");
    const position = rounded([at])[0] as Vec2;
    this.sendOp(stickerOp(id, this.frame, this.stickerBytes, position, [size, Math.round(size / this.stickerAspect)]), {
      opId: id,
      frame: this.frame,
      kind: "sticker",
      points: [position],
      width: size,
      color: "",
      opacity: 1,
      seq: null,
    });
  }

  private undo(): void {
    this.conn.send({ session: { undo: {} } });
  }

  private redo(): void {
    this.conn.send({ session: { redo: {} } });
  }

  // ------------------------------------------------------------------ pointer input

  private onPointerDown(event: PointerEvent): void {
    const canvas = this.view.canvas;
    if (!this.session) return;
    canvas.setPointerCapture(event.pointerId);
    const last: [number, number] = [event.clientX, event.clientY];
    if (this.tool === "pan" || event.button === 1 || event.altKey || this.atlas) {
      this.drag = { kind: "pan", last, pointerId: event.pointerId };
      return;
    }
    if (event.button !== 0) return;
    this.playback.stop();
    const at = this.view.toFrame(event.clientX, event.clientY);
    this.lastActivity = performance.now();
    if (this.tool === "select") {
      this.selection.pointerDown(at, event.pointerId);
      return;
    }
    if (this.tool === "sticker") {
      this.placeSticker(at);
      return;
    }
    if (this.tool === "image" && !this.imageBytes) {
      this.toast("Pick an image first");
      byId<HTMLInputElement>("image-file").click();
      return;
    }
    const kind = this.tool === "eraser" ? "erase" : this.tool === "adjust" ? "adjust" : this.tool === "image" ? "rect" : "stroke";
    this.view.live = {
      opId: "",
      frame: this.frame,
      kind,
      points: [at],
      width: readNumber(kind === "adjust" ? "adj-width" : "brush-width"),
      color: byId<HTMLInputElement>("brush-color").value,
      opacity: readNumber("brush-opacity"),
      hardness: readNumber("brush-hardness"),
      seq: null,
    };
    this.drag = { kind: "draw", last, pointerId: event.pointerId };
    this.view.invalidate();
  }

  private onPointerMove(event: PointerEvent): void {
    const at = this.view.toFrame(event.clientX, event.clientY);
    this.queuePresence(at);
    this.updateBrushOutline(at);
    if (this.selection.pointerMove(at, event.pointerId)) return;
    if (!this.drag || this.drag.pointerId !== event.pointerId) return;
    if (this.drag.kind === "pan") {
      this.view.pan(event.clientX - this.drag.last[0], event.clientY - this.drag.last[1]);
      this.drag.last = [event.clientX, event.clientY];
      this.userTransform();
      return;
    }
    const live = this.view.live;
    if (!live) return;
    this.lastActivity = performance.now();
    // Coalesced events keep fast strokes smooth where the browser batches pointer moves.
    const events = typeof event.getCoalescedEvents === "function" ? event.getCoalescedEvents() : [];
    for (const e of events.length ? events : [event]) {
      const p = this.view.toFrame(e.clientX, e.clientY);
      if (live.kind === "rect") {
        live.points = [live.points[0] as Vec2, p];
        continue;
      }
      const prev = live.points[live.points.length - 1] as Vec2;
      if (Math.hypot(p[0] - prev[0], p[1] - prev[1]) * this.view.zoom >= 1.5) live.points.push(p);
    }
    this.view.invalidate();
  }

  private onPointerUp(event: PointerEvent): void {
    if (this.selection.pointerUp(this.view.toFrame(event.clientX, event.clientY), event.pointerId)) return;
    if (!this.drag || this.drag.pointerId !== event.pointerId) return;
    const drag = this.drag;
    this.drag = null;
    const live = this.view.live;
    this.view.live = null;
    if (drag.kind !== "draw" || !live) return;
    const end = this.view.toFrame(event.clientX, event.clientY);
    if (live.kind === "rect") {
      live.points = [live.points[0] as Vec2, end];
      this.placeImage(live.points[0] as Vec2, end, live);
    } else {
      const prev = live.points[live.points.length - 1] as Vec2;
      if (Math.hypot(end[0] - prev[0], end[1] - prev[1]) > 0.01) live.points.push(end);
      this.finishPath(live);
    }
    this.view.invalidate();
  }

  private brushWidthInput(): HTMLInputElement | null {
    if (this.tool === "brush" || this.tool === "eraser") return byId<HTMLInputElement>("brush-width");
    if (this.tool === "adjust") return byId<HTMLInputElement>("adj-width");
    return null;
  }

  private updateBrushOutline(at: Vec2 | null): void {
    const input = this.brushWidthInput();
    this.view.brush = at && input && !this.atlas ? { at, width: Number(input.value) } : null;
    this.view.invalidate();
  }

  /** [ and ] resize the brush, as in most painting tools. */
  private resizeBrush(factor: number): void {
    const input = this.brushWidthInput();
    if (!input) return;
    const next = Math.round(Math.min(Number(input.max), Math.max(Number(input.min), Number(input.value) * factor)));
    input.value = String(next === Number(input.value) ? next + Math.sign(factor - 1) : next);
    input.dispatchEvent(new Event("input", { bubbles: true }));
    if (this.view.brush) this.updateBrushOutline(this.view.brush.at);
  }

  // ------------------------------------------------------------------ presence

  private queuePresence(at: Vec2): void {
    this.pendingPresence = at;
    if (this.presenceTimer !== undefined) return;
    // At most ~20 updates a second: cursors look live without flooding the session.
    this.presenceTimer = window.setTimeout(() => {
      this.presenceTimer = undefined;
      this.sendPresence(this.pendingPresence);
    }, 50);
  }

  private sendPresence(at: Vec2 | null): void {
    if (!this.session) return;
    // The server does not echo our own presence: keep our row in the people list current here.
    const me = this.doc.participants.get(this.protocol.participantId);
    if (me && (me.frame !== this.frame || me.tool !== this.tool)) {
      me.frame = this.frame;
      me.tool = this.tool;
      this.refreshParticipants();
    }
    this.conn.send({
      session: {
        presence: {
          cursor: at ? (rounded([at])[0] as Vec2) : undefined,
          frame: this.frame,
          tool: this.tool,
          name: this.name,
          color: this.color,
        },
      },
    });
  }

  // ------------------------------------------------------------------ panels

  private refreshPanels(): void {
    this.refreshParticipants();
    this.refreshLayers();
  }

  private refreshParticipants(): void {
    const people = [...this.doc.participants.values()];
    renderParticipants(byId("participants"), people, this.protocol.participantId);
    this.view.cursors = people.filter((p) => p.participant_id !== this.protocol.participantId && p.cursor);
    this.view.invalidate();
  }

  private refreshMarks(): void {
    renderMarks(byId("marks"), this.doc.live(), (layer) => this.doc.authorOf(layer), this.bundle?.frames ?? 1);
  }

  private refreshLayers(): void {
    this.refreshMarks();
    this.selection.refresh();
    renderLayers(byId("layers"), this.selection.stack(), {
      toggleVisible: (layer) =>
        this.sendOp({ id: this.newOpId("vis"), type: "set_visible", target: layer.id, visible: !layer.visible }),
      remove: (layer) => this.sendOp({ id: this.newOpId("del"), type: "delete", target: layer.id }),
      goTo: (layer: Layer) => {
        if (layer.op.frame === undefined || this.atlas) return;
        this.playback.stop();
        this.setFrame(layer.op.frame);
        if (this.selection.select(layer.id)) this.setTool("select");
      },
      authorOf: (layer) => this.doc.authorOf(layer),
    }, this.selection.selectedId);
  }

  /** With several ROI polygons, the region picker: edits keep to the picked one, and the outline shows it. */
  private offerRegions(count: number): void {
    const picker = byId<HTMLSelectElement>("roi-region");
    picker.replaceChildren(...["All regions", ...Array.from({ length: count }, (_, i) => `Region ${i + 1}`)].map((text, i) => {
      const option = document.createElement("option");
      option.value = String(i);
      option.textContent = text;
      return option;
    }));
    byId("roi-region-box").hidden = count < 2;
    this.pickRegion(0);
  }

  private pickRegion(region: number): void {
    byId<HTMLSelectElement>("roi-region").value = String(region);
    this.view.regions.selected = region;
    byId("roi-hint").textContent = region
      ? `Edits keep to region ${region}; outside it they are refused. Pick "All regions" to edit every one.`
      : byId("roi-region-box").hidden ? "Edits land inside the outlined region; outside it they are refused."
      : "Each polygon you marked is its own region: pick one to keep your edits to it.";
    this.showRegionState();
  }

  /** The region toggle and the canvas's test hook say whether the outline is shown for this frame. */
  private showRegionState(): void {
    const known = this.view.regions.has(this.frame);
    this.view.canvas.dataset.roi = this.atlas ? "atlas" : !known ? "pending" : this.view.showRegion ? "shown" : "hidden";
    this.view.invalidate();
  }

  // ------------------------------------------------------------------ UI wiring

  private bindUi(): void {
    for (const button of document.querySelectorAll<HTMLButtonElement>(".tool")) {
      button.addEventListener("click", () => this.setTool(button.dataset.tool as Tool));
    }
    for (const output of document.querySelectorAll<HTMLOutputElement>("output[for]")) {
      const input = byId<HTMLInputElement>(output.htmlFor.value);
      const update = (): void => {
        output.textContent = input.value;
      };
      input.addEventListener("input", update);
      update();
    }
    this.setTool("brush");
    const canvas = this.view.canvas;
    canvas.addEventListener("pointerdown", (e) => this.onPointerDown(e));
    canvas.addEventListener("pointermove", (e) => this.onPointerMove(e));
    canvas.addEventListener("pointerup", (e) => this.onPointerUp(e));
    canvas.addEventListener("pointercancel", (e) => this.onPointerUp(e));
    canvas.addEventListener("pointerleave", () => {
      this.sendPresence(null);
      this.updateBrushOutline(null);
    });
    canvas.addEventListener(
      "wheel",
      (e) => {
        e.preventDefault();
        this.lastActivity = performance.now();
        this.view.zoomAt(Math.exp(-e.deltaY * 0.0015), e.clientX, e.clientY);
      },
      { passive: false },
    );
    byId("zoom-in").addEventListener("click", () => this.zoomBy(1.25));
    byId("zoom-out").addEventListener("click", () => this.zoomBy(0.8));
    byId("zoom-fit").addEventListener("click", () => {
      this.view.fit();
      this.updateZoomLabel();
    });
    byId<HTMLInputElement>("atlas-toggle").addEventListener("change", (e) => {
      this.playback.stop();
      this.atlas = (e.target as HTMLInputElement).checked;
      this.view.clear();
      this.view.setSize(this.bundle?.width ?? 1, this.bundle?.height ?? 1);
      this.renderNow();
    });
    const scrubber = byId<HTMLInputElement>("scrubber");
    scrubber.addEventListener("input", () => {
      this.playback.stop();
      this.lastActivity = performance.now();
      this.setFrame(Number(scrubber.value));
    });
    byId<HTMLSelectElement>("roi-region").addEventListener("change", (e) =>
      this.pickRegion(Number((e.target as HTMLSelectElement).value)));
    byId<HTMLInputElement>("roi-toggle").addEventListener("change", (e) => {
      this.view.showRegion = (e.target as HTMLInputElement).checked;
      this.showRegionState();
    });
    this.selection.bind();
    byId("play-btn").addEventListener("click", () => this.playback.toggle());
    byId("undo-btn").addEventListener("click", () => this.undo());
    byId("redo-btn").addEventListener("click", () => this.redo());
    byId("export-btn").addEventListener("click", () => {
      if (this.session) this.exporter.start(this.session.session_id ?? "", this.session.bundle || "vatlas");
    });
    byId("share-btn").addEventListener("click", () => {
      void navigator.clipboard?.writeText(location.href).then(
        () => this.toast("Link copied: anyone with it can join this session", false),
        () => this.toast(location.href, false),
      );
    });
    byId<HTMLInputElement>("image-file").addEventListener("change", (e) => void this.loadImage(e.target as HTMLInputElement, "image"));
    byId<HTMLInputElement>("sticker-file").addEventListener("change", (e) => void this.loadImage(e.target as HTMLInputElement, "sticker"));
    window.addEventListener("keydown", (e) => this.onKey(e));
    // Clicked buttons keep no focus, so Space stays play/pause instead of re-pressing the last button.
    document.addEventListener("mousedown", (e) => {
      if (e.target instanceof HTMLElement && e.target.closest("button")) e.preventDefault();
    });
    byId<HTMLInputElement>("my-name").addEventListener("change", (e) => {
      const name = (e.target as HTMLInputElement).value.trim().slice(0, 40);
      if (!name) return;
      this.name = name;
      try {
        localStorage.setItem("vatlas.name", name);
      } catch {
        // storage can be disabled; the name then lasts for this page only
      }
      const me = this.doc.participants.get(this.protocol.participantId);
      if (me) me.name = name;
      this.refreshParticipants();
      this.sendPresence(this.pendingPresence);
    });
  }

  private async loadImage(input: HTMLInputElement, purpose: "image" | "sticker"): Promise<void> {
    const file = input.files?.[0];
    if (!file) return;
    const bytes = new Uint8Array(await file.arrayBuffer());
    let bitmap: ImageBitmap;
    try {
      bitmap = await createImageBitmap(new Blob([bytes], { type: file.type }));
    } catch {
      this.toast(`${file.name} is not an image this browser can read`);
      return;
    }
    if (purpose === "image") {
      this.imageBytes = bytes;
      this.imageBitmap?.close();
      this.imageBitmap = await createImageBitmap(bitmap);
      this.setTool("image");
    } else {
      this.stickerBytes = bytes;
      this.stickerAspect = bitmap.width / Math.max(1, bitmap.height);
      this.setTool("sticker");
      const pending = this.pendingStickerAt;
      this.pendingStickerAt = null;
      if (pending && pending.frame === this.frame) this.placeSticker(pending.at);
    }
    byId(`${purpose}-name`).textContent = `${file.name} · ${bitmap.width}×${bitmap.height}`;
    bitmap.close();
    input.dataset.loaded = "true";
  }

  private onKey(e: KeyboardEvent): void {
    const target = e.target as HTMLElement;
    if (target instanceof HTMLInputElement && target.type !== "range" && target.type !== "checkbox") return;
    const key = e.key.toLowerCase();
    // A focused slider handles its own arrow keys.
    if (target instanceof HTMLInputElement && key.startsWith("arrow")) return;
    if ((e.ctrlKey || e.metaKey) && key === "z") {
      e.preventDefault();
      if (e.shiftKey) this.redo();
      else this.undo();
    } else if ((e.ctrlKey || e.metaKey) && key === "y") {
      e.preventDefault();
      this.redo();
    } else if (e.ctrlKey || e.metaKey || e.altKey) {
      return;
    } else if (key === " ") {
      e.preventDefault();
      this.playback.toggle();
    } else if (key === "arrowleft" || key === "arrowright") {
      e.preventDefault();
      this.playback.stop();
      this.setFrame(this.frame + (key === "arrowleft" ? -1 : 1));
    } else if (key === "+" || key === "=") {
      this.zoomBy(1.25);
    } else if (key === "-") {
      this.zoomBy(0.8);
    } else if (key === "[" || key === "]") {
      this.resizeBrush(key === "]" ? 1.25 : 0.8);
    } else if (key === "0") {
      this.view.fit();
      this.updateZoomLabel();
    } else if (key === "r") {
      const toggle = byId<HTMLInputElement>("roi-toggle");
      toggle.checked = !toggle.checked;
      toggle.dispatchEvent(new Event("change"));
    } else if (this.selection.key(key)) {
      e.preventDefault();
    } else if (TOOL_KEYS[key]) {
      this.setTool(TOOL_KEYS[key]);
    }
  }

  private zoomBy(factor: number): void {
    this.lastActivity = performance.now(); // zoomCentre reports the transform (onTransform) itself
    this.view.zoomCentre(factor);
  }

  private updateZoomLabel(): void {
    byId("zoom-label").textContent = `${Math.round(this.view.zoom * 100)}%`;
  }

  private setTool(tool: Tool): void {
    if (!TOOLS.includes(tool)) return;
    this.tool = tool;
    for (const button of document.querySelectorAll<HTMLButtonElement>(".tool")) {
      button.classList.toggle("active", button.dataset.tool === tool);
    }
    for (const section of document.querySelectorAll<HTMLElement>(".options")) {
      const shown = (section.dataset.for ?? "").split(" ").includes(tool);
      section.classList.toggle("shown", shown);
      for (const label of $(section, "label[data-for]")) {
        label.classList.toggle("hidden", !(label.dataset.for ?? "").split(" ").includes(tool));
      }
    }
    this.view.canvas.dataset.tool = tool;
    if (tool !== "select") this.selection.select(null);
    this.updateBrushOutline(this.view.brush?.at ?? null);
    this.sendPresence(this.pendingPresence);
  }

  private showConnection(state: ConnectionState, detail: string): void {
    const box = byId("conn-status");
    box.dataset.state = state;
    box.title = detail;
    const stopped = detail.startsWith(SERVER_STOPPED);
    byId("conn-text").textContent =
      state === "open" ? "connected" : state === "closed" ? "disconnected"
        : stopped ? "server stopped, reconnecting…" : state === "reconnecting" ? "reconnecting…" : "connecting…";
  }

  private toastTimer: number | undefined;

  private toast(message: string, isError = true): void {
    const box = byId("toast");
    box.textContent = message;
    box.dataset.kind = isError ? "error" : "info";
    box.hidden = false;
    window.clearTimeout(this.toastTimer);
    this.toastTimer = window.setTimeout(() => (box.hidden = true), 4000);
    if (isError) console.warn(`vatlas: ${message}`);
  }

  /** A small read-only window for tests and debugging: state that the DOM does not show exactly. */
  private exposeForTests(): void {
    const app = this;
    exposeForTests({
      get frame() { return app.frame; },
      get seq() { return app.doc.seq; },
      get participantId() { return app.protocol.participantId; },
      get session() { return app.session; },
      get editLatencies() { return app.editLatencies; },
      get selectedId() { return app.selection.selectedId; },
      view: app.view,
      dropConnection: (outageMs) => app.conn.dropForTest(outageMs),
    });
  }
}

/** A scale in whole 1/SCALE_STEP steps, rounded down, within [MIN_SCALE, 1]. */
function snapScale(scale: number): number {
  return Math.min(1, Math.max(MIN_SCALE, Math.floor(scale * SCALE_STEP + 1e-6) / SCALE_STEP));
}

function storedName(): string {
  try {
    return localStorage.getItem("vatlas.name") ?? "";
  } catch {
    return "";
  }
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
