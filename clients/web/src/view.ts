// The canvas: the server's latest frame under a zoom/pan transform, local stroke previews and others' cursors.
import type { Participant, Vec2 } from "./generated/received";
import { drawRegion, RegionCache } from "./roi";
import { handles, rotate, type Box } from "./selection";

export interface Preview {
  opId: string;
  frame: number;
  /** rect: an image being placed (points = two corners); image: a placed image or sticker moved (box). */
  kind: "stroke" | "erase" | "adjust" | "rect" | "sticker" | "image";
  points: Vec2[];
  width: number;
  color: string;
  opacity: number;
  hardness?: number;
  /** Server sequence number once accepted; the preview goes away when a frame at or past it is shown. */
  seq: number | null;
  /** performance.now() when the op was sent (for the edit-to-pixels latency). */
  sentAt?: number;
  /** The picture of an image preview (kinds rect and image). */
  image?: ImageBitmap;
  /** Where an image preview sits (kind image). */
  box?: Box;
}

export interface ShownFrame {
  bitmap: ImageBitmap;
  frame: number;
  atlas: boolean;
  seq: number;
  /** The render's scale (1 = full resolution). */
  scale: number;
  /** Size in full-resolution pixels of the whole picture (the bitmap may be a lower-resolution render). */
  width: number;
  height: number;
  /** The part of the picture the bitmap holds, [x, y, w, h] in full-resolution pixels; null = all of it. */
  region: Rect | null;
}

/** [x, y, w, h] */
export type Rect = [number, number, number, number];

export class View {
  readonly ctx: CanvasRenderingContext2D;
  zoom = 1;
  offset: Vec2 = [0, 0];
  shown: ShownFrame | null = null;
  /** The last whole-picture render, kept under a region render of the same frame (so a pan shows something
   *  where the region ends until the next render arrives). */
  backdrop: ShownFrame | null = null;
  previews: Preview[] = [];
  /** Preview being drawn right now (not yet sent). */
  live: Preview | null = null;
  cursors: Participant[] = [];
  /** Outline of the brush under the pointer (frame pixels), or null. */
  brush: { at: Vec2; width: number } | null = null;
  currentFrame = 0;
  /** The editable region per frame, and whether its outline is shown. */
  readonly regions = new RegionCache();
  showRegion = true;
  /** The selected object's box (frame pixels), drawn with its scale and rotate handles. */
  selection: Box | null = null;
  private readonly scratch = document.createElement("canvas");
  private dirty = true;
  /** Called after zoom or pan changes (the toolbar shows the zoom). */
  onTransform: () => void = () => undefined;
  /** Called with the milliseconds from sending an op to showing a server frame that includes it. */
  onEditShown: (ms: number) => void = () => undefined;
  private fitted = false;
  /** Frame size in full-resolution pixels (the bundle's), used before the first frame arrives. */
  size: Vec2 = [1, 1];

  constructor(readonly canvas: HTMLCanvasElement) {
    const ctx = canvas.getContext("2d");
    if (!ctx) throw new Error("2D canvas is not available");
    this.ctx = ctx;
    new ResizeObserver(() => this.resize()).observe(canvas);
    this.resize();
    const loop = (): void => {
      if (this.dirty) this.draw();
      requestAnimationFrame(loop);
    };
    requestAnimationFrame(loop);
  }

  invalidate(): void {
    this.dirty = true;
  }

  show(frame: ShownFrame): void {
    const previous = this.shown;
    const [w, h] = previous ? [previous.width, previous.height] : this.size;
    // A different picture size (frame <-> atlas) needs a new fit; same size keeps the user's zoom and pan.
    if (frame.width !== w || frame.height !== h) this.fitted = false;
    // The latest whole-picture render stays under region renders of the same frame; anything else is closed.
    const whole = previous && !previous.region ? previous : this.backdrop;
    const keep = frame.region && whole && whole.frame === frame.frame && whole.atlas === frame.atlas ? whole : null;
    for (const old of [previous, this.backdrop]) if (old && old !== keep) old.bitmap.close();
    this.backdrop = keep;
    this.shown = frame;
    // Previews are only placeholders until the server's own pixels include the op.
    const now = performance.now();
    this.previews = this.previews.filter((p) => {
      const done = p.seq !== null && p.seq <= frame.seq;
      if (done && p.sentAt !== undefined && !frame.atlas) this.onEditShown(now - p.sentAt);
      return !done;
    });
    if (!this.fitted) this.fit();
    this.invalidate();
  }

