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

/**
 * The end of a resume, as the server says it (fired as 'recovered'); also
 * {recovered: false, pos: null, epoch: null} after a reconnect that had no
 * position to resume from (history off, or none given yet).
 */
export interface Recovery {
  /** false: events were missed (history trimmed, expired or lost, or nothing to resume from): reload your state. */
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
  /** The API token or a JWT client token; a function is called at every (re)connect and for every HTTP dispatch. */
  token?: string | (() => string | Promise<string>);
  /** auto: websocket, falling back to SSE for good when websockets fail before ever opening (fallbackAfter tries). */
  transport?: 'auto' | 'websocket' | 'sse';
  /**
   * Exponential backoff with jitter: the reconnect numbered attempt (from
   * 1, as 'reconnect' reports it) waits min(maxDelayMs, minDelayMs *
   * 2^(attempt-1)) less a random part of up to jitter of it; the count
   * starts over once a connection stayed open stableMs. Defaults 250,
   * 10000, 0.5, 5000.
   */
  reconnect?: { minDelayMs?: number; maxDelayMs?: number; jitter?: number; stableMs?: number };
  /** Default true: reconnect with since=<last pos seen>. */
  resume?: boolean;
  /** auto: websocket failures in a row (answered, but not upgraded) before SSE, before any websocket opened; default 3. */
  fallbackAfter?: number;
  /** SSE: quiet time before a subscription change restarts the stream; default 50 ms. */
  debounceMs?: number;
  /** SSE: nothing received (not even the server's keep-alive) for this long: reconnect; default 60000, 0: never. */
  idleTimeoutMs?: number;
  /** Websocket: a round trip (an empty unsubscribe) this often; default 30000, 0: none. */
  pingIntervalMs?: number;
  /** Websocket: a round trip not answered within this: the connection is dropped and reopened; default 10000. */
  pingTimeoutMs?: number;
  /** A dispatch not answered within this rejects with code "timeout" (the event may have been published); default 10000, 0: never. */
  dispatchTimeoutMs?: number;
  /** Before any connection opened: this many tries in a row with no answer at all (server down, or a page on another origin: taskbus sends no CORS headers) are fatal, code "network"; default 10, 0: never. */
  networkFatalAfter?: number;
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
  /** The client closed for good (a refused credential or origin, a wrong url: not_found, no answer: network). */
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
  /** For good: no reconnect after it; pending and later dispatches reject with code "closed"; probes and POSTs under way are aborted. */
  close(): void;
  /** Works before connect; resubscribed on reconnect; server errors (forbidden pattern) surface via 'error'. */
  subscribe(pattern: string, handler?: (ev: TaskbusEvent) => void): Subscription;
  /** The event id once the server confirmed it; rejects with an Error carrying .code (the server's, or disconnected, network, timeout, closed). */
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
