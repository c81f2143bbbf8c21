// Playback: the server streams frames at the clip's rate (Playback over the socket); when it will not, the page
// paces single renders itself at the same rate. The Play button shows the state.
import type { Connection } from "./connection";
import { byId } from "./dom";
import type { EditorState } from "./editor-state";
import type { RenderedFrame } from "./generated/received";

/** What playback needs from the app. */
export interface PlaybackHost {
  readonly conn: Connection;
  /** The session, the clip and the current frame (the atlas is not played). */
  readonly state: EditorState;
  /** The scale to play at (the viewport's). */
  scale(): number;
  /** Whether the frames should carry their region mask (some frame's is not known yet). */
  wantsRegions(): boolean;
  /** A streamed frame arrived. */
  show(frame: RenderedFrame, scale: number): void;
  /** Pacing here: render the next frame unless one is still in flight. */
  step(): void;
  /** Playback ended: show the current frame at full quality. */
  stopped(): void;
}

export class Playback {
  playing = false;
  private streamId: number | null = null;
  private timer: number | undefined;

  constructor(private readonly host: PlaybackHost, private readonly regionMaskSide: number) {}

  toggle(): void {
    if (this.playing) this.stop();
    else this.start();
  }

  start(): void {
    const { session, atlas, frame, frames } = this.host.state;
    if (!session || atlas) return;
    this.playing = true;
    this.showState();
    const start = frame >= frames - 1 ? 0 : frame;
    const scale = this.host.scale();
    this.streamId = this.host.conn.stream(
      {
        playback: {
          session_id: session.session_id,
          start_frame: start,
          loop: true,
          format: "jpeg",
          quality: 80,
          scale,
          ...(this.host.wantsRegions() ? { roi_mask_side: this.regionMaskSide } : {}),
        },
      },
      (response) => {
        if (response.frame) this.host.show(response.frame, scale);
        else if (response.error) {
          // The server would not stream: pace requests here instead, still at the clip's fps.
          this.endStream();
          this.paceHere();
        }
      },
    );
  }

  stop(): void {
    if (!this.playing) return;
    this.playing = false;
    window.clearTimeout(this.timer);
    this.endStream();
    this.showState();
    this.host.stopped();
  }

  /** The socket went away with its streams: nothing to end on the server. */
  connectionLost(): void {
    this.streamId = null;
    this.stop();
  }

  private paceHere(): void {
    const fps = this.host.state.bundle?.fps || 25;
    const tick = (): void => {
      if (!this.playing) return;
      this.host.step();
      this.timer = window.setTimeout(tick, 1000 / fps);
    };
    tick();
  }

  private endStream(): void {
    if (this.streamId !== null) {
      this.host.conn.endStream(this.streamId);
      this.host.conn.send({ stop_playback: {} });
      this.streamId = null;
    }
  }

  private showState(): void {
    byId("play-btn").textContent = this.playing ? "❚❚" : "▶";
    byId("play-btn").dataset.playing = String(this.playing);
  }
}
