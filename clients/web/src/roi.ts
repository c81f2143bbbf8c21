// The editable region (ROI) per frame, from the coarse soft masks the server sends with renders on request
// (RenderRequest.roi_mask_side): an outline and a light veil outside it, and a mask that clips the local
// previews the way the server's soft mask clips the edits. With several ROI polygons each is a region of its
// own (RoiMask.regions labels the cells): the cache shows one of them, or all.
import type { Region, RoiMask } from "./generated/received";

/** Cells on the long side of the masks asked for (the server allows up to 256). */
export const ROI_MASK_SIDE = 128;
/** A cell at or above this (0..255) shows the region, as the server decides (server/edits/region.py). */
const VISIBLE = 128;
/** Frames kept (a mask is at most ROI_MASK_SIDE² bytes plus two small canvases). */
const MAX_FRAMES = 4096;
const OUTLINE = "rgba(90, 200, 255, 0.9)";
const VEIL = 0.28; // darkening outside the region
/** A mask without a visible box: no part of the region is in the frame. */
const NOTHING_VISIBLE: Region = { x: 0, y: 0, width: 0, height: 0 };

export interface FrameRegion {
  /** Cells of the mask (full-resolution frame = width x height scaled). */
  cols: number;
  rows: number;
  data: Uint8Array;
  /** Bounding box of the visible pixels, full-resolution [x, y, w, h]; w = 0 when none. */
  visible: [number, number, number, number];
  /** White, alpha = the soft mask: `destination-in` with it clips like the server does. */
  clip: HTMLCanvasElement;
  /** Black, alpha = VEIL outside the region: drawn over the frame. */
  veil: HTMLCanvasElement;
  /** Outline segments in cell units [x0, y0, x1, y1, ...] (marching squares at VISIBLE). */
  outline: Float32Array;
  /** The region each cell shows (1-based ROI polygon, 0 none); null for a one-region ROI. */
  labels: Uint8Array | null;
}

export class RegionCache {
  private readonly frames = new Map<number, FrameRegion>();
  /** One region's view of a frame, by `${frame}:${region}` (dropped with a change of region). */
  private readonly picked = new Map<string, FrameRegion>();
  private shown = 0;
  /** Full-resolution frame size (the view sets it), to turn a region's cells into pixels. */
  frameSize: [number, number] = [1, 1];

  /** The region (1-based ROI polygon) that outlines, veils and clips show; 0 = every region. */
  get selected(): number {
    return this.shown;
  }

  set selected(region: number) {
    if (region === this.shown) return;
    this.shown = region;
    this.picked.clear();
  }

  has(frame: number): boolean {
    return this.frames.has(frame);
  }

  get(frame: number): FrameRegion | undefined {
    const all = this.frames.get(frame);
    if (!all || !this.shown || !all.labels) return all;
    const key = `${frame}:${this.shown}`;
    let one = this.picked.get(key);
    if (!one) {
      const k = this.shown;
      const labels = all.labels;
      const data = all.data.map((m, i) => (labels[i] === k ? m : 0));
      one = build(all.cols, all.rows, data, regionBox(all, data, this.frameSize), labels);
      if (this.picked.size >= MAX_FRAMES) this.picked.delete(this.picked.keys().next().value as string);
      this.picked.set(key, one);
    }
    return one;
  }

  get size(): number {
    return this.frames.size;
  }

  clear(): void {
    this.frames.clear();
    this.picked.clear();
  }

  add(frame: number, mask: RoiMask): void {
    const { width: cols, height: rows, data } = mask;
    if (cols < 1 || rows < 1 || data.length !== cols * rows) return;
    if (this.frames.size >= MAX_FRAMES) this.frames.delete(this.frames.keys().next().value as number);
    const v = mask.visible ?? NOTHING_VISIBLE;
    const labels = mask.regions.length === cols * rows ? mask.regions : null;
    this.frames.set(frame, build(cols, rows, data, [v.x, v.y, v.width, v.height], labels));
  }
}

function build(cols: number, rows: number, data: Uint8Array, visible: [number, number, number, number],
               labels: Uint8Array | null): FrameRegion {
  return {
    cols,
    rows,
    data,
    visible,
    clip: alphaCanvas(data, cols, rows, (m) => [255, 255, 255, m]),
    veil: alphaCanvas(data, cols, rows, (m) => [0, 0, 0, Math.round(VEIL * (255 - m))]),
    outline: contour(data, cols, rows),
    labels,
  };
}

/** The full-resolution box of one region's visible cells, within the frame's visible box (cells are coarse:
 *  the box is that of the cells, clamped to the exact union box). */
