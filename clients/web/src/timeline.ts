// The timeline: the current frame (clamped to the clip), the scrubber and its labels.
import { byId } from "./dom";
import type { EditorState } from "./editor-state";
import type { View } from "./view";

export interface TimelineHost {
  state: EditorState;
  view: View;
  stopPlayback(): void;
  /** The current frame was set; `render`: ask for it and tell the others. */
  frameSet(render: boolean): void;
}

export class Timeline {
  constructor(private readonly host: TimelineHost) {}

  bind(): void {
    const scrubber = byId<HTMLInputElement>("scrubber");
    scrubber.addEventListener("input", () => {
      this.host.stopPlayback();
      this.host.state.touch();
      this.set(Number(scrubber.value));
    });
  }

  /** A new bundle: the scrubber's range and the clip's rate. */
  adopt(): void {
    const state = this.host.state;
    byId<HTMLInputElement>("scrubber").max = String(Math.max(0, state.frames - 1));
    byId("fps-label").textContent = `${(state.bundle?.fps ?? 0).toFixed(2)} fps`;
  }

  set(frame: number, render = true): void {
    const { state, view } = this.host;
    const last = Math.max(0, state.frames - 1);
    state.frame = Math.max(0, Math.min(last, Math.round(frame)));
    view.currentFrame = state.frame;
    byId<HTMLInputElement>("scrubber").value = String(state.frame);
    byId("frame-label").textContent = `${state.frame} / ${last}`;
    this.host.frameSet(render);
  }

  /** One frame back (-1) or on (+1). */
  step(delta: number): void {
    this.host.stopPlayback();
    this.set(this.host.state.frame + delta);
  }
}
