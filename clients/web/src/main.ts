// Entry point: start the editor once the DOM is there.
import { App } from "./app";

function start(): void {
  try {
    new App();
  } catch (error) {
    document.body.textContent = `vatlas could not start: ${error instanceof Error ? error.message : String(error)}`;
  }
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();