  /** Forget the pictures shown (e.g. when switching between the frame and the atlas). */
  clear(): void {
    this.shown?.bitmap.close();
    this.backdrop?.bitmap.close();
    this.shown = null;
    this.backdrop = null;
    this.invalidate();
  }

  setSize(width: number, height: number): void {
    this.size = [width, height];
    this.regions.frameSize = [width, height];
    this.fitted = false;
    this.fit();
  }

  /** Frame pixel under a client (CSS) position of the canvas. */
  toFrame(clientX: number, clientY: number): Vec2 {
    const rect = this.canvas.getBoundingClientRect();
    return [(clientX - rect.left - this.offset[0]) / this.zoom, (clientY - rect.top - this.offset[1]) / this.zoom];
  }

  fit(): void {
    const rect = this.canvas.getBoundingClientRect();
    const [w, h] = this.displaySize();
    if (rect.width < 2 || rect.height < 2) return;
    this.zoom = Math.min((rect.width - 24) / w, (rect.height - 24) / h);
    this.offset = [(rect.width - w * this.zoom) / 2, (rect.height - h * this.zoom) / 2];
    this.fitted = true;
    this.invalidate();
    this.onTransform();
  }

  /** Zoom by `factor` keeping the frame point under (clientX, clientY) fixed. */
  zoomAt(factor: number, clientX: number, clientY: number): void {
    const next = Math.min(32, Math.max(0.05, this.zoom * factor));
    const [fx, fy] = this.toFrame(clientX, clientY);
    const rect = this.canvas.getBoundingClientRect();
    this.zoom = next;
    this.offset = [clientX - rect.left - fx * next, clientY - rect.top - fy * next];
    this.invalidate();
    this.onTransform();
  }

  zoomCentre(factor: number): void {
    const rect = this.canvas.getBoundingClientRect();
    this.zoomAt(factor, rect.left + rect.width / 2, rect.top + rect.height / 2);
  }

  pan(dx: number, dy: number): void {
    this.offset = [this.offset[0] + dx, this.offset[1] + dy];
    this.invalidate();
  }

  /** The part of a w x h picture on the canvas, [x, y, w, h] in its pixels (whole pixels), or null if none. */
  visibleRect(w: number, h: number): Rect | null {
    const rect = this.canvas.getBoundingClientRect();
    const x0 = Math.max(0, Math.floor(-this.offset[0] / this.zoom));
    const y0 = Math.max(0, Math.floor(-this.offset[1] / this.zoom));
    const x1 = Math.min(w, Math.ceil((rect.width - this.offset[0]) / this.zoom));
    const y1 = Math.min(h, Math.ceil((rect.height - this.offset[1]) / this.zoom));
    return x1 > x0 && y1 > y0 ? [x0, y0, x1 - x0, y1 - y0] : null;
  }

  private displaySize(): Vec2 {
    if (this.shown) return [this.shown.width, this.shown.height];
    return this.size;
  }

  private resize(): void {
    const rect = this.canvas.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    this.canvas.width = Math.max(1, Math.round(rect.width * dpr));
    this.canvas.height = Math.max(1, Math.round(rect.height * dpr));
    if (!this.fitted) this.fit();
    this.invalidate();
  }

