// window.vatlas: what the browser tests read and drive (the frame shown, its pixels, the region, the
// selection, a dropped connection). Nothing in the app reads it.
import type { Connection } from "./connection";
import type { SessionDocument } from "./document";
import type { EditorState } from "./editor-state";
import type { RenderScheduler } from "./render-scheduler";
import type { Selection } from "./select-tool";
import type { SessionProtocol } from "./session";
import type { Rect, ShownFrame, View } from "./view";

/** What the hooks read from the editor. */
export interface TestHost {
  readonly state: EditorState;
  readonly doc: SessionDocument;
  readonly protocol: SessionProtocol;
  readonly selection: Selection;
  readonly renderer: RenderScheduler;
  readonly view: View;
  readonly conn: Connection;
}

export function exposeForTests(host: TestHost): void {
  (window as unknown as { vatlas: unknown }).vatlas = {
    get frame() {
      return host.state.frame;
    },
    get seq() {
      return host.doc.seq;
    },
    get participantId() {
      return host.protocol.participantId;
    },
    get session() {
      return host.state.session;
    },
    get pendingPreviews() {
      return host.view.previews.length;
    },
    /** Milliseconds from sending each op to showing the first server frame that includes it. */
    get editLatencies() {
      return [...host.renderer.editLatencies];
    },
    /** RGBA of the server's last frame at full-resolution pixel (x, y), without previews or cursors (from
     *  the backdrop outside a region render; [] where neither holds it). */
    framePixel(x: number, y: number): number[] {
      const inside = (f: ShownFrame): boolean => {
        const [rx, ry, rw, rh] = f.region ?? [0, 0, f.width, f.height];
        return x >= rx && y >= ry && x < rx + rw && y < ry + rh;
      };
      const view = host.view;
      const shown = [view.shown, view.backdrop].find((f): f is ShownFrame => f !== null && inside(f));
      if (!shown) return [];
      const canvas = new OffscreenCanvas(1, 1);
      const ctx = canvas.getContext("2d");
      if (!ctx) return [];
      const [rx, ry, rw, rh] = shown.region ?? [0, 0, shown.width, shown.height];
      const sx = shown.bitmap.width / rw;
      const sy = shown.bitmap.height / rh;
      ctx.drawImage(shown.bitmap, Math.floor((x - rx) * sx), Math.floor((y - ry) * sy), 1, 1, 0, 0, 1, 1);
      return [...ctx.getImageData(0, 0, 1, 1).data];
    },
    /** The server's last frame (or atlas) as RGBA at its delivered resolution, without previews or cursors;
     *  `region` is the part of the frame it holds ([x, y, w, h] full-resolution pixels) and `scale` its scale. */
    frameData(): { width: number; height: number; frame: number; seq: number; data: number[]; scale: number;
                   region: Rect } | null {
      const shown = host.view.shown;
      if (!shown) return null;
      const { width, height } = shown.bitmap;
      const canvas = new OffscreenCanvas(width, height);
      const ctx = canvas.getContext("2d");
      if (!ctx) return null;
      ctx.drawImage(shown.bitmap, 0, 0);
      return { width, height, frame: shown.frame, seq: shown.seq, data: [...ctx.getImageData(0, 0, width, height).data],
               scale: shown.scale, region: shown.region ?? [0, 0, shown.width, shown.height] };
    },
    /** The view: zoom (CSS px per frame px), device pixel ratio, canvas size in CSS px. */
    get viewport() {
      const rect = host.view.canvas.getBoundingClientRect();
      return { zoom: host.view.zoom, dpr: window.devicePixelRatio || 1, width: rect.width, height: rect.height };
    },
    /** Client position (CSS px) of frame pixel (x, y): lets a test draw at exact frame coordinates. */
    clientPoint(x: number, y: number): [number, number] {
      const rect = host.view.canvas.getBoundingClientRect();
      return [rect.left + host.view.offset[0] + x * host.view.zoom, rect.top + host.view.offset[1] + y * host.view.zoom];
    },
    /** The editable region on the frame shown: its visible box (full-resolution pixels), the outline's
     *  segment count, and whether it is drawn. null until the server sent it for this frame. */
    get region() {
      const frame = host.state.frame;
      const region = host.view.regions.get(frame);
      if (!region) return null;
      return { frame, visible: region.visible, segments: region.outline.length / 4, shown: host.view.showRegion,
               cols: region.cols, rows: region.rows, picked: host.view.regions.selected };
    },
    /** The selected layer's id ("" when none). */
    get selected() {
      return host.selection.selectedId;
    },
    dropConnection(outageMs = 0): void {
      host.conn.dropForTest(outageMs);
    },
  };
}
