// One WebSocket to the vatlas server speaking msgpack-framed WsRequest / WsResponse, with automatic reconnect.
import { decode, encode } from "@msgpack/msgpack";
import type { WsRequest } from "./generated/messages";
import { ProtocolVersion } from "./generated/messages";
import { decodeWsResponse, type Error as WireError, type WsResponse } from "./generated/received";

export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

/** The close reason shown when the server went away on purpose (close code 1001, "going away"). */
export const SERVER_STOPPED = "server stopped";

/** A request body: WsRequest without the id (the connection assigns it). */
export type Call = Omit<WsRequest, "request_id">;

type StreamHandler = (response: WsResponse) => void;

/** The WebSocket beside the page, so the app also works behind a reverse proxy under a path prefix. */
export function socketUrl(): string {
  const url = new URL("ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  url.search = "";
  url.hash = "";
  return url.toString();
}

export class WireRequestError extends Error {
  constructor(readonly wire: WireError) {
    super(`${wire.code || "UNKNOWN"}: ${wire.message}`);
  }
}

export interface ConnectionOptions {
  url: string;
  token: string;
  onState: (state: ConnectionState, detail: string) => void;
  /** Called after every (re)connect once the server said welcome; resync happens here. */
  onOpen: (reconnected: boolean) => void;
  /** Responses that no request or stream is waiting for. */
  onUnsolicited: (response: WsResponse) => void;
}

export class Connection {
  private socket: WebSocket | null = null;
  private nextId = 1;
  private readonly streams = new Map<number, StreamHandler>();
  private readonly pending = new Map<number, { resolve: (r: WsResponse) => void; reject: (e: Error) => void }>();
  private attempts = 0;
  private everOpened = false;
  // set by a 1001 close, kept through the failed retries that follow, cleared by the next open
  private serverStopped = false;
  private stopped = false;
  private retryTimer: number | undefined;
  private outageUntil = 0;
  state: ConnectionState = "connecting";

  constructor(private readonly options: ConnectionOptions) {}

  start(): void {
    this.stopped = false;
    this.open();
  }

  /** Close for good (no reconnect). */
  stop(): void {
    this.stopped = true;
    window.clearTimeout(this.retryTimer);
    this.socket?.close();
    this.setState("closed", "closed");
  }

  /** Drop the socket as if the network failed for `outageMs`; then the reconnect logic takes over (tests). */
  dropForTest(outageMs = 0): void {
    this.outageUntil = performance.now() + outageMs;
    this.socket?.close();
  }

  /** Send a call and resolve with its first response (rejects on an `error` response). */
  request(call: Call, timeoutMs = 60_000): Promise<WsResponse> {
    return new Promise((resolve, reject) => {
      const id = this.send(call);
      if (id === null) {
        reject(new Error("not connected"));
        return;
      }
      // A lost answer must not wedge the caller (e.g. the one-render-in-flight loop).
      const timer = window.setTimeout(() => {
        if (this.pending.delete(id)) reject(new Error(`no answer within ${timeoutMs / 1000} s`));
      }, timeoutMs);
      this.pending.set(id, {
        resolve: (r) => {
          window.clearTimeout(timer);
          resolve(r);
        },
        reject: (e) => {
          window.clearTimeout(timer);
          reject(e);
        },
      });
    });
  }

  /** Send a call whose responses keep coming (session events, playback, export); returns the request id. */
  stream(call: Call, handler: StreamHandler): number | null {
    const id = this.send(call);
    if (id !== null) this.streams.set(id, handler);
    return id;
  }

  /** Send a further message of a request that is already open (an upload's next chunk); false when offline. */
  sendAs(id: number, call: Call): boolean {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return false;
    const message: WsRequest = { request_id: id, ...call };
    this.socket.send(encode(message, { ignoreUndefined: true }));
    return true;
  }

  /** Bytes handed to the socket and not yet sent (flow control for uploads). */
  get buffered(): number {
    return this.socket?.bufferedAmount ?? 0;
  }

  endStream(id: number): void {
    this.streams.delete(id);
  }

  /** Fire and forget; returns the request id or null when the socket is not open. */
  send(call: Call): number | null {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return null;
    const id = this.nextId++;
    const message: WsRequest = { request_id: id, ...call };
    this.socket.send(encode(message, { ignoreUndefined: true }));
    return id;
  }

  get isOpen(): boolean {
    return this.state === "open";
  }

  private open(): void {
    this.setState(this.everOpened ? "reconnecting" : "connecting", this.everOpened ? "reconnecting…" : "connecting…");
    let socket: WebSocket;
    try {
      socket = new WebSocket(this.options.url);
    } catch (error) {
      this.scheduleRetry(String(error));
      return;
    }
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    socket.onopen = () => void this.handshake(socket);
    socket.onmessage = (event: MessageEvent) => this.receive(event.data);
    socket.onclose = (event: CloseEvent) => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.failAll(`connection closed (${event.code})`);
      if (event.code === 1001) this.serverStopped = true;
      if (!this.stopped) this.scheduleRetry(this.serverStopped ? SERVER_STOPPED : event.reason || `closed (${event.code})`);
    };
  }

  private async handshake(socket: WebSocket): Promise<void> {
    try {
      await this.request({
        hello: { protocol_version: ProtocolVersion.PROTOCOL_VERSION_CURRENT, token: this.options.token, client: "vatlas-web/0.1" },
      });
    } catch (error) {
      // A refused hello (bad token, protocol mismatch) will not get better by retrying fast.
      this.setState("closed", error instanceof Error ? error.message : String(error));
      this.stopped = true;
      socket.close();
      return;
    }
    const reconnected = this.everOpened;
    this.everOpened = true;
    this.serverStopped = false;
    this.attempts = 0;
    this.setState("open", "connected");
    this.options.onOpen(reconnected);
  }

  private receive(data: unknown): void {
    if (!(data instanceof ArrayBuffer)) return;
    let response: WsResponse;
    try {
      // The one place messages arrive: from here on every proto3 default is filled in.
      response = decodeWsResponse(decode(new Uint8Array(data)));
    } catch {
      console.warn("vatlas: undecodable message dropped");
      return;
    }
    const id = response.request_id;
    const waiting = this.pending.get(id);
    if (waiting) {
      this.pending.delete(id);
      if (response.error) waiting.reject(new WireRequestError(response.error));
      else waiting.resolve(response);
      return;
    }
    const stream = this.streams.get(id);
    if (stream) {
      stream(response);
      return;
    }
    this.options.onUnsolicited(response);
  }

  private failAll(reason: string): void {
    for (const { reject } of this.pending.values()) reject(new Error(reason));
    this.pending.clear();
    this.streams.clear();
  }

  private scheduleRetry(reason: string): void {
    // Exponential backoff with jitter, capped at 5 s so a restarted server is found quickly.
    const backoff = Math.min(5000, 250 * 2 ** this.attempts) * (0.75 + Math.random() * 0.5);
    const delay = Math.max(backoff, this.outageUntil - performance.now());
    this.attempts++;
    this.setState(this.everOpened ? "reconnecting" : "connecting", `${reason}; retrying in ${(delay / 1000).toFixed(1)} s`);
    this.retryTimer = window.setTimeout(() => this.open(), delay);
  }

  private setState(state: ConnectionState, detail: string): void {
    this.state = state;
    this.options.onState(state, detail);
  }
}
