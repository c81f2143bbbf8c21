// The editable region (ROI) per frame, from the coarse soft masks the server sends with renders on request
// (RenderRequest.roi_mask_side): an outline and a light veil outside it, and a mask that clips the local
// previews the way the server's soft mask clips the edits.
import type { RoiMask } from "./generated/messages";

/** Cells on the long side of the masks asked for (the server allows up to 256). */
export const ROI_MASK_SIDE = 128;
/** A cell at or above this (0..255) shows the region, as the server decides (server/edits/region.py). */
const VISIBLE = 128;
/** Frames kept (a mask is at most ROI_MASK_SIDE² bytes plus two small canvases). */
const MAX_FRAMES = 4096;
const OUTLINE = "rgba(90, 200, 255, 0.9)";
const VEIL = 0.28; // darkening outside the region

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
}

export class RegionCache {
  private readonly frames = new Map<number, FrameRegion>();

  has(frame: number): boolean {
    return this.frames.has(frame);
  }

  get(frame: number): FrameRegion | undefined {
    return this.frames.get(frame);
  }

  get size(): number {
    return this.frames.size;
  }

  clear(): void {
    this.frames.clear();
  }

  add(frame: number, mask: RoiMask): void {
    const cols = mask.width ?? 0;
    const rows = mask.height ?? 0;
    const data = mask.data ?? new Uint8Array();
    if (cols < 1 || rows < 1 || data.length !== cols * rows) return;
    if (this.frames.size >= MAX_FRAMES) this.frames.delete(this.frames.keys().next().value as number);
    const v = mask.visible ?? {};
    this.frames.set(frame, {
      cols,
      rows,
      data,
      visible: [v.x ?? 0, v.y ?? 0, v.width ?? 0, v.height ?? 0],
      clip: alphaCanvas(data, cols, rows, (m) => [255, 255, 255, m]),
      veil: alphaCanvas(data, cols, rows, (m) => [0, 0, 0, Math.round(VEIL * (255 - m))]),
      outline: contour(data, cols, rows),
    });
  }
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
