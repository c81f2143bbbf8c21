// Builders for the edit ops the tools send (mirror form of vatlas.v1.EditOp), and how layers are labelled.
import type { EditOp, Vec2 } from "./generated/messages";

export interface StrokeParams {
  id: string;
  frame: number;
  points: Vec2[];
  width: number;
  rgb: [number, number, number];
  opacity: number;
  hardness: number;
  erase: boolean;
}

export function strokeOp(p: StrokeParams): EditOp {
  return {
    id: p.id,
    type: "stroke",
    space: "frame",
    frame: p.frame,
    points: p.points,
    width: p.width,
    // Opacity travels in its own field; the colour stays opaque so it is not applied twice.
    color: [...p.rgb, 1],
    opacity: p.erase ? 1 : p.opacity,
    hardness: p.hardness,
    mode: p.erase ? "erase" : "paint",
  };
}

export interface Adjustments {
  exposure: number;
  contrast: number;
  saturation: number;
  hue: number;
  temperature: number;
}

export function adjustmentOp(id: string, frame: number, points: Vec2[], width: number, hardness: number,
                             adjustments: Adjustments): EditOp {
  return { id, type: "adjustment", space: "frame", frame, region: "path", points, width, hardness, ...adjustments };
}

/** A texture from the rectangle dragged between corners a and b; null when it is too small to mean anything. */
export function textureOp(id: string, frame: number, image: Uint8Array, a: Vec2, b: Vec2, opacity: number): EditOp | null {
  const rect = [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.abs(b[0] - a[0]), Math.abs(b[1] - a[1])];
  if ((rect[2] ?? 0) < 2 || (rect[3] ?? 0) < 2) return null;
  return { id, type: "texture", space: "frame", frame, image, rect: rect.map((v) => Math.round(v * 100) / 100), opacity };
}

export function stickerOp(id: string, frame: number, image: Uint8Array, position: Vec2, size: [number, number]): EditOp {
  return {
    id,
    type: "sticker",
    space: "frame",
    frame,
    image,
    position,
    size,
    follow_scale: true,
    follow_rotation: true,
  };
}

export function describeOp(op: EditOp): string {
  switch (op.type) {
    case "stroke":
      return `${op.mode === "erase" ? "Erase" : "Stroke"} · f${op.frame ?? 0} · ${op.points?.length ?? 0} pts`;
    case "texture":
      return `Image · f${op.frame ?? 0}`;
    case "adjustment":
      return `Adjustment · f${op.frame ?? 0}`;
    case "sticker":
      return `Sticker · f${op.frame ?? 0}`;
    default:
      return op.type ?? "edit";
  }
}

/** CSS colour of an op (its paint colour; grey for ops without one). */
export function opColour(op: EditOp): string {
  const [r, g, b] = op.color ?? [0.5, 0.5, 0.5];
  return `rgb(${Math.round((r ?? 0) * 255)},${Math.round((g ?? 0) * 255)},${Math.round((b ?? 0) * 255)})`;
}
