// Editing placed objects: where an image, sticker or stroke sits on its frame, what a drag of it (move, scale,
// rotate) changes, and where restacking puts it. Every change is the `set` of one `update` op.
import type { Layer } from "./document";
import type { EditOp, Vec2 } from "./generated/messages";

export type Gesture = "move" | "scale" | "rotate";
export const EDITABLE = new Set(["stroke", "texture", "sticker"]);

/** A rotated box in frame pixels: centre, size [w, h], rotation in degrees (counter-clockwise on screen). */
export interface Box {
  centre: Vec2;
  size: Vec2;
  rotation: number;
}

/** Local box coordinates (x right, y down, in pixels) -> frame offset, counter-clockwise on screen like the
 *  server's rotation_matrix. */
export function rotate([x, y]: Vec2, degrees: number): Vec2 {
  const t = (degrees * Math.PI) / 180;
  const c = Math.cos(t);
  const s = Math.sin(t);
  return [c * x + s * y, -s * x + c * y];
}

/** Where an object sits on the frame it was made on; null for objects this tool cannot edit. */
export function boxOf(op: EditOp, imageSize?: Vec2): Box | null {
  if (!EDITABLE.has(op.type ?? "") || op.space === "atlas") return null;
  if (op.type === "stroke") {
    const pts = op.points ?? [];
    if (!pts.length) return null;
    const half = (op.width ?? 8) / 2;
    const xs = pts.map((p) => p[0]);
    const ys = pts.map((p) => p[1]);
    const x0 = Math.min(...xs) - half;
    const y0 = Math.min(...ys) - half;
    const x1 = Math.max(...xs) + half;
    const y1 = Math.max(...ys) + half;
    return { centre: [(x0 + x1) / 2, (y0 + y1) / 2], size: [x1 - x0, y1 - y0], rotation: 0 };
  }
  if (op.type === "texture") {
    const [x, y, w, h] = op.rect ?? [0, 0, 0, 0];
    return { centre: [(x ?? 0) + (w ?? 0) / 2, (y ?? 0) + (h ?? 0) / 2], size: [w ?? 0, h ?? 0], rotation: op.rotation ?? 0 };
  }
  const scale = op.scale ?? 1;
  const [w, h] = (op.size?.length === 2 ? op.size : imageSize) ?? [64, 64];
  return { centre: op.position ?? [0, 0], size: [(w ?? 64) * scale, (h ?? 64) * scale], rotation: op.rotation ?? 0 };
}

/** The point in the box's own axes (centre at 0). */
function local(box: Box, at: Vec2): Vec2 {
  return rotate([at[0] - box.centre[0], at[1] - box.centre[1]], -box.rotation);
}

export function insideBox(box: Box, at: Vec2, tolerance = 0): boolean {
  const [x, y] = local(box, at);
  return Math.abs(x) <= box.size[0] / 2 + tolerance && Math.abs(y) <= box.size[1] / 2 + tolerance;
}

/** Screen-independent handle positions: the scale handle at the bottom-right corner, rotate above the top. */
export function handles(box: Box, zoom: number): { scale: Vec2; rotate: Vec2 } {
  const at = ([x, y]: Vec2): Vec2 => {
    const [dx, dy] = rotate([x, y], box.rotation);
    return [box.centre[0] + dx, box.centre[1] + dy];
  };
  return {
    scale: at([box.size[0] / 2, box.size[1] / 2]),
    rotate: at([0, -box.size[1] / 2 - 22 / zoom]),
  };
}

