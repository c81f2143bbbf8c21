// Sending edits: op ids unique to this page, the picked region stamped on new objects, the local preview shown
// until the server's pixels include the op, and undo/redo.
import type { Connection } from "./connection";
import { OBJECT_TYPES } from "./document";
import type { EditorState } from "./editor-state";
import type { EditOp } from "./generated/messages";
import type { SessionProtocol } from "./session";
import { toast } from "./status";
import type { Preview, View } from "./view";

export class EditSender {
  private counter = 0;
  private readonly prefix = Math.random().toString(36).slice(2, 8);

  constructor(private readonly conn: Connection, private readonly state: EditorState, private readonly view: View,
              private readonly protocol: SessionProtocol) {}

  /** A fresh op id, e.g. "stroke-k3x9ab-12" (the kind says what made it, for people reading logs). */
  newId(kind: string): string {
    return `${kind}-${this.prefix}-${++this.counter}`;
  }

  send(op: EditOp, preview?: Preview): void {
    if (!this.state.session) return;
    const region = this.view.regions.selected;
    if (region && OBJECT_TYPES.has(op.type ?? "") && op.roi_region === undefined) op = { ...op, roi_region: region };
    if (preview) {
      preview.sentAt = performance.now();
      this.view.previews.push(preview);
      this.view.invalidate();
    }
    this.protocol.sent(op);
    // While disconnected the op waits in the protocol's unanswered ops (its preview stays) and goes out after the rejoin.
    if (this.conn.send({ session: { op } }) === null) toast("Offline: the edit will be sent on reconnect", false);
  }

  undo(): void {
    this.conn.send({ session: { undo: {} } });
  }

  redo(): void {
    this.conn.send({ session: { redo: {} } });
  }
}
