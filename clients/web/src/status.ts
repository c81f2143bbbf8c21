// What the page tells the user about the socket (the connection indicator) and about failures (the toast).
import { SERVER_STOPPED, type ConnectionState } from "./connection";
import { byId } from "./dom";

let toastTimer: number | undefined;

export function showConnection(state: ConnectionState, detail: string): void {
  const box = byId("conn-status");
  box.dataset.state = state;
  box.title = detail;
  const stopped = detail.startsWith(SERVER_STOPPED);
  byId("conn-text").textContent =
    state === "open" ? "connected" : state === "closed" ? "disconnected"
      : stopped ? "server stopped, reconnecting…" : state === "reconnecting" ? "reconnecting…" : "connecting…";
}

/** A message for a few seconds; errors also go to the console, where tests and bug reports find them. */
export function toast(message: string, isError = true): void {
  const box = byId("toast");
  box.textContent = message;
  box.dataset.kind = isError ? "error" : "info";
  box.hidden = false;
  window.clearTimeout(toastTimer);
  toastTimer = window.setTimeout(() => (box.hidden = true), 4000);
  if (isError) console.warn(`vatlas: ${message}`);
}

export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
