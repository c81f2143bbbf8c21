// The editable region's controls: with several ROI polygons, the picker (edits keep to the picked region and
// the outline shows it), the outline toggle, and the state the canvas reports for the frame shown.
import { byId } from "./dom";
import type { EditorState } from "./editor-state";
import type { View } from "./view";

export class RegionPicker {
  constructor(private readonly state: EditorState, private readonly view: View) {}

  bind(): void {
    byId<HTMLSelectElement>("roi-region").addEventListener("change", (e) =>
      this.pick(Number((e.target as HTMLSelectElement).value)));
    byId<HTMLInputElement>("roi-toggle").addEventListener("change", (e) => {
      this.view.showRegion = (e.target as HTMLInputElement).checked;
      this.showState();
    });
  }

  /** A bundle with `count` polygons: the picker offers each (shown from two on), starting with all. */
  offer(count: number): void {
    const picker = byId<HTMLSelectElement>("roi-region");
    picker.replaceChildren(...["All regions", ...Array.from({ length: count }, (_, i) => `Region ${i + 1}`)].map((text, i) => {
      const option = document.createElement("option");
      option.value = String(i);
      option.textContent = text;
      return option;
    }));
    byId("roi-region-box").hidden = count < 2;
    this.pick(0);
  }

  /** Show or hide the outline (the R key). */
  toggle(): void {
    const toggle = byId<HTMLInputElement>("roi-toggle");
    toggle.checked = !toggle.checked;
    toggle.dispatchEvent(new Event("change"));
  }

  /** The region toggle and the canvas's test hook say whether the outline is shown for this frame. */
  showState(): void {
    const view = this.view;
    const known = view.regions.has(this.state.frame);
    view.canvas.dataset.roi = this.state.atlas ? "atlas" : !known ? "pending" : view.showRegion ? "shown" : "hidden";
    view.invalidate();
  }

  private pick(region: number): void {
    byId<HTMLSelectElement>("roi-region").value = String(region);
    this.view.regions.selected = region;
    byId("roi-hint").textContent = region
      ? `Edits keep to region ${region}; outside it they are refused. Pick "All regions" to edit every one.`
      : byId("roi-region-box").hidden ? "Edits land inside the outlined region; outside it they are refused."
      : "Each polygon you marked is its own region: pick one to keep your edits to it.";
    this.showState();
  }
}
