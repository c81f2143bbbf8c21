// Presence: who we are to the others (name, colour, cursor, frame, tool), sent as we move, and who they are:
// the people list and their cursors on the canvas.
import type { Connection } from "./connection";
import type { SessionDocument } from "./document";
import { byId } from "./dom";
import type { EditorState } from "./editor-state";
import type { Participant } from "./generated/received";
import type { Vec2 } from "./generated/messages";
import { rounded } from "./geometry";
import { renderParticipants } from "./panels";
import type { SessionProtocol } from "./session";
import type { View } from "./view";

const PALETTE = ["#ff6b6b", "#4da3ff", "#34c759", "#ffb020", "#bf5af2", "#5ac8fa", "#ff9f0a", "#ff375f"];
const NAME_KEY = "vatlas.name";
// At most ~20 updates a second: cursors look live without flooding the session.
const SEND_EVERY_MS = 50;

export interface PresenceHost {
  conn: Connection;
  state: EditorState;
  view: View;
  doc: SessionDocument;
  protocol: SessionProtocol;
  /** The tool in hand, as the others see it. */
  tool(): string;
}

export class Presence {
  name: string;
  readonly color = PALETTE[Math.floor(Math.random() * PALETTE.length)] ?? "#4da3ff";
  private timer: number | undefined;
  /** Where our pointer was last on the canvas (null: off it). */
  private cursor: Vec2 | null = null;

  constructor(private readonly host: PresenceHost, nameFromLink: string) {
    this.name = (nameFromLink || storedName() || `Guest ${Math.floor(100 + Math.random() * 900)}`).slice(0, 40);
    byId<HTMLInputElement>("my-name").value = this.name;
  }

  /** The name field: a new name goes to the others at once and is remembered for the next visit. */
  bind(): void {
    byId<HTMLInputElement>("my-name").addEventListener("change", (e) => {
      const name = (e.target as HTMLInputElement).value.trim().slice(0, 40);
      if (!name) return;
      this.name = name;
      try {
        localStorage.setItem(NAME_KEY, name);
      } catch {
        // storage can be disabled; the name then lasts for this page only
      }
      const me = this.host.doc.participants.get(this.host.protocol.participantId);
      if (me) me.name = name;
      this.refresh();
      this.resend();
    });
  }

  /** The pointer moved over the canvas. */
  queue(at: Vec2): void {
    this.cursor = at;
    if (this.timer !== undefined) return;
    this.timer = window.setTimeout(() => {
      this.timer = undefined;
      this.send(this.cursor);
    }, SEND_EVERY_MS);
  }

  /** Send our presence now, with the cursor at `at` (null: off the canvas). */
  send(at: Vec2 | null): void {
    const { conn, doc, protocol, state } = this.host;
    if (!state.session) return;
    const tool = this.host.tool();
    // The server does not echo our own presence: keep our row in the people list current here.
    const me = doc.participants.get(protocol.participantId);
    if (me && (me.frame !== state.frame || me.tool !== tool)) {
      me.frame = state.frame;
      me.tool = tool;
      this.refresh();
    }
    conn.send({
      session: {
        presence: {
          cursor: at ? (rounded([at])[0] as Vec2) : undefined,
          frame: state.frame,
          tool,
          name: this.name,
          color: this.color,
        },
      },
    });
  }

  /** Send again with the last cursor: the frame, the tool or the name changed. */
  resend(): void {
    this.send(this.cursor);
  }

  /** Everyone in the session, from a snapshot. */
  reset(people: Participant[]): void {
    const doc = this.host.doc;
    doc.participants.clear();
    for (const p of people) {
      if (!p.participant_id) continue;
      doc.participants.set(p.participant_id, p);
      doc.remember(p.participant_id, p.name, p.color);
    }
  }

  /** Someone joined, moved or left. */
  apply(p: Participant, left: boolean): void {
    const doc = this.host.doc;
    if (left) doc.participants.delete(p.participant_id);
    else {
      doc.participants.set(p.participant_id, p);
      doc.remember(p.participant_id, p.name, p.color);
    }
  }

  /** The people list, and the others' cursors on the canvas. */
  refresh(): void {
    const { doc, protocol, view } = this.host;
    const people = [...doc.participants.values()];
    renderParticipants(byId("participants"), people, protocol.participantId);
    view.cursors = people.filter((p) => p.participant_id !== protocol.participantId && p.cursor);
    view.invalidate();
  }
}

function storedName(): string {
  try {
    return localStorage.getItem(NAME_KEY) ?? "";
  } catch {
    return "";
  }
}
