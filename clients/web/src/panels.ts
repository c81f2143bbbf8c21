// The right-hand panels (people, layers) and the timeline marks, rendered from the session document.
import type { Layer, SessionDocument } from "./document";
import { byId, el } from "./dom";
import type { EditorState } from "./editor-state";
import type { EditSender } from "./edits";
import type { Participant } from "./generated/received";
import { describeOp, opColour } from "./ops";
import type { Selection } from "./select-tool";

export interface PanelsHost {
  state: EditorState;
  doc: SessionDocument;
  selection: Selection;
  edits: EditSender;
  /** A layer's name was clicked: show its frame (and select it, when the Select tool edits it). */
  goTo(layer: Layer): void;
}

/** The layer list and the timeline marks of the open session. */
export class Panels {
  constructor(private readonly host: PanelsHost) {}

  refreshMarks(): void {
    const { doc, state } = this.host;
    renderMarks(byId("marks"), doc.live(), (layer) => doc.authorOf(layer), state.frames);
  }

  refreshLayers(): void {
    const { doc, selection, edits } = this.host;
    this.refreshMarks();
    selection.refresh();
    renderLayers(byId("layers"), selection.stack(), {
      toggleVisible: (layer) =>
        edits.send({ id: edits.newId("vis"), type: "set_visible", target: layer.id, visible: !layer.visible }),
      remove: (layer) => edits.send({ id: edits.newId("del"), type: "delete", target: layer.id }),
      goTo: (layer) => this.host.goTo(layer),
      authorOf: (layer) => doc.authorOf(layer),
    }, selection.selectedId);
  }
}

export function renderParticipants(list: HTMLElement, people: Participant[], myId: string): void {
  list.replaceChildren(
    ...people.map((p) => {
      const mine = p.participant_id === myId;
      const attributes: Record<string, string> = {
        "data-participant-id": p.participant_id,
        "data-testid": "participant",
        "data-me": String(mine),
        "data-frame": String(p.frame),
      };
      if (p.cursor) attributes["data-cursor"] = `${p.cursor[0]},${p.cursor[1]}`;
      return el("li", attributes, [
        el("span", { class: "swatch", style: `background:${p.color || "#888"}` }),
        el("span", { class: "pname" }, [`${p.name || "guest"}${mine ? " (you)" : ""}`]),
        el("span", { class: "where" }, [`f${p.frame}${p.tool ? ` · ${p.tool}` : ""}`]),
      ]);
    }),
  );
}

export interface LayerActions {
  toggleVisible: (layer: Layer) => void;
  remove: (layer: Layer) => void;
  /** Clicked its name: go to its frame (and select it, when it can be edited). */
  goTo: (layer: Layer) => void;
  authorOf: (layer: Layer) => { name: string; color: string } | undefined;
}

/** Layers topmost first (given bottom to top), as in every editor, each with its author's colour, Hide/Show
 *  and delete; the selected one is marked. */
export function renderLayers(list: HTMLElement, layers: Layer[], actions: LayerActions, selected = ""): void {
  const items = [...layers].reverse().map((layer) => {
    const author = actions.authorOf(layer);
    const visible = el("button", { class: "layer-visible", "data-testid": "layer-visible", title: "Show / hide" }, [
      layer.visible ? "Hide" : "Show",
    ]);
    visible.addEventListener("click", () => actions.toggleVisible(layer));
    const remove = el("button", { class: "layer-delete", "data-testid": "layer-delete", title: "Delete" }, ["✕"]);
    remove.addEventListener("click", () => actions.remove(layer));
    const title = `${layer.id}${author?.name ? ` by ${author.name}` : ""} (click: go to its frame)`;
    const name = el("span", { class: "name", title }, [describeOp(layer.op)]);
    name.addEventListener("click", () => actions.goTo(layer));
    const attributes = {
      "data-layer-id": layer.id,
      "data-layer-type": layer.op.type ?? "",
      "data-visible": String(layer.visible),
      "data-testid": "layer",
      "data-author-color": author?.color ?? "",
      "data-selected": String(layer.id === selected),
      class: `${layer.visible ? "" : "hidden-layer"}${layer.id === selected ? " selected" : ""}`.trim(),
    };
    return el("li", attributes, [
      el("span", { class: "swatch", style: `background:${author?.color || opColour(layer.op)}` }),
      name,
      visible,
      remove,
    ]);
  });
  list.replaceChildren(...(items.length ? items : [el("li", { class: "empty" }, ["No edits yet"])]));
}

/** Ticks under the timeline at the frames where edits were drawn, in their author's colour. */
export function renderMarks(track: HTMLElement, layers: Layer[], authorOf: LayerActions["authorOf"], frames: number): void {
  const last = Math.max(1, frames - 1);
  const marked = new Map<number, string>();
  for (const layer of layers) {
    if (layer.op.frame === undefined || layer.op.space === "atlas") continue;
    marked.set(layer.op.frame, authorOf(layer)?.color || "");
  }
  track.replaceChildren(
    ...[...marked].map(([frame, colour]) =>
      el("span", { "data-frame": String(frame), style: `left:${(frame / last) * 100}%${colour ? `;background:${colour}` : ""}` }),
    ),
  );
}
