// The client's copy of the session's edit document: live objects (layers) rebuilt from snapshot + applied ops.
import type { EditDocument, EditOp, Participant } from "./generated/messages";

export const OBJECT_TYPES = new Set(["stroke", "texture", "adjustment", "sticker"]);

export interface Layer {
  id: string;
  op: EditOp;
  author: string;
  visible: boolean;
  deleted: boolean;
}

export class SessionDocument {
  seq = 0;
  private readonly layers = new Map<string, Layer>();
  readonly participants = new Map<string, Participant>();

  /** Replace everything with a snapshot's document (deleted objects are already left out). */
  reset(document: EditDocument | undefined, seq: number): void {
    this.layers.clear();
    for (const op of document?.ops ?? []) this.applyOp(op, "", 0);
    this.seq = seq;
  }

  /** Apply one op in sequence order (ops at or below the current seq are replays and ignored). */
  applyOp(op: EditOp, author: string, seq: number): boolean {
    if (seq > 0 && seq <= this.seq) return false;
    if (seq > 0) this.seq = seq;
    const type = op.type ?? "";
    const target = op.target ? this.layers.get(op.target) : undefined;
    if (OBJECT_TYPES.has(type) && op.id) {
      this.layers.set(op.id, { id: op.id, op, author, visible: op.visible ?? true, deleted: false });
    } else if (type === "delete" && target) {
      target.deleted = true;
    } else if (type === "restore" && target) {
      target.deleted = false;
    } else if (type === "set_visible" && target) {
      target.visible = op.visible ?? true;
    } else if (type === "update" && target && op.set) {
      target.op = { ...target.op, ...op.set, id: target.id, type: target.op.type };
      if (op.set.visible !== undefined) target.visible = op.set.visible;
    }
    return true;
  }

  /** Live layers in document order (back to front). */
  live(): Layer[] {
    return [...this.layers.values()].filter((layer) => !layer.deleted);
  }

  get(id: string): Layer | undefined {
    return this.layers.get(id);
  }
}