function regionBox(all: FrameRegion, data: Uint8Array, [fw, fh]: [number, number]): [number, number, number, number] {
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (let i = 0; i < data.length; i++) {
    if ((data[i] ?? 0) < VISIBLE) continue;
    const x = i % all.cols, y = Math.floor(i / all.cols);
    x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x + 1); y1 = Math.max(y1, y + 1);
  }
  const [vx, vy, vw, vh] = all.visible;
  if (x0 === Infinity || vw === 0) return [0, 0, 0, 0];
  const left = Math.max(vx, Math.floor(x0 * fw / all.cols)), top = Math.max(vy, Math.floor(y0 * fh / all.rows));
  const right = Math.min(vx + vw, Math.ceil(x1 * fw / all.cols)), bottom = Math.min(vy + vh, Math.ceil(y1 * fh / all.rows));
  return right > left && bottom > top ? [left, top, right - left, bottom - top] : [0, 0, 0, 0];
}


/** A cols x rows canvas whose pixel i is pixel(mask[i]). */
function alphaCanvas(data: Uint8Array, cols: number, rows: number,
                     pixel: (m: number) => [number, number, number, number]): HTMLCanvasElement {
  const canvas = document.createElement("canvas");
  canvas.width = cols;
  canvas.height = rows;
  const ctx = canvas.getContext("2d");
  if (!ctx) return canvas;
  const image = ctx.createImageData(cols, rows);
  const table = Array.from({ length: 256 }, (_, m) => pixel(m));
  for (let i = 0; i < cols * rows; i++) image.data.set(table[data[i] ?? 0] ?? [0, 0, 0, 0], i * 4);
  ctx.putImageData(image, 0, 0);
  return canvas;
}

/** Marching squares over cell centres: segments where the mask crosses VISIBLE, in cell units. */
function contour(data: Uint8Array, cols: number, rows: number): Float32Array {
  const at = (x: number, y: number): number =>
    x < 0 || y < 0 || x >= cols || y >= rows ? 0 : (data[y * cols + x] ?? 0);
  const out: number[] = [];
  // Corners (x, y) are cell centres; the grid is padded by one empty cell so the outline closes at the edges.
  for (let y = -1; y < rows; y++) {
    for (let x = -1; x < cols; x++) {
      const a = at(x, y); // top-left
      const b = at(x + 1, y); // top-right
      const c = at(x + 1, y + 1); // bottom-right
      const d = at(x, y + 1); // bottom-left
      const code = (a >= VISIBLE ? 8 : 0) | (b >= VISIBLE ? 4 : 0) | (c >= VISIBLE ? 2 : 0) | (d >= VISIBLE ? 1 : 0);
      if (code === 0 || code === 15) continue;
      const t = (p: number, q: number): number => (p === q ? 0.5 : Math.min(1, Math.max(0, (VISIBLE - p) / (q - p))));
      const cx = x + 0.5;
      const cy = y + 0.5;
      const top: [number, number] = [cx + t(a, b), cy];
      const right: [number, number] = [cx + 1, cy + t(b, c)];
      const bottom: [number, number] = [cx + t(d, c), cy + 1];
      const left: [number, number] = [cx, cy + t(a, d)];
      const segments: Array<[[number, number], [number, number]]> = [];
      switch (code) {
        case 1: case 14: segments.push([left, bottom]); break;
        case 2: case 13: segments.push([bottom, right]); break;
        case 3: case 12: segments.push([left, right]); break;
        case 4: case 11: segments.push([top, right]); break;
        case 6: case 9: segments.push([top, bottom]); break;
        case 7: case 8: segments.push([left, top]); break;
        case 5: segments.push([left, top], [bottom, right]); break;
        case 10: segments.push([top, right], [left, bottom]); break;
      }
      for (const [p, q] of segments) out.push(p[0], p[1], q[0], q[1]);
    }
  }
  return new Float32Array(out);
}

/** Draw the outline and the veil of `region` over a frame of width x height (the context is in frame pixels). */
export function drawRegion(ctx: CanvasRenderingContext2D, region: FrameRegion, width: number, height: number, zoom: number): void {
  ctx.save();
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(region.veil, 0, 0, width, height);
  const sx = width / region.cols;
  const sy = height / region.rows;
  ctx.strokeStyle = OUTLINE;
  ctx.lineWidth = 1.5 / zoom;
  ctx.beginPath();
  const s = region.outline;
  for (let i = 0; i + 3 < s.length; i += 4) {
    ctx.moveTo((s[i] ?? 0) * sx, (s[i + 1] ?? 0) * sy);
    ctx.lineTo((s[i + 2] ?? 0) * sx, (s[i + 3] ?? 0) * sy);
  }
  ctx.stroke();
  ctx.restore();
}
