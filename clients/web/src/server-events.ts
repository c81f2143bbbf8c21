// What the session's events mean for the page: a snapshot resets the document and the people, applied ops
// change the layers, answers to our own ops settle their previews, presence moves the others.
import type { SessionDocument } from "./document";
import { byId } from "./dom";
import type { ServerEvent, SessionInfo, WsResponse } from "./generated/received";
import type { Panels } from "./panels";
import type { Presence } from "./presence";
import type { SessionProtocol } from "./session";
import { messageOf, toast } from "./status";
import type { View } from "./view";

export interface EventsHost {
  doc: SessionDocument;
  protocol: SessionProtocol;
  view: View;
  presence: Presence;
  panels: Panels;
  adopt(info: SessionInfo): Promise<void>;
  render(): void;
}

export class ServerEvents {
  constructor(private readonly host: EventsHost) {}

  /** A response no request or stream waits for. */
  unsolicited(response: WsResponse): void {
    if (response.event) this.handle(response.event);
    else if (response.error) toast(`${response.error.code}: ${response.error.message}`);
  }

  handle(event: ServerEvent): void {
    const { doc, protocol, view, presence, panels } = this.host;
    if (event.snapshot) {
      const snap = event.snapshot;
      // On resume the server may send an empty document and then replay the ops we missed: keep ours.
      if (protocol.snapshot(snap)) doc.reset(snap.document, snap.session?.seq ?? 0, snap.authors);
      presence.reset(snap.participants);
      if (snap.session) void this.host.adopt(snap.session).catch((e: unknown) => toast(messageOf(e)));
      presence.refresh();
      panels.refreshLayers();
      this.host.render();
      byId("app").dataset.ready = "true";
    } else if (event.applied) {
      const { op, seq, participant_id: author } = event.applied;
      if (op && doc.applyOp(op, author, seq)) {
        panels.refreshLayers();
        this.host.render();
      }
    } else if (event.accepted) {
      const { op_id: opId, seq } = event.accepted;
      protocol.accepted(opId);
      const preview = view.previews.find((p) => p.opId === opId);
      if (preview) preview.seq = seq;
    } else if (event.rejected) {
      const { op_id: opId, error } = event.rejected;
      const { duplicate, plain, message } = protocol.rejected(opId, error, doc.get(opId) !== undefined);
      view.previews = view.previews.filter((p) => p.opId !== opId);
      view.invalidate();
      if (!duplicate) toast(plain ? message : `Edit rejected: ${message}`);
    } else if (event.presence?.participant) {
      presence.apply(event.presence.participant, event.presence.left);
      presence.refresh();
      panels.refreshLayers();
    } else if (event.error) {
      toast(`${event.error.code}: ${event.error.message}`);
    }
  }
}
