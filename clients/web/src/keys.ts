// Keyboard shortcuts, and buttons that keep no focus (so Space stays play/pause instead of pressing the last
// clicked button again).
import type { EditSender } from "./edits";
import type { Playback } from "./playback";
import type { RegionPicker } from "./region-picker";
import type { Selection } from "./select-tool";
import type { Timeline } from "./timeline";
import { TOOL_KEYS, type Tools } from "./tools";
import type { ZoomControls } from "./zoom";

/** The parts the shortcuts drive. */
export interface KeyTargets {
  edits: EditSender;
  playback: Playback;
  timeline: Timeline;
  zoom: ZoomControls;
  tools: Tools;
  regions: RegionPicker;
  selection: Selection;
}

export function bindKeys(actions: KeyTargets): void {
  window.addEventListener("keydown", (e) => onKey(e, actions));
  document.addEventListener("mousedown", (e) => {
    if (e.target instanceof HTMLElement && e.target.closest("button")) e.preventDefault();
  });
}

function onKey(e: KeyboardEvent, { edits, playback, timeline, zoom, tools, regions, selection }: KeyTargets): void {
  const target = e.target as HTMLElement;
  if (target instanceof HTMLInputElement && target.type !== "range" && target.type !== "checkbox") return;
  const key = e.key.toLowerCase();
  // A focused slider handles its own arrow keys.
  if (target instanceof HTMLInputElement && key.startsWith("arrow")) return;
  const command = e.ctrlKey || e.metaKey;
  if (command && key === "z") {
    e.preventDefault();
    if (e.shiftKey) edits.redo();
    else edits.undo();
  } else if (command && key === "y") {
    e.preventDefault();
    edits.redo();
  } else if (command || e.altKey) {
    return;
  } else if (key === " ") {
    e.preventDefault();
    playback.toggle();
  } else if (key === "arrowleft" || key === "arrowright") {
    e.preventDefault();
    timeline.step(key === "arrowleft" ? -1 : 1);
  } else if (key === "+" || key === "=") {
    zoom.by(1.25);
  } else if (key === "-") {
    zoom.by(0.8);
  } else if (key === "[" || key === "]") {
    tools.resizeBrush(key === "]" ? 1.25 : 0.8);
  } else if (key === "0") {
    zoom.fit();
  } else if (key === "r") {
    regions.toggle();
  } else if (selection.key(key)) {
    e.preventDefault();
  } else if (TOOL_KEYS[key]) {
    tools.use(TOOL_KEYS[key]);
  }
}
