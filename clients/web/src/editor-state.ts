// What the editor's modules share: the session and bundle open, the frame shown, whether the atlas is shown,
// and when the user last scrubbed, drew, panned or zoomed (renders stay quick drafts while they do).
import type { BundleInfo, SessionInfo } from "./generated/received";

/** How long after the last interaction the user counts as paused (renders are then refined). */
export const IDLE_MS = 250;

export class EditorState {
  session: SessionInfo | null = null;
  bundle: BundleInfo | null = null;
  frame = 0;
  atlas = false;
  private lastActivity = 0;

  /** The clip's frame count (1 until a bundle is known). */
  get frames(): number {
    return this.bundle?.frames || 1;
  }

  /** The user interacted just now. */
  touch(): void {
    this.lastActivity = performance.now();
  }

  /** Whether the user is still interacting (no pause of IDLE_MS yet). */
  interactive(): boolean {
    return performance.now() - this.lastActivity < IDLE_MS;
  }
}
