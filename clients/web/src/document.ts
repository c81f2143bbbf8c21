// The client's copy of the session's edit document: live objects (layers) rebuilt from snapshot + applied ops.
import { OBJECT_TYPES as OBJECT_KINDS } from "./generated/messages";
import type { EditDocument, EditOp, LayerAuthor, Participant } from "./generated/received";

/** The op types that make an object (edits.proto declares them). */
export const OBJECT_TYPES: ReadonlySet<string> = new Set(OBJECT_KINDS);

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
  /** Name and colour of everyone who made a layer, also after they left (from the snapshot, then presence). */
  private readonly authors = new Map<string, { name: string; color: string }>();

  /** Replace everything with a snapshot's document (deleted objects are already left out); `authors` says
   *  who made each object, so layers made before we joined show their author's colour too. */
  reset(document: EditDocument | undefined, seq: number, authors: LayerAuthor[] = []): void {
    this.layers.clear();
    const byOp = new Map(authors.map((a) => [a.op_id, a]));
    for (const op of document?.ops ?? []) {
      const author = byOp.get(op.id ?? "");
      if (author?.participant_id) this.remember(author.participant_id, author.name, author.color);
      this.applyOp(op, author?.participant_id ?? "", 0);
    }
    this.seq = seq;
  }

  /** Keep a participant's name and colour for their layers (call on every presence and join). */
  remember(participantId: string, name: string, color: string): void {
    if (participantId && color) this.authors.set(participantId, { name, color });
  }

  /** The colour and name a layer's author has now, or had when last seen; undefined when unknown. */
  authorOf(layer: Layer): { name: string; color: string } | undefined {
    const present = this.participants.get(layer.author);
    if (present?.color) return { name: present.name, color: present.color };
    return this.authors.get(layer.author);
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
