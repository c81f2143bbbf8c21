// Rendering: asks the server for the frame the user looks at, at most one request in flight (a newer wish
// replaces an older one: latest wins), quick drafts while the user interacts, refined once they pause; and
// shows what comes back.
import type { Connection } from "./connection";
import { byId } from "./dom";
import { IDLE_MS, type EditorState } from "./editor-state";
import type { RenderedFrame } from "./generated/received";
import { ROI_MASK_SIDE } from "./roi";
import { messageOf, toast } from "./status";
import type { Rect, View } from "./view";

/** Renders while scrubbing, drawing, panning or zooming: half the final scale, quick; refined once the user
 *  pauses. The final scale and region follow the viewport: the frame's visible part, at one rendered pixel per
 *  device pixel (at most the frame's own resolution). */
const DRAFT = { factor: 0.5, quality: 60 };
const FINAL_QUALITY = 90;
const MIN_SCALE = 1 / 16; // the server's floor
const SCALE_STEP = 64; // scales are whole 64ths, rounded down (never more pixels than the canvas shows)
const RENDER_TIMEOUT_MS = 15_000;

export interface RenderHost {
  conn: Connection;
  state: EditorState;
  view: View;
  /** Playback streams its own frames: no single renders meanwhile. */
  playing(): boolean;
  /** A frame brought its region mask: the region display may change. */
  regionsChanged(): void;
  /** While playing, the frame shown becomes the current one. */
  showFrame(frame: number): void;
}

export class RenderScheduler {
  /** Milliseconds from sending each op to showing the first server frame that includes it. */
  readonly editLatencies: number[] = [];
  private inFlight = false;
  private wanted = false;
  private counter = 0;
  private shownDraft = false;
  private idleTimer: number | undefined;
  private renders = 0;
  private drafts = 0;

  constructor(private readonly host: RenderHost) {
    host.view.onEditShown = (ms) => {
      this.editLatencies.push(ms);
      host.view.canvas.dataset.editLatencyMs = ms.toFixed(1);
    };
  }

  /** Ask for the current frame (`force`: also while playing); coalesced so at most one request is in flight. */
  request(force = false): void {
    if (!this.host.state.session || (this.host.playing() && !force)) return;
    if (this.inFlight) {
      this.wanted = true;
      return;
    }
    void this.renderOnce();
  }

  /** Playback paced here: the next frame, unless the last one is still on its way. */
  next(): void {
    const state = this.host.state;
    if (this.inFlight) return;
    state.frame = (state.frame + 1) % state.frames;
    this.request(true);
    this.host.showFrame(state.frame);
  }

  /** The view was zoomed or panned: ask again when what is shown no longer covers it at its resolution. */
  viewChanged(): void {
    if (!this.host.playing() && !this.shownCoversView()) this.request();
  }

  /** Full resolution unless the frame is shown smaller: then only the pixels the screen can show. */
  finalScale(): number {
    return snapScale(this.host.view.zoom * (window.devicePixelRatio || 1));
  }

  private async renderOnce(): Promise<void> {
    const { conn, state, view } = this.host;
    if (!state.session || !conn.isOpen) return;
    this.inFlight = true;
    this.wanted = false;
    const draft = state.interactive();
    const frame = state.frame;
    const atlas = state.atlas;
    const wish = atlas ? { scale: 1, region: null } : this.viewport();
    const scale = draft ? snapScale(wish.scale * DRAFT.factor) : wish.scale;
    const region = wish.region;
    const counter = ++this.counter;
    try {
      const render = {
        session_id: state.session.session_id,
        frame,
        format: "jpeg",
        quality: draft ? DRAFT.quality : FINAL_QUALITY,
        scale,
        atlas,
        request_id: counter,
        // The frame's editable region, once per frame (kept in view.regions).
        ...(!atlas && !view.regions.has(frame) ? { roi_mask_side: ROI_MASK_SIDE } : {}),
        ...(region ? { region: { x: region[0], y: region[1], width: region[2], height: region[3] } } : {}),
      };
      const response = await conn.request({ render }, RENDER_TIMEOUT_MS);
      if (response.frame) await this.show(response.frame, atlas, draft, scale, region);
    } catch (error) {
      if (conn.isOpen) toast(`Render failed: ${messageOf(error)}`);
    } finally {
      this.inFlight = false;
    }
    if (this.wanted || frame !== state.frame || atlas !== state.atlas) this.request();
    else if (draft) this.scheduleRefine();
  }

