// The session protocol of one participant, without the DOM or the socket (it mirrors the Python client's
// _session_core.py): the join and resume messages, which ops still wait for an answer (resent after a rejoin),
// and what a snapshot or an answer means. The app owns the connection and the document; this decides.
import type { EditOp, Join } from "./generated/messages";
import type { Error as WireError, Snapshot } from "./generated/received";

export interface JoinParams {
  sessionId: string;
  joinToken: string;
  name: string;
  color: string;
}

/** What a rejected op means to the user. */
export interface Rejection {
  /** A resent op that had reached the server before the drop: it is not lost, say nothing. */
  duplicate: boolean;
  /** The server's sentence is the whole story (outside the editable region): show it as it is. */
  plain: boolean;
  message: string;
}

export class SessionProtocol {
  /** Ours, assigned by the server at the first join and kept across reconnects. */
  participantId = "";
  /** From the snapshot: proves participantId is ours when we rejoin (undo history comes back with it). */
  resumeKey = "";
  private resuming = false;
  /** Ops sent and not yet answered, in order: resent after a rejoin. */
  private readonly unacked = new Map<string, EditOp>();

  /** The Join for a first join (lastSeq 0) or a resume after a drop (lastSeq: the last op seen). */
  join(params: JoinParams, lastSeq: number): Join {
    this.resuming = lastSeq > 0;
    return {
      session_id: params.sessionId,
      join_token: params.joinToken,
      name: params.name,
      color: params.color,
      last_seq: lastSeq,
      participant_id: this.participantId,
      resume_key: this.resumeKey,
    };
  }

  /** A snapshot arrived: take our identity from it; true when the document must be reset from it (false on a
   *  resume whose snapshot is empty: the server replays what we missed instead). */
  snapshot(snap: Snapshot): boolean {
    // "" is the mirror's unset: a snapshot without them keeps ours.
    this.participantId = snap.participant_id || this.participantId;
    this.resumeKey = snap.resume_key || this.resumeKey;
    const replayFollows = this.resuming && !snap.document?.ops.length;
    this.resuming = false;
    return !replayFollows;
  }

  /** An op is about to be sent (or waits, while offline, to go out after the rejoin). */
  sent(op: EditOp): void {
    this.unacked.set(op.id ?? "", op);
  }

  /** What to send again once rejoined, in the order first sent. */
  resend(): EditOp[] {
    return [...this.unacked.values()];
  }

  get waiting(): number {
    return this.unacked.size;
  }

  accepted(opId: string): void {
    this.unacked.delete(opId);
  }

  /** An op was refused; `known` says whether the document already holds an object of that id. */
  rejected(opId: string, error: WireError | undefined, known: boolean): Rejection {
    this.unacked.delete(opId);
    return {
      duplicate: error?.code === "ALREADY_EXISTS" && known,
      plain: error?.code === "OUT_OF_RANGE",
      message: error?.message || "unknown reason",
    };
  }
}
