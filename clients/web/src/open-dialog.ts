// The open dialog: the server's bundles to open a session on (or, with none, the start page for a video of
// your own), with the error that brought the dialog up.
import type { Connection } from "./connection";
import { byId, el } from "./dom";
import type { StartFlow } from "./start";
import { messageOf } from "./status";

export async function showOpenDialog(conn: Connection, start: StartFlow, open: (bundle: string) => Promise<void>,
                                     error = ""): Promise<void> {
  const dialog = byId("open-dialog");
  dialog.hidden = false;
  byId("open-error").textContent = error;
  const list = byId("bundle-list");
  const response = await conn.request({ list_bundles: {} });
  const bundles = response.bundles?.bundles ?? [];
  list.replaceChildren(
    ...(bundles.length
      ? bundles.map((info) => {
          const button = el("button", { "data-testid": "open-bundle", "data-bundle": info.name }, [
            el("span", {}, [info.name]),
            el("span", { class: "muted" }, [`${info.width}×${info.height} · ${info.frames} frames`]),
          ]);
          button.addEventListener("click", () => {
            for (const b of list.querySelectorAll("button")) b.disabled = true;
            byId("open-error").textContent = "";
            button.dataset.opening = "true";
            open(info.name)
              .catch((e: unknown) => (byId("open-error").textContent = messageOf(e)))
              .finally(() => {
                for (const b of list.querySelectorAll("button")) b.disabled = false;
                delete button.dataset.opening;
              });
          });
          return el("li", {}, [button]);
        })
      : [el("li", { class: "empty" }, ["No bundles on this server yet."])]),
  );
  await start.offer(bundles.length === 0);
}

/** Hidden once a session is joined. */
export function hideOpenDialog(): void {
  byId("open-dialog").hidden = true;
}