  private draw(): void {
    this.dirty = false;
    const { ctx, canvas } = this;
    const dpr = window.devicePixelRatio || 1;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.setTransform(dpr * this.zoom, 0, 0, dpr * this.zoom, dpr * this.offset[0], dpr * this.offset[1]);
    const [w, h] = this.displaySize();
    if (!this.shown && w <= 1 && h <= 1) return; // nothing open yet
    ctx.fillStyle = "#111318";
    ctx.fillRect(0, 0, w, h);
    if (this.shown) {
      ctx.imageSmoothingEnabled = this.zoom < 2;
      if (this.backdrop && this.shown.region) ctx.drawImage(this.backdrop.bitmap, 0, 0, w, h);
      const [rx, ry, rw, rh] = this.shown.region ?? [0, 0, w, h];
      ctx.drawImage(this.shown.bitmap, rx, ry, rw, rh);
    }
    if (!this.shown?.atlas) {
      const region = this.regions.get(this.currentFrame);
      if (region && this.showRegion) drawRegion(ctx, region, w, h, this.zoom);
      this.drawPreviews([...this.previews, ...(this.live ? [this.live] : [])].filter((p) => p.frame === this.currentFrame), w, h);
      if (this.selection) this.drawSelection(this.selection);
      for (const participant of this.cursors) this.drawCursor(participant);
      if (this.brush) {
        ctx.save();
        ctx.lineWidth = 1 / this.zoom;
        ctx.strokeStyle = "rgba(255,255,255,0.85)";
        ctx.beginPath();
        ctx.arc(this.brush.at[0], this.brush.at[1], Math.max(0.5, this.brush.width / 2), 0, Math.PI * 2);
        ctx.stroke();
        ctx.strokeStyle = "rgba(0,0,0,0.6)";
        ctx.beginPath();
        ctx.arc(this.brush.at[0], this.brush.at[1], Math.max(0.5, this.brush.width / 2) + 1 / this.zoom, 0, Math.PI * 2);
        ctx.stroke();
        ctx.restore();
      }
    }
  }

  /** Previews as the server will show them: painted into a scratch canvas clipped by the frame's soft mask
   *  (where it is known), then their outlines on top, unclipped. */
  private drawPreviews(previews: Preview[], w: number, h: number): void {
    if (!previews.length) return;
    const region = this.regions.get(this.currentFrame);
    const { ctx, canvas, scratch } = this;
    if (region) {
      if (scratch.width !== canvas.width || scratch.height !== canvas.height) {
        scratch.width = canvas.width;
        scratch.height = canvas.height;
      }
      const sctx = scratch.getContext("2d");
      if (sctx) {
        sctx.setTransform(1, 0, 0, 1, 0, 0);
        sctx.clearRect(0, 0, scratch.width, scratch.height);
        sctx.setTransform(ctx.getTransform());
        for (const p of previews) this.drawPreview(sctx, p);
        sctx.globalCompositeOperation = "destination-in";
        sctx.imageSmoothingEnabled = true;
        sctx.drawImage(region.clip, 0, 0, w, h);
        sctx.globalCompositeOperation = "source-over";
        ctx.save();
        ctx.setTransform(1, 0, 0, 1, 0, 0);
        ctx.drawImage(scratch, 0, 0);
        ctx.restore();
      }
    } else {
      for (const p of previews) this.drawPreview(ctx, p);
    }
    for (const p of previews) this.drawOutline(p);
  }

  private drawOutline(p: Preview): void {
    const { ctx } = this;
    ctx.save();
    ctx.strokeStyle = "#4da3ff";
    ctx.lineWidth = 1.5 / this.zoom;
    if (p.kind === "rect" && p.points.length >= 2) {
      const [a, b] = [p.points[0] as Vec2, p.points[p.points.length - 1] as Vec2];
      ctx.setLineDash([6 / this.zoom, 4 / this.zoom]);
      ctx.strokeRect(Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.abs(b[0] - a[0]), Math.abs(b[1] - a[1]));
    } else if (p.kind === "sticker" && p.points[0]) {
      const [x, y] = p.points[0];
      ctx.lineWidth = 2 / this.zoom;
      ctx.strokeRect(x - p.width / 2, y - p.width / 2, p.width, p.width);
    } else if (p.kind === "image" && p.box) {
      ctx.setLineDash([6 / this.zoom, 4 / this.zoom]);
      this.boxPath(ctx, p.box);
      ctx.stroke();
    }
    ctx.restore();
  }

