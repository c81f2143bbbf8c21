// Export: ask the server for an MP4 of the edited clip, show progress, offer the file for download.
import type { Connection } from "./connection";
import { byId } from "./dom";
import type { SessionInfo } from "./generated/received";

export class Exporter {
  private streamId: number | null = null;
  private url: string | null = null;

  constructor(private readonly conn: Connection) {}

  /** The Export button exports the open session (named after its bundle). */
  bind(session: () => SessionInfo | null): void {
    byId("export-btn").addEventListener("click", () => {
      const info = session();
      if (info) this.start(info.session_id, info.bundle || "vatlas");
    });
  }

  get running(): boolean {
    return this.streamId !== null;
  }

  start(sessionId: string, defaultName: string): void {
    if (this.running) return;
    const progress = byId<HTMLProgressElement>("export-progress");
    const stage = byId("export-stage");
    const link = byId<HTMLAnchorElement>("export-download");
    const button = byId<HTMLButtonElement>("export-btn");
    byId("export-box").hidden = false;
    link.hidden = true;
    progress.value = 0;
    stage.textContent = "starting…";
    button.disabled = true;
    const chunks: Uint8Array[] = [];
    const finish = (message: string): void => {
      if (this.streamId !== null) this.conn.endStream(this.streamId);
      this.streamId = null;
      stage.textContent = message;
      button.disabled = false;
    };
    this.streamId = this.conn.stream({ export: { session_id: sessionId, format: "mp4" } }, (response) => {
      if (response.error) {
        finish(`failed: ${response.error.message}`);
        return;
      }
      const event = response.export;
      if (!event) return;
      if (event.fraction !== undefined) progress.value = event.fraction;
      if (event.stage) stage.textContent = event.stage;
      if (event.chunk?.length) chunks.push(event.chunk);
      if (!event.done) return;
      if (this.url) URL.revokeObjectURL(this.url);
      this.url = URL.createObjectURL(new Blob(chunks as BlobPart[], { type: "video/mp4" }));
      const bytes = chunks.reduce((n, c) => n + c.length, 0);
      link.href = this.url;
      link.download = event.filename || `${defaultName}-edited.mp4`;
      link.textContent = `Download (${(bytes / 1e6).toFixed(1)} MB)`;
      link.dataset.bytes = String(bytes);
      link.hidden = false;
      progress.value = 1;
      finish("done");
    });
    if (this.streamId === null) finish("not connected");
  }

  /** The socket went away mid-export: its stream is gone. */
  abandon(): void {
    if (this.running) {
      this.streamId = null;
      byId("export-stage").textContent = "failed: connection lost";
      byId<HTMLButtonElement>("export-btn").disabled = false;
    }
  }
}
