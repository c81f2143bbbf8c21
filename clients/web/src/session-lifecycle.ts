// The session over the socket's life: open a bundle or join a link, rejoin after a reconnect (resuming where
// we were), recreate the session from our copy when the server lost it, and adopt the session's info (the
// address bar, the labels, the bundle).
import { WireRequestError, type Connection } from "./connection";
import type { SessionDocument } from "./document";
import { byId } from "./dom";
import type { EditorState } from "./editor-state";
import type { ServerEvent, SessionInfo } from "./generated/received";
import { hideOpenDialog, showOpenDialog } from "./open-dialog";
import type { SessionProtocol } from "./session";
import type { StartFlow } from "./start";
import { messageOf, toast } from "./status";

/** What the page's address says to open. */
export interface PageLink {
  bundle: string;
  session: string;
  join: string;
  token: string;
  name: string;
}

export function pageLink(): PageLink {
  const query = new URLSearchParams(location.search);
  const get = (key: string): string => query.get(key) ?? "";
  return { bundle: get("bundle"), session: get("session"), join: get("join"), token: get("token"), name: get("name") };
}

export interface LifecycleHost {
  conn: Connection;
  state: EditorState;
  doc: SessionDocument;
  protocol: SessionProtocol;
  start: StartFlow;
  link: PageLink;
  /** Who we are to the others. */
  me(): { name: string; color: string };
  /** The socket is new: streams of the old one are gone. */
  streamsLost(): void;
  onEvent(event: ServerEvent): void;
  /** The session's bundle is (newly) known. */
  bundleChanged(): void;
  render(): void;
}

export class SessionLifecycle {
  constructor(private readonly host: LifecycleHost) {}

  /** After every (re)connect: back into the session we had, or into the one the address names. */
  async onOpen(reconnected: boolean): Promise<void> {
    const { state, link, start } = this.host;
    this.host.streamsLost();
    try {
      if (state.session) {
        await this.rejoin(reconnected);
      } else if (link.session) {
        await this.join(link.session, link.join, false);
      } else if (link.bundle) {
        await this.openBundle(link.bundle);
      } else if (!(await start.onConnected())) {
        await this.showOpenDialog();
      }
    } catch (error) {
      toast(messageOf(error));
      if (!state.session) await this.showOpenDialog(messageOf(error)).catch(() => undefined);
    }
  }

  /** The Share button copies the page's address: it joins this session. */
  bindShare(): void {
    byId("share-btn").addEventListener("click", () => {
      void navigator.clipboard?.writeText(location.href).then(
        () => toast("Link copied: anyone with it can join this session", false),
        () => toast(location.href, false),
      );
    });
  }

  /** A new session on a bundle (from the open dialog, the address, or a finished fit). */
  async openBundle(name: string): Promise<void> {
    const conn = this.host.conn;
    await conn.request({ load_bundle: { name } });
    const created = await conn.request({ create_session: { bundle: name } });
    const info = created.session_info;
    if (!info?.session_id) throw new Error("the server did not return a session");
    await this.join(info.session_id, info.join_token, false);
  }

  /** The session's info from a snapshot: the address bar, the labels, and the bundle when it changed. */
  async adopt(info: SessionInfo): Promise<void> {
    const state = this.host.state;
    const changed = state.session?.bundle !== info.bundle || !state.bundle;
    state.session = info;
    const link = new URL(location.href);
    link.search = "";
    link.searchParams.set("session", info.session_id);
    link.searchParams.set("join", info.join_token);
    // No server token in the address bar: it is what people copy, and the join token is enough to come back.
    history.replaceState(null, "", link.toString());
    byId("session-label").textContent = `${info.bundle} · session ${info.session_id.slice(0, 8)}`;
    byId<HTMLButtonElement>("share-btn").disabled = false;
    byId<HTMLButtonElement>("export-btn").disabled = false;
    if (changed && info.bundle) {
      const response = await this.host.conn.request({ bundle_info: { name: info.bundle } });
      state.bundle = response.bundle_info ?? null;
      this.host.bundleChanged();
    }
  }

  private showOpenDialog(error = ""): Promise<void> {
    return showOpenDialog(this.host.conn, this.host.start, (name) => this.openBundle(name), error);
  }

  /** Back after a reconnect: resume the session; if the server no longer has it, recreate it from our copy. */
  private async rejoin(reconnected: boolean): Promise<void> {
    const { conn, doc } = this.host;
    const session = this.host.state.session as SessionInfo;
    try {
      await this.join(session.session_id, session.join_token, reconnected);
    } catch (error) {
      if (error instanceof WireRequestError && error.wire.code === "OUT_OF_RANGE") {
        // The server is behind what we saw (it lost a tail of its log): take its full state instead.
        await this.join(session.session_id, session.join_token, false);
        return;
      }
      if (!(error instanceof WireRequestError) || error.wire.code !== "NOT_FOUND" || !session.bundle) throw error;
      const ops = doc.live().map((layer) => layer.op);
      await conn.request({ load_bundle: { name: session.bundle } });
      const created = await conn.request({ create_session: { bundle: session.bundle, document: { version: 1, ops } } });
      const info = created.session_info;
      if (!info?.session_id) throw new Error("the server did not return a session");
      toast(`The server lost session ${session.session_id}; reopened it with your ${ops.length} edits`, false);
      await this.join(info.session_id, info.join_token, false);
    }
  }

  /** Join (or rejoin after a reconnect, replaying what we missed) and wait for the snapshot. */
  private async join(sessionId: string, joinToken: string, resume: boolean): Promise<void> {
    const { conn, doc, protocol, state } = this.host;
    const join = protocol.join({ sessionId, joinToken, ...this.host.me() }, resume ? doc.seq : 0);
    const snapshot = await new Promise<ServerEvent>((resolve, reject) => {
      let settled = false;
      const id = conn.stream({ session: { join } }, (response) => {
        if (!settled && response.error) {
          settled = true;
          reject(new WireRequestError(response.error));
        } else if (response.event) {
          // Resume may answer with replayed ops instead of a snapshot; either means we are in.
          if (!settled) {
            settled = true;
            resolve(response.event);
          }
          this.host.onEvent(response.event);
        } else if (response.error) {
          toast(`${response.error.code}: ${response.error.message}`);
        }
      });
      if (id === null) reject(new Error("not connected"));
    });
    if (!snapshot.snapshot && !state.session) throw new Error("join did not return a snapshot");
    hideOpenDialog();
    for (const op of protocol.resend()) conn.send({ session: { op } });
    this.host.render();
  }
}