  private boxPath(ctx: CanvasRenderingContext2D, box: Box): void {
    const [w, h] = box.size;
    ctx.beginPath();
    ([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]] as Vec2[]).forEach((corner, i) => {
      const [dx, dy] = rotate(corner, box.rotation);
      if (i === 0) ctx.moveTo(box.centre[0] + dx, box.centre[1] + dy);
      else ctx.lineTo(box.centre[0] + dx, box.centre[1] + dy);
    });
    ctx.closePath();
  }

  private drawSelection(box: Box): void {
    const { ctx } = this;
    const s = 1 / this.zoom;
    const { scale, rotate: turn } = handles(box, this.zoom);
    const [tx, ty] = rotate([0, -box.size[1] / 2], box.rotation);
    ctx.save();
    ctx.lineWidth = 1.5 * s;
    ctx.strokeStyle = "#ffffff";
    ctx.setLineDash([5 * s, 3 * s]);
    this.boxPath(ctx, box);
    ctx.stroke();
    ctx.setLineDash([]);
    ctx.beginPath();
    ctx.moveTo(box.centre[0] + tx, box.centre[1] + ty);
    ctx.lineTo(turn[0], turn[1]);
    ctx.stroke();
    ctx.fillStyle = "#4da3ff";
    ctx.fillRect(scale[0] - 5 * s, scale[1] - 5 * s, 10 * s, 10 * s);
    ctx.strokeRect(scale[0] - 5 * s, scale[1] - 5 * s, 10 * s, 10 * s);
    ctx.beginPath();
    ctx.arc(turn[0], turn[1], 5 * s, 0, Math.PI * 2);
    ctx.fill();
    ctx.stroke();
    ctx.restore();
  }

  private drawPreview(ctx: CanvasRenderingContext2D, p: Preview): void {
    ctx.save();
    if (p.kind === "rect" && p.points.length >= 2) {
      const [a, b] = [p.points[0] as Vec2, p.points[p.points.length - 1] as Vec2];
      if (p.image) {
        ctx.globalAlpha = p.opacity;
        ctx.drawImage(p.image, Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.abs(b[0] - a[0]), Math.abs(b[1] - a[1]));
      }
    } else if (p.kind === "image" && p.box) {
      if (p.image) {
        const { centre, size, rotation } = p.box;
        ctx.globalAlpha = p.opacity;
        ctx.translate(centre[0], centre[1]);
        ctx.rotate((-rotation * Math.PI) / 180);
        ctx.drawImage(p.image, -size[0] / 2, -size[1] / 2, size[0], size[1]);
      }
    } else if (p.kind !== "sticker") {
      ctx.lineCap = "round";
      ctx.lineJoin = "round";
      ctx.lineWidth = p.width;
      // A soft brush previews with a blurred edge (the server's falloff is the real thing).
      const softness = (1 - (p.hardness ?? 1)) * p.width * 0.25 * this.zoom * (window.devicePixelRatio || 1);
      if (softness > 0.5) ctx.filter = `blur(${softness.toFixed(1)}px)`;
      ctx.globalAlpha = p.kind === "stroke" ? p.opacity : 0.35;
      ctx.strokeStyle = p.kind === "stroke" ? p.color : p.kind === "erase" ? "#ffffff" : "#ffd24d";
      ctx.beginPath();
      p.points.forEach(([x, y], i) => (i === 0 ? ctx.moveTo(x, y) : ctx.lineTo(x, y)));
      if (p.points.length === 1 && p.points[0]) ctx.lineTo(p.points[0][0] + 0.01, p.points[0][1]);
      ctx.stroke();
    }
    ctx.restore();
  }

  private drawCursor(participant: Participant): void {
    if (!participant.cursor) return;
    const { ctx } = this;
    const [x, y] = participant.cursor;
    const s = 1 / this.zoom;
    const sameFrame = participant.frame === this.currentFrame;
    ctx.save();
    ctx.globalAlpha = sameFrame ? 1 : 0.4;
    ctx.translate(x, y);
    ctx.scale(s, s);
    ctx.fillStyle = participant.color || "#ffffff";
    ctx.strokeStyle = "#000000";
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(0, 0);
    ctx.lineTo(0, 16);
    ctx.lineTo(4.5, 12);
    ctx.lineTo(11, 12);
    ctx.closePath();
    ctx.fill();
    ctx.stroke();
    const label = `${participant.name || "guest"}${sameFrame ? "" : ` @${participant.frame}`}`;
    ctx.font = "11px system-ui, sans-serif";
    const width = ctx.measureText(label).width + 8;
    ctx.fillRect(10, 16, width, 16);
    ctx.fillStyle = "#000000";
    ctx.fillText(label, 14, 28);
    ctx.restore();
  }
}
