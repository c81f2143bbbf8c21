// The Select tool: pick a placed image, sticker or stroke (on the canvas, on the frame it was made on, or in
// the layer list), drag it to move, its square to scale, its dot to rotate; the panel sets opacity, colour
// and stacking. Each change is one `update` op, so undo and the other participants see it like any edit.
import type { Layer, SessionDocument } from "./document";
import { byId } from "./dom";
import type { EditorState } from "./editor-state";
import type { EditSender } from "./edits";
import type { EditOp, Vec2 } from "./generated/messages";
import { hexToRgb } from "./geometry";
import { describeOp } from "./ops";
import {
  boxOf,
  dragChange,
  EDITABLE,
  handles,
  hitTest,
  insideBox,
  restackZ,
  stacked,
  type Box,
  type Gesture,
  type Restack,
} from "./selection";
import type { Preview, View } from "./view";

export interface SelectionHost {
  view: View;
  doc: SessionDocument;
  state: EditorState;
  edits: EditSender;
  /** Something the layer list shows changed (the selection). */
  changed: () => void;
}

interface Drag {
  gesture: Gesture;
  start: Vec2;
  box: Box;
  layer: Layer;
  pointerId: number;
  change: EditOp | null;
}

const HANDLE_PX = 9; // screen pixels around a handle that grab it
// a placed image's colour controls: EditOp fields the server applies to a texture's or sticker's own image
const GRADE_FIELDS = ["exposure", "saturation", "hue"] as const;

export class Selection {
  selectedId = "";
  private drag: Drag | null = null;
  /** Decoded pictures of image and sticker layers (for their previews while they move), by layer id. */
  private readonly pictures = new Map<string, ImageBitmap | "loading">();

  constructor(private readonly host: SelectionHost) {}

  /** Live layers bottom to top, as the server stacks them. */
  stack(): Layer[] {
    return stacked(this.host.doc.live());
  }

  private layer(): Layer | undefined {
    const layer = this.selectedId ? this.host.doc.get(this.selectedId) : undefined;
    return layer && !layer.deleted ? layer : undefined;
  }

  /** Select a layer by id (null: none); false when it is not something this tool edits. */
  select(id: string | null): boolean {
    const layer = id ? this.host.doc.get(id) : undefined;
    const ok = !!layer && EDITABLE.has(layer.op.type ?? "") && layer.op.space !== "atlas";
    const next = ok && id ? id : "";
    if (next !== this.selectedId) {
      this.selectedId = next;
      this.refresh();
      this.host.changed();
    }
    return ok;
  }

  /** Re-read the selected layer (it may have moved, changed or gone) into the canvas outline and the panel. */
  refresh(): void {
    const layer = this.layer();
    if (!layer && this.selectedId) this.selectedId = "";
    const view = this.host.view;
    // The outline shows on the frame the object was made on (where its coordinates are).
    if (!this.drag) view.selection = layer && layer.op.frame === this.host.state.frame ? boxOf(layer.op) : null;
    view.canvas.dataset.selected = this.selectedId;
    view.invalidate();
    this.showPanel(layer);
    if (layer) this.picture(layer);
  }

  private showPanel(layer: Layer | undefined): void {
    byId("sel-none").hidden = !!layer;
    byId("sel-props").hidden = !layer;
    if (!layer) return;
    byId("sel-name").textContent = describeOp(layer.op);
    const opacity = byId<HTMLInputElement>("sel-opacity");
    opacity.value = String(layer.op.opacity ?? 1);
    opacity.dispatchEvent(new Event("input"));
    const isStroke = layer.op.type === "stroke";
    byId("sel-color-row").hidden = !isStroke;
    // a placed image's own colour grade (the server applies it to the image before it lands on the surface)
    const isImage = layer.op.type === "texture" || layer.op.type === "sticker";
    byId("sel-grade").hidden = !isImage;
    if (isImage) {
      for (const field of GRADE_FIELDS) {
        const input = byId<HTMLInputElement>(`sel-${field}`);
        input.value = String(layer.op[field] ?? 0);
        input.dispatchEvent(new Event("input"));
      }
    }
    if (isStroke) {
      const [r, g, b] = layer.op.color ?? [1, 1, 1];
      const hex = (v: number | undefined): string => Math.round((v ?? 0) * 255).toString(16).padStart(2, "0");
      byId<HTMLInputElement>("sel-color").value = `#${hex(r)}${hex(g)}${hex(b)}`;
    }
  }

  private picture(layer: Layer): ImageBitmap | undefined {
    const cached = this.pictures.get(layer.id);
    if (cached === "loading") return undefined;
    if (cached) return cached;
    const bytes = layer.op.image;
    if (!bytes?.length) return undefined;
    this.pictures.set(layer.id, "loading");
    void createImageBitmap(new Blob([bytes as BlobPart])).then(
      (bitmap) => this.pictures.set(layer.id, bitmap),
      () => this.pictures.delete(layer.id),
    );
    return undefined;
  }

  // ---------------------------------------------------------------- pointer