function distanceToSegment(p: Vec2, a: Vec2, b: Vec2): number {
  const dx = b[0] - a[0];
  const dy = b[1] - a[1];
  const len2 = dx * dx + dy * dy;
  const t = len2 > 0 ? Math.max(0, Math.min(1, ((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / len2)) : 0;
  return Math.hypot(p[0] - a[0] - t * dx, p[1] - a[1] - t * dy);
}

/** The topmost editable layer under `at` on `frame` (layers bottom to top); strokes by their painted path. */
export function hitTest(layers: Layer[], frame: number, at: Vec2, tolerance: number,
                        imageSize: (layer: Layer) => Vec2 | undefined): Layer | null {
  for (const layer of [...layers].reverse()) {
    const op = layer.op;
    if (!layer.visible || op.frame !== frame) continue;
    const box = boxOf(op, imageSize(layer));
    if (!box || !insideBox(box, at, tolerance)) continue;
    if (op.type !== "stroke") return layer;
    const pts = op.points ?? [];
    const reach = (op.width ?? 8) / 2 + tolerance;
    for (let i = 0; i < pts.length; i++) {
      const a = pts[i] as Vec2;
      const b = (pts[i + 1] ?? a) as Vec2;
      if (distanceToSegment(at, a, b) <= reach) return layer;
    }
  }
  return null;
}

const round2 = (v: number): number => Math.round(v * 100) / 100;

/** The update's `set` for dragging `op` (whose box is `box`) from `start` to `now` with `gesture`. */
export function dragChange(op: EditOp, box: Box, gesture: Gesture, start: Vec2, now: Vec2): EditOp {
  const c = box.centre;
  if (gesture === "move") {
    const d: Vec2 = [now[0] - start[0], now[1] - start[1]];
    return translate(op, d);
  }
  if (gesture === "scale") {
    const f = Math.min(20, Math.max(0.05, Math.hypot(now[0] - c[0], now[1] - c[1]) /
      Math.max(1e-6, Math.hypot(start[0] - c[0], start[1] - c[1]))));
    return scaleBy(op, box, f);
  }
  const angle = (p: Vec2): number => Math.atan2(p[1] - c[1], p[0] - c[0]);
  // Screen y points down: a clockwise mouse turn is a negative counter-clockwise angle.
  const degrees = (-(angle(now) - angle(start)) * 180) / Math.PI;
  return rotateBy(op, box, degrees);
}

function translate(op: EditOp, [dx, dy]: Vec2): EditOp {
  if (op.type === "stroke") return { points: (op.points ?? []).map((p) => [round2(p[0] + dx), round2(p[1] + dy)] as Vec2) };
  if (op.type === "texture") {
    const [x, y, w, h] = op.rect ?? [0, 0, 0, 0];
    return { rect: [round2((x ?? 0) + dx), round2((y ?? 0) + dy), w ?? 0, h ?? 0] };
  }
  const [x, y] = op.position ?? [0, 0];
  return { position: [round2(x + dx), round2(y + dy)] };
}

function scaleBy(op: EditOp, box: Box, f: number): EditOp {
  const [cx, cy] = box.centre;
  if (op.type === "stroke") {
    return {
      points: (op.points ?? []).map((p) => [round2(cx + (p[0] - cx) * f), round2(cy + (p[1] - cy) * f)] as Vec2),
      width: Math.max(0.5, Math.min(512, round2((op.width ?? 8) * f))),
    };
  }
  if (op.type === "texture") {
    const w = Math.max(2, box.size[0] * f);
    const h = Math.max(2, box.size[1] * f);
    return { rect: [round2(cx - w / 2), round2(cy - h / 2), round2(w), round2(h)] };
  }
  const [w, h] = op.size?.length === 2 ? op.size : [box.size[0], box.size[1]];
  return { size: [Math.max(1, round2((w ?? 64) * f)), Math.max(1, round2((h ?? 64) * f))] };
}

function rotateBy(op: EditOp, box: Box, degrees: number): EditOp {
  if (op.type === "stroke") {
    const [cx, cy] = box.centre;
    return {
      points: (op.points ?? []).map((p) => {
        const [dx, dy] = rotate([p[0] - cx, p[1] - cy], degrees);
        return [round2(cx + dx), round2(cy + dy)] as Vec2;
      }),
    };
  }
  let r = (op.rotation ?? 0) + degrees;
  r = ((((r + 180) % 360) + 360) % 360) - 180;
  return { rotation: round2(r) };
}

/** Which stack an object is drawn in, bottom to top: paint (strokes, images), adjustments, stickers. */
export function stackGroup(op: EditOp): number {
  return op.type === "sticker" ? 2 : op.type === "adjustment" ? 1 : 0;
}

/** Layers bottom to top as the server draws them: by group, then z (EditOp.z, 0 when unset), then creation. */
export function stacked(layers: Layer[]): Layer[] {
  return layers
    .map((layer, order) => ({ layer, order }))
    .sort((a, b) => stackGroup(a.layer.op) - stackGroup(b.layer.op) || (a.layer.op.z ?? 0) - (b.layer.op.z ?? 0) || a.order - b.order)
    .map((entry) => entry.layer);
}

export type Restack = "front" | "forward" | "backward" | "back";

/** The new z that moves `target` as asked within its group, or null when it is already there. */
export function restackZ(layers: Layer[], target: Layer, how: Restack): number | null {
  const group = stacked(layers).filter((l) => stackGroup(l.op) === stackGroup(target.op));
  const i = group.findIndex((l) => l.id === target.id);
  if (i < 0) return null;
  const z = (l: Layer | undefined): number => l?.op.z ?? 0;
  const top = Math.max(...group.map(z));
  const bottom = Math.min(...group.map(z));
  if (how === "front") return i === group.length - 1 ? null : Math.floor(top) + 1;
  if (how === "back") return i === 0 ? null : Math.ceil(bottom) - 1;
  if (how === "forward") {
    if (i === group.length - 1) return null;
    const above = group[i + 1];
    const next = group[i + 2];
    return next === undefined ? Math.floor(z(above)) + 1 : (z(above) + z(next)) / 2;
  }
  if (i === 0) return null;
  const below = group[i - 1];
  const next = group[i - 2];
  return next === undefined ? Math.ceil(z(below)) - 1 : (z(below) + z(next)) / 2;
}
