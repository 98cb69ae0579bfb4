// index.d.ts - the TypeScript view of taskbus-client (src/index.js).

/** An event as taskbus sends it: its JSON envelope. */
export interface TaskbusEvent {
  id: string;
  name: string;
  data: unknown;
  /** Its position in the history (absent with history off). */
  pos?: string;
  [k: string]: unknown;
}

/** The end of a resume, as the server says it (fired as 'recovered'). */
export interface Recovery {
  /** false: events were missed (history trimmed, expired or lost): reload your state. */
  recovered: boolean;
  pos: string | null;
  epoch: string | null;
}

/** A reconnection scheduled (fired as 'reconnect'). */
export interface Reconnect {
  /** 1 for the first retry after a drop, growing until a connection stays up. */
  attempt: number;
  delayMs: number;
}

export interface ClientOptions {
  /** Base http(s) URL of taskbus; default: globalThis.location.origin. */
  url?: string;
  /** The API token or a JWT client token; a function is called at every (re)connect. */
  token?: string | (() => string | Promise<string>);
  /** auto: websocket, falling back to SSE for good when websockets fail before ever opening (fallbackAfter tries). */
  transport?: 'auto' | 'websocket' | 'sse';
  /**
   * Exponential backoff with jitter: attempt n waits min(maxDelayMs,
   * minDelayMs * 2^n) less up to jitter of it; reset once a connection
   * stayed open stableMs. Defaults 250, 10000, 0.5, 5000.
   */
  reconnect?: { minDelayMs?: number; maxDelayMs?: number; jitter?: number; stableMs?: number };
  /** Default true: reconnect with since=<last pos seen>. */
  resume?: boolean;
  /** auto: websocket failures (answered by the server, but not upgraded) before SSE; default 3. */
  fallbackAfter?: number;
  /** SSE: quiet time before a subscription change restarts the stream; default 50 ms. */
  debounceMs?: number;
  /** SSE: nothing received (not even the server's keep-alive) for this long: reconnect; default 60000, 0: never. */
  idleTimeoutMs?: number;
  /** Injectable (Node 20 has none: the ws package); default globalThis.WebSocket; null: none (auto goes to SSE at once). */
  WebSocket?: any;
  /** Accepted for compatibility, unused: SSE is read with fetch (an EventSource cannot listen to every event name). */
  EventSource?: any;
  /** Injectable; default globalThis.fetch. */
  fetch?: any;
}

export interface Subscription {
  readonly pattern: string;
  unsubscribe(): void;
}

export type ClientState = 'idle' | 'connecting' | 'open' | 'closed';

/** Errors the client reports: .code is the server's error code, or one of the client's own. */
export interface TaskbusError extends Error {
  code: string;
  /** The HTTP status of a refused request or upgrade. */
  status?: number;
  /** The pattern refused (forbidden, bad_pattern). */
  pattern?: string;
  /** The client closed for good (a refused credential or origin). */
  fatal?: boolean;
}

export class TaskbusClient {
  constructor(opts?: ClientOptions);
  readonly state: ClientState;
  readonly transport: 'websocket' | 'sse' | null;
  readonly lastPos: string | null;
  /** The patterns the connection holds or will hold, each once. */
  readonly patterns: string[];
  /** Resolves on the first open (subscriptions in place on the server); rejects on a fatal error (401/403: no retry) or close(). */
  connect(): Promise<void>;
  /** For good: no reconnect after it; pending dispatches reject with code "closed". */
  close(): void;
  /** Works before connect; resubscribed on reconnect; server errors (forbidden pattern) surface via 'error'. */
  subscribe(pattern: string, handler?: (ev: TaskbusEvent) => void): Subscription;
  /** The event id once the server confirmed it; rejects with an Error carrying .code. */
  dispatch(name: string, data?: unknown): Promise<string>;
  on(type: 'event', fn: (ev: TaskbusEvent) => void): () => void;
  on(type: 'state', fn: (state: ClientState) => void): () => void;
  on(type: 'recovered', fn: (r: Recovery) => void): () => void;
  on(type: 'error', fn: (err: TaskbusError) => void): () => void;
  on(type: 'reconnect', fn: (r: Reconnect) => void): () => void;
  on(type: 'event' | 'state' | 'recovered' | 'error' | 'reconnect', fn: (arg: any) => void): () => void;
}

/** Whether an event name matches a pattern ("*", "<param>", a last ">"). */
export function matchPattern(pattern: string, name: string): boolean;

export default TaskbusClient;