  pointerDown(at: Vec2, pointerId: number): void {
    const zoom = this.host.view.zoom;
    const current = this.layer();
    const box = current && current.op.frame === this.host.state.frame ? boxOf(current.op) : null;
    let gesture: Gesture | null = null;
    let layer: Layer | undefined = current;
    if (box) {
      const grab = HANDLE_PX / zoom;
      const { scale, rotate } = handles(box, zoom);
      if (Math.hypot(at[0] - scale[0], at[1] - scale[1]) <= grab) gesture = "scale";
      else if (Math.hypot(at[0] - rotate[0], at[1] - rotate[1]) <= grab) gesture = "rotate";
      else if (insideBox(box, at, 2 / zoom)) gesture = "move";
    }
    if (!gesture) {
      layer = hitTest(this.stack(), this.host.state.frame, at, 4 / zoom, () => undefined) ?? undefined;
      this.select(layer?.id ?? null);
      gesture = layer ? "move" : null;
    }
    const picked = layer ? boxOf(layer.op) : null;
    if (!gesture || !layer || !picked) return;
    this.drag = { gesture, start: at, box: picked, layer, pointerId, change: null };
  }

  /** A drag of the selection in progress: preview it where it goes. True when the event was ours. */
  pointerMove(at: Vec2, pointerId: number): boolean {
    const drag = this.drag;
    if (!drag || drag.pointerId !== pointerId) return false;
    if (Math.hypot(at[0] - drag.start[0], at[1] - drag.start[1]) * this.host.view.zoom < 1) return true;
    drag.change = dragChange(drag.layer.op, drag.box, drag.gesture, drag.start, at);
    const moved = { ...drag.layer.op, ...drag.change };
    this.host.view.live = this.preview(drag.layer, moved, "");
    this.host.view.selection = boxOf(moved);
    this.host.view.invalidate();
    return true;
  }

  pointerUp(at: Vec2, pointerId: number): boolean {
    const drag = this.drag;
    if (!drag || drag.pointerId !== pointerId) return false;
    this.pointerMove(at, pointerId);
    this.drag = null;
    this.host.view.live = null;
    if (drag.change) this.update(drag.layer, drag.change);
    else this.refresh();
    return true;
  }

  /** The local stand-in for `op` (the layer after a change) until the server's frame shows it. */
  private preview(layer: Layer, op: EditOp, opId: string): Preview {
    const base = { opId, frame: op.frame ?? 0, seq: null, opacity: op.opacity ?? 1, color: "", width: 0, points: [] as Vec2[] };
    if (op.type === "stroke") {
      const [r, g, b] = op.color ?? [1, 1, 1];
      return {
        ...base,
        kind: op.mode === "erase" ? "erase" : "stroke",
        points: op.points ?? [],
        width: op.width ?? 8,
        hardness: op.hardness ?? 1,
        color: `rgb(${Math.round((r ?? 0) * 255)},${Math.round((g ?? 0) * 255)},${Math.round((b ?? 0) * 255)})`,
      };
    }
    const box = boxOf(op) ?? undefined;
    const image = this.picture(layer);
    return { ...base, kind: "image", ...(box ? { box } : {}), ...(image ? { image } : {}) };
  }

  /** Send one update of the layer (its preview stays until a server frame includes it). */
  private update(layer: Layer, change: EditOp): void {
    const id = this.host.edits.newId("update");
    const preview = this.preview(layer, { ...layer.op, ...change }, id);
    this.host.edits.send({ id, type: "update", target: layer.id, set: change }, preview);
    this.host.view.selection = boxOf({ ...layer.op, ...change });
  }

  // ---------------------------------------------------------------- panel and keys

  bind(): void {
    byId<HTMLInputElement>("sel-opacity").addEventListener("change", (e) => {
      const layer = this.layer();
      const value = Number((e.target as HTMLInputElement).value);
      if (layer && value !== (layer.op.opacity ?? 1)) this.update(layer, { opacity: value });
    });
    byId<HTMLInputElement>("sel-color").addEventListener("change", (e) => {
      const layer = this.layer();
      if (layer?.op.type === "stroke") this.update(layer, { color: [...hexToRgb((e.target as HTMLInputElement).value), 1] });
    });
    for (const field of GRADE_FIELDS) {
      byId<HTMLInputElement>(`sel-${field}`).addEventListener("change", (e) => {
        const layer = this.layer();
        const value = Number((e.target as HTMLInputElement).value);
        if ((layer?.op.type === "texture" || layer?.op.type === "sticker") && value !== (layer.op[field] ?? 0)) {
          this.update(layer, { [field]: value });
        }
      });
    }
    for (const how of ["front", "forward", "backward", "back"] as Restack[]) {
      byId(`sel-${how}`).addEventListener("click", () => this.restack(how));
    }
  }

  restack(how: Restack): void {
    const layer = this.layer();
    if (!layer) return;
    const z = restackZ(this.host.doc.live(), layer, how);
    if (z !== null) this.update(layer, { z });
  }

  /** Delete/Backspace removes the selection, Escape drops it; true when the key was ours. */
  key(key: string): boolean {
    const layer = this.layer();
    if (!layer) return false;
    if (key === "escape") {
      this.select(null);
      return true;
    }
    if (key === "delete" || key === "backspace") {
      this.host.edits.send({ id: this.host.edits.newId("del"), type: "delete", target: layer.id });
      this.select(null);
      return true;
    }
    return false;
  }
}
