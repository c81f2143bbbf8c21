// Zooming the view: the wheel, the toolbar buttons and the zoom label. Zooming counts as interaction, so the
// renders meanwhile are drafts.
import { byId } from "./dom";
import type { EditorState } from "./editor-state";
import type { View } from "./view";

const WHEEL_RATE = 0.0015;

export class ZoomControls {
  constructor(private readonly state: EditorState, private readonly view: View) {}

  bind(): void {
    this.view.canvas.addEventListener(
      "wheel",
      (e) => {
        e.preventDefault();
        this.state.touch();
        this.view.zoomAt(Math.exp(-e.deltaY * WHEEL_RATE), e.clientX, e.clientY);
      },
      { passive: false },
    );
    byId("zoom-in").addEventListener("click", () => this.by(1.25));
    byId("zoom-out").addEventListener("click", () => this.by(0.8));
    byId("zoom-fit").addEventListener("click", () => this.fit());
  }

  by(factor: number): void {
    this.state.touch(); // zoomCentre reports the transform (view.onTransform) itself
    this.view.zoomCentre(factor);
  }

  fit(): void {
    this.view.fit();
    this.showLabel();
  }

  showLabel(): void {
    byId("zoom-label").textContent = `${Math.round(this.view.zoom * 100)}%`;
  }
}
