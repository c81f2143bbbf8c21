// The editor's composition root: it builds each part of the page and wires them together; the parts do the
// work, one job each. DOM ids are stable (the browser tests rely on them).
import { Connection, socketUrl } from "./connection";
import { SessionDocument } from "./document";
import { byId } from "./dom";
import { DrawTool } from "./draw-tool";
import { EditorState } from "./editor-state";
import { EditSender } from "./edits";
import { Exporter } from "./export";
import { bindKeys } from "./keys";
import { Panels } from "./panels";
import { PlaceTool } from "./place-tool";
import { Playback } from "./playback";
import { Presence } from "./presence";
import { RegionPicker } from "./region-picker";
import { RenderScheduler } from "./render-scheduler";
import { ROI_MASK_SIDE } from "./roi";
import { Selection } from "./select-tool";
import { ServerEvents } from "./server-events";
import { SessionProtocol } from "./session";
import { pageLink, SessionLifecycle } from "./session-lifecycle";
import { reopenWith, StartFlow } from "./start";
import { showConnection } from "./status";
import { exposeForTests } from "./test-hooks";
import { Timeline } from "./timeline";
import { Tools } from "./tools";
import { View } from "./view";
import { ZoomControls } from "./zoom";

export class App {
  constructor() {
    // The parts call each other through the closures below, which run only once the socket opens (the
    // last line), when every part exists.
    const link = pageLink();
    const state = new EditorState();
    const doc = new SessionDocument();
    const protocol = new SessionProtocol();
    const view = new View(byId<HTMLCanvasElement>("view-canvas"));
    const conn = new Connection({
      url: socketUrl(),
      // A share link carries only the session's join token: the server accepts it as a hello for that session.
      token: link.token || link.join,
      onState: showConnection,
      onOpen: (reconnected) => void lifecycle.onOpen(reconnected),
      onUnsolicited: (response) => events.unsolicited(response),
    });
    const edits = new EditSender(conn, state, view, protocol);
    const exporter = new Exporter(conn);
    const regions = new RegionPicker(state, view);
    const zoom = new ZoomControls(state, view);
    const renderer: RenderScheduler = new RenderScheduler({
      conn, state, view,
      playing: () => playback.playing,
      regionsChanged: () => regions.showState(),
      showFrame: (frame) => timeline.set(frame, false),
    });
    const playback: Playback = new Playback({
      conn, state,
      scale: () => renderer.finalScale(),
      wantsRegions: () => view.regions.size < state.frames,
      show: (frame, scale) => void renderer.show(frame, false, false, scale),
      step: () => renderer.next(),
      stopped: () => renderer.request(),
    }, ROI_MASK_SIDE);
    const presence = new Presence({ conn, state, view, doc, protocol, tool: () => tools.tool }, link.name);
    const selection = new Selection({ view, doc, state, edits, changed: () => panels.refreshLayers() });
    const panels = new Panels({
      state, doc, selection, edits,
      goTo: (layer) => {
        if (layer.op.frame === undefined || state.atlas) return;
        playback.stop();
        timeline.set(layer.op.frame);
        if (selection.select(layer.id)) tools.use("select");
      },
    });
    const timeline = new Timeline({
      state, view,
      stopPlayback: () => playback.stop(),
      frameSet: (render) => {
        selection.refresh();
        regions.showState();
        if (render) {
          renderer.request();
          presence.resend();
        }
      },
    });
    const place = new PlaceTool(state, edits, (tool) => tools.use(tool));
    const tools = new Tools({
      state, view, selection, place,
      draw: new DrawTool(state, view, edits, place),
      stopPlayback: () => playback.stop(),
      // A drag of the view: interactive (drafts) until it pauses, then refined to the new viewport.
      panned: () => {
        state.touch();
        view.onTransform();
      },
      pointerAt: (at) => (at ? presence.queue(at) : presence.send(null)),
      toolChanged: () => presence.resend(),
    });
    view.onTransform = () => {
      zoom.showLabel();
      renderer.viewChanged();
    };
    const start: StartFlow = new StartFlow(conn, {
      // after a fit: open it here, or (with a session already open) in a fresh page for the new bundle
      openBundle: (name) => (state.session ? reopenWith(name, link.token) : lifecycle.openBundle(name)),
      bundleNames: async () => ((await conn.request({ list_bundles: {} })).bundles?.bundles ?? []).map((b) => b.name),
    });
    const showWholeFrame = (): void => view.setSize(state.bundle?.width || 1, state.bundle?.height || 1);
    const lifecycle: SessionLifecycle = new SessionLifecycle({
      conn, state, doc, protocol, start, link,
      me: () => ({ name: presence.name, color: presence.color }),
      streamsLost: () => {
        playback.connectionLost();
        exporter.abandon();
      },
      onEvent: (event) => events.handle(event),
      bundleChanged: () => {
        timeline.adopt();
        showWholeFrame();
        regions.offer(state.bundle?.roi?.polygons.length ?? 0);
        timeline.set(Math.min(state.frame, state.frames - 1), false);
        panels.refreshMarks();
        renderer.request();
      },
      render: () => renderer.request(),
    });
    const events = new ServerEvents({
      doc, protocol, view, presence, panels,
      adopt: (info) => lifecycle.adopt(info),
      render: () => renderer.request(),
    });

    tools.bind();
    zoom.bind();
    timeline.bind();
    regions.bind();
    selection.bind();
    place.bind();
    presence.bind();
    byId<HTMLInputElement>("atlas-toggle").addEventListener("change", (e) => {
      playback.stop();
      state.atlas = (e.target as HTMLInputElement).checked;
      view.clear();
      showWholeFrame();
      renderer.request();
    });
    byId("play-btn").addEventListener("click", () => playback.toggle());
    byId("undo-btn").addEventListener("click", () => edits.undo());
    byId("redo-btn").addEventListener("click", () => edits.redo());
    exporter.bind(() => state.session);
    lifecycle.bindShare();
    bindKeys({ edits, playback, timeline, zoom, tools, regions, selection });
    exposeForTests({ state, doc, protocol, selection, renderer, view, conn });
    conn.start();
  }
}
