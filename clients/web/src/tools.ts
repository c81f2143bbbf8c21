// The tool in hand and the pointer on the canvas: the tool buttons and their option panels, the brush
// outline, and each pointer gesture handed to what it means (pan, select, draw, place).
import { $, byId } from "./dom";
import type { DrawKind, DrawTool } from "./draw-tool";
import type { EditorState } from "./editor-state";
import type { Vec2 } from "./generated/messages";
import type { PlaceTool } from "./place-tool";
import type { Selection } from "./select-tool";
import type { View } from "./view";

export type Tool = "select" | "brush" | "eraser" | "image" | "adjust" | "sticker" | "pan";
const TOOLS: readonly Tool[] = ["select", "brush", "eraser", "image", "adjust", "sticker", "pan"];
/** One key per tool, as in most editors. */
export const TOOL_KEYS: Readonly<Record<string, Tool>> = {
  v: "select", b: "brush", e: "eraser", i: "image", a: "adjust", s: "sticker", h: "pan",
};
const DRAWN: Partial<Record<Tool, DrawKind>> = { brush: "stroke", eraser: "erase", adjust: "adjust", image: "rect" };

export interface ToolsHost {
  state: EditorState;
  view: View;
  selection: Selection;
  draw: DrawTool;
  place: PlaceTool;
  stopPlayback(): void;
  /** The user dragged the view. */
  panned(): void;
  /** The pointer moved over the canvas (null: it left). */
  pointerAt(at: Vec2 | null): void;
  /** Another tool was taken. */
  toolChanged(): void;
}

export class Tools {
  tool: Tool = "brush";
  private drag: { kind: "pan" | "draw"; last: [number, number]; pointerId: number } | null = null;

  constructor(private readonly host: ToolsHost) {}

  bind(): void {
    for (const button of document.querySelectorAll<HTMLButtonElement>(".tool")) {
      button.addEventListener("click", () => this.use(button.dataset.tool as Tool));
    }
    // Each slider shows its value beside it.
    for (const output of document.querySelectorAll<HTMLOutputElement>("output[for]")) {
      const input = byId<HTMLInputElement>(output.htmlFor.value);
      const update = (): void => {
        output.textContent = input.value;
      };
      input.addEventListener("input", update);
      update();
    }
    this.use("brush");
    const canvas = this.host.view.canvas;
    canvas.addEventListener("pointerdown", (e) => this.pointerDown(e));
    canvas.addEventListener("pointermove", (e) => this.pointerMove(e));
    canvas.addEventListener("pointerup", (e) => this.pointerUp(e));
    canvas.addEventListener("pointercancel", (e) => this.pointerUp(e));
    canvas.addEventListener("pointerleave", () => {
      this.host.pointerAt(null);
      this.showBrush(null);
    });
  }

  use(tool: Tool): void {
    if (!TOOLS.includes(tool)) return;
    this.tool = tool;
    for (const button of document.querySelectorAll<HTMLButtonElement>(".tool")) {
      button.classList.toggle("active", button.dataset.tool === tool);
    }
    for (const section of document.querySelectorAll<HTMLElement>(".options")) {
      const shown = (section.dataset.for ?? "").split(" ").includes(tool);
      section.classList.toggle("shown", shown);
      for (const label of $(section, "label[data-for]")) {
        label.classList.toggle("hidden", !(label.dataset.for ?? "").split(" ").includes(tool));
      }
    }
    this.host.view.canvas.dataset.tool = tool;
    if (tool !== "select") this.host.selection.select(null);
    this.showBrush(this.host.view.brush?.at ?? null);
    this.host.toolChanged();
  }

  /** [ and ] resize the brush, as in most painting tools. */
  resizeBrush(factor: number): void {
    const input = this.brushWidthInput();
    if (!input) return;
    const next = Math.round(Math.min(Number(input.max), Math.max(Number(input.min), Number(input.value) * factor)));
    input.value = String(next === Number(input.value) ? next + Math.sign(factor - 1) : next);
    input.dispatchEvent(new Event("input", { bubbles: true }));
    if (this.host.view.brush) this.showBrush(this.host.view.brush.at);
  }

  private brushWidthInput(): HTMLInputElement | null {
    if (this.tool === "brush" || this.tool === "eraser") return byId<HTMLInputElement>("brush-width");
    if (this.tool === "adjust") return byId<HTMLInputElement>("adj-width");
    return null;
  }

  /** The brush's outline under the pointer (null: none). */
  private showBrush(at: Vec2 | null): void {
    const input = this.brushWidthInput();
    const view = this.host.view;
    view.brush = at && input && !this.host.state.atlas ? { at, width: Number(input.value) } : null;
    view.invalidate();
  }

  private pointerDown(event: PointerEvent): void {
    const { state, view, selection, place, draw } = this.host;
    if (!state.session) return;
    view.canvas.setPointerCapture(event.pointerId);
    const last: [number, number] = [event.clientX, event.clientY];
    if (this.tool === "pan" || event.button === 1 || event.altKey || state.atlas) {
      this.drag = { kind: "pan", last, pointerId: event.pointerId };
      return;
    }
    if (event.button !== 0) return;
    this.host.stopPlayback();
    const at = view.toFrame(event.clientX, event.clientY);
    state.touch();
    if (this.tool === "select") {
      selection.pointerDown(at, event.pointerId);
      return;
    }
    if (this.tool === "sticker") {
      place.placeSticker(at);
      return;
    }
    if (this.tool === "image" && !place.hasImage) {
      place.askForImage();
      return;
    }
    draw.begin(DRAWN[this.tool] ?? "stroke", at);
    this.drag = { kind: "draw", last, pointerId: event.pointerId };
  }

  private pointerMove(event: PointerEvent): void {
    const view = this.host.view;
    const at = view.toFrame(event.clientX, event.clientY);
    this.host.pointerAt(at);
    this.showBrush(at);
    if (this.host.selection.pointerMove(at, event.pointerId)) return;
    if (!this.drag || this.drag.pointerId !== event.pointerId) return;
    if (this.drag.kind === "draw") {
      this.host.draw.extend(event);
      return;
    }
    view.pan(event.clientX - this.drag.last[0], event.clientY - this.drag.last[1]);
    this.drag.last = [event.clientX, event.clientY];
    this.host.panned();
  }

  private pointerUp(event: PointerEvent): void {
    const view = this.host.view;
    if (this.host.selection.pointerUp(view.toFrame(event.clientX, event.clientY), event.pointerId)) return;
    if (!this.drag || this.drag.pointerId !== event.pointerId) return;
    const drag = this.drag;
    this.drag = null;
    if (drag.kind === "draw") this.host.draw.end(view.toFrame(event.clientX, event.clientY));
    else view.live = null;
  }
}