  /** What the canvas shows of the frame: its visible part in full-resolution pixels (null when all of it is
   *  on the canvas) and the final scale, so a render holds no more pixels than the canvas shows of it. */
  private viewport(): { scale: number; region: Rect | null } {
    const scale = this.finalScale();
    const width = this.host.state.bundle?.width ?? 0;
    const height = this.host.state.bundle?.height ?? 0;
    const visible = this.host.view.visibleRect(width, height);
    const whole = !visible || (visible[2] === width && visible[3] === height);
    return { scale, region: whole ? null : visible };
  }

  /** Whether the frame on the canvas covers what the viewport shows now, at its resolution. */
  private shownCoversView(): boolean {
    const shown = this.host.view.shown;
    if (!shown || shown.atlas) return true;
    const want = this.viewport();
    if (shown.scale < want.scale) return false;
    const [x, y, w, h] = shown.region ?? [0, 0, shown.width, shown.height];
    const [vx, vy, vw, vh] = want.region ?? [0, 0, shown.width, shown.height];
    return x <= vx && y <= vy && x + w >= vx + vw && y + h >= vy + vh;
  }

  private scheduleRefine(): void {
    window.clearTimeout(this.idleTimer);
    this.idleTimer = window.setTimeout(() => {
      if (this.host.state.interactive()) this.scheduleRefine();
      else if (this.shownDraft) this.request();
    }, IDLE_MS);
  }

  /** Decode off the main thread (createImageBitmap) and show it. */
  async show(frame: RenderedFrame, atlas: boolean, draft: boolean, scale: number, region: Rect | null = null): Promise<void> {
    const { state, view } = this.host;
    if (frame.roi_mask && !atlas) {
      view.regions.add(frame.frame, frame.roi_mask);
      this.host.regionsChanged();
    }
    const bitmap = await toBitmap(frame);
    const full: [number, number] = atlas
      ? [Math.round(bitmap.width / scale), Math.round(bitmap.height / scale)]
      : [state.bundle?.width || bitmap.width, state.bundle?.height || bitmap.height];
    view.show({ bitmap, frame: frame.frame, atlas, seq: frame.seq, scale, width: full[0], height: full[1], region });
    this.shownDraft = draft;
    this.renders++;
    if (draft) this.drafts++;
    const canvas = view.canvas;
    canvas.dataset.frame = String(frame.frame);
    canvas.dataset.seq = String(frame.seq);
    canvas.dataset.renders = String(this.renders);
    canvas.dataset.draft = String(draft);
    canvas.dataset.drafts = String(this.drafts);
    canvas.dataset.atlas = String(atlas);
    canvas.dataset.renderMs = String(frame.render_ms);
    canvas.dataset.scale = String(scale);
    canvas.dataset.region = region ? region.join(",") : "";
    byId("render-label").textContent = `${draft ? "draft" : `${Math.round(scale * 100)}%`} · ${frame.render_ms.toFixed(1)} ms`;
    if (this.host.playing()) this.host.showFrame(frame.frame);
  }
}

/** The frame's picture: "raw" is packed RGB, anything else an image format the browser decodes. */
async function toBitmap(frame: RenderedFrame): Promise<ImageBitmap> {
  const { data, width: w, height: h } = frame;
  const format = frame.format || "jpeg";
  if (format !== "raw") return createImageBitmap(new Blob([data as BlobPart], { type: `image/${format}` }));
  const rgba = new Uint8ClampedArray(w * h * 4);
  for (let i = 0, j = 0; i < w * h; i++, j += 3) {
    rgba[i * 4] = data[j] ?? 0;
    rgba[i * 4 + 1] = data[j + 1] ?? 0;
    rgba[i * 4 + 2] = data[j + 2] ?? 0;
    rgba[i * 4 + 3] = 255;
  }
  return createImageBitmap(new ImageData(rgba, w, h));
}

/** A scale in whole 1/SCALE_STEP steps, rounded down, within [MIN_SCALE, 1]. */
function snapScale(scale: number): number {
  return Math.min(1, Math.max(MIN_SCALE, Math.floor(scale * SCALE_STEP + 1e-6) / SCALE_STEP));
}
