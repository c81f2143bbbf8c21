// The drawing tools (brush, eraser, adjustment brush, and the image tool's rectangle): the live preview while
// the pointer is down, turned into an op when it lifts.
import { byId, readNumber } from "./dom";
import type { EditorState } from "./editor-state";
import type { EditSender } from "./edits";
import type { Vec2 } from "./generated/messages";
import { hexToRgb, rounded, simplify } from "./geometry";
import { adjustmentOp, strokeOp } from "./ops";
import type { PlaceTool } from "./place-tool";
import type { Preview, View } from "./view";

const MAX_POINTS = 4000;
const MIN_STEP_PX = 1.5; // screen pixels between kept points while drawing

export type DrawKind = "stroke" | "erase" | "adjust" | "rect";

export class DrawTool {
  constructor(private readonly state: EditorState, private readonly view: View, private readonly edits: EditSender,
              private readonly place: PlaceTool) {}

  begin(kind: DrawKind, at: Vec2): void {
    this.view.live = {
      opId: "",
      frame: this.state.frame,
      kind,
      points: [at],
      width: readNumber(kind === "adjust" ? "adj-width" : "brush-width"),
      color: byId<HTMLInputElement>("brush-color").value,
      opacity: readNumber("brush-opacity"),
      hardness: readNumber("brush-hardness"),
      seq: null,
    };
    this.view.invalidate();
  }

  extend(event: PointerEvent): void {
    const live = this.view.live;
    if (!live) return;
    this.state.touch();
    // Coalesced events keep fast strokes smooth where the browser batches pointer moves.
    const events = typeof event.getCoalescedEvents === "function" ? event.getCoalescedEvents() : [];
    for (const e of events.length ? events : [event]) {
      const p = this.view.toFrame(e.clientX, e.clientY);
      if (live.kind === "rect") {
        live.points = [live.points[0] as Vec2, p];
        continue;
      }
      const prev = live.points[live.points.length - 1] as Vec2;
      if (Math.hypot(p[0] - prev[0], p[1] - prev[1]) * this.view.zoom >= MIN_STEP_PX) live.points.push(p);
    }
    this.view.invalidate();
  }

  /** The pointer lifted at `end`: send what was drawn. */
  end(end: Vec2): void {
    const live = this.view.live;
    this.view.live = null;
    if (!live) return;
    if (live.kind === "rect") {
      live.points = [live.points[0] as Vec2, end];
      this.place.placeImage(live.points[0] as Vec2, end, live);
    } else {
      const prev = live.points[live.points.length - 1] as Vec2;
      if (Math.hypot(end[0] - prev[0], end[1] - prev[1]) > 0.01) live.points.push(end);
      this.finishPath(live);
    }
    this.view.invalidate();
  }

  private finishPath(preview: Preview): void {
    const points = rounded(simplify(preview.points, 0.35)).slice(0, MAX_POINTS);
    const id = this.edits.newId(preview.kind);
    preview.opId = id;
    preview.points = points;
    const frame = this.state.frame;
    const hardness = readNumber("brush-hardness");
    const op =
      preview.kind === "adjust"
        ? adjustmentOp(id, frame, points, preview.width, hardness, {
            exposure: readNumber("adj-exposure"),
            contrast: readNumber("adj-contrast"),
            saturation: readNumber("adj-saturation"),
            hue: readNumber("adj-hue"),
            temperature: readNumber("adj-temperature"),
          })
        : strokeOp({
            id,
            frame,
            points,
            width: preview.width,
            rgb: hexToRgb(byId<HTMLInputElement>("brush-color").value),
            opacity: preview.opacity,
            hardness,
            erase: preview.kind === "erase",
          });
    this.edits.send(op, preview);
  }
}
