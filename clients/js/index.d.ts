// Types of @fanout-gateway/client (see index.js and README.md).

/** An event in the tutorial's envelope, with the gateway's cursor. */
export interface GatewayEvent<D = unknown> {
  event_type: string;
  timestamp: string;
  topic: string;
  /** The event's position in its customer's stream (fanout-gateway only). */
  cursor?: string;
  data: D;
}

/** Events between `since` and `until` may have been lost upstream: reload state. */
export interface Gap {
  type: 'gap';
  reason: 'upstream_reconnect' | 'owner_failover' | 'owner_handoff' | 'cluster_degraded' | string;
  since: string;
  until: string;
  cursor?: string;
}

/** The answer to a subscription that carried the last cursor. */
export interface Resumed {
  type: 'resumed';
  /** `false`: the gateway cannot prove nothing was missed; reload state. */
  recovered: boolean;
  /** The stream's latest position at the seam; `null` before its first event. */
  cursor?: string | null;
  /** Events replayed after this answer (when recovered). */
  replayed?: number;
}

/** A request the gateway refused. */
export interface ErrorFrame {
  type: 'error';
  code: string;
  message: string;
  topics?: string[];
}

export type CloseReason =
  | 'going_away'
  | 'token_expired'
  | 'policy'
  | 'restarting'
  | 'too_slow'
  | 'protocol'
  | 'server_error'
  | 'closed'
  | 'network';

export interface CloseMeaning {
  reason: CloseReason;
  /** What the client does: fetch a new token and reconnect at once, reconnect at once,
   * reconnect after a back-off delay, or nothing (the app closed it). */
  retry: 'refresh' | 'now' | 'backoff' | 'never';
}

export interface Close {
  code: number;
  reason: string;
  meaning: CloseMeaning;
}

export type State = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

/** Why a token is asked for: the first connection, a reconnect, or an expired token. */
export type TokenReason = 'initial' | 'reconnect' | 'expired';

export interface BackoffOptions {
  /** The first back-off ceiling. Default 500. */
  baseDelayMs?: number;
  /** The largest back-off ceiling. Default 30000. */
  maxDelayMs?: number;
}

export interface Options extends BackoffOptions {
  /** The gateway's WebSocket URL, e.g. `wss://gateway.example/v1.0/ws`. */
  url: string;
  /** A token (JWT or access key), or a function that answers a fresh one. */
  token?: string | ((context: { reason: TokenReason }) => string | Promise<string>);
  /** Topics to subscribe to from the start. */
  topics?: string[];
  /** A cursor to resume from (one saved from an earlier page load). */
  cursor?: string | null;
  /** A WebSocket constructor; the platform's by default. */
  WebSocket?: unknown;
  /** A connection that stayed open this long resets the back-off. Default 10000. */
  stableAfterMs?: number;
  /** Topics per subscribe message at most (the gateway's limit). Default 256. */
  maxTopicsPerMessage?: number;
  /** For tests: the random source of the jitter, the timers and the clock. */
  random?: () => number;
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (id: unknown) => void;
  now?: () => number;
}

export interface Handlers {
  event: GatewayEvent;
  gap: Gap;
  resumed: Resumed;
  lost: Resumed;
  error: ErrorFrame | { type: 'token' | 'connect' | 'send' | 'invalid_frame'; error?: unknown; data?: unknown };
  state: State;
  close: Close;
  reconnecting: { delay: number; attempt: number };
  handler_error: { type: string; error: unknown };
}

export declare const DEFAULTS: Readonly<Required<BackoffOptions> & { stableAfterMs: number; maxTopicsPerMessage: number }>;

export declare function backoffDelay(attempt: number, options?: BackoffOptions, random?: () => number): number;

export declare function closeMeaning(code: number, reason?: string): CloseMeaning;

export declare function withToken(url: string, token: string): string;

export declare class FanoutClient {
  constructor(options: Options);
  readonly state: State;
  /** The cursor of the last event or gap handled. */
  readonly cursor: string | null;
  readonly topics: Set<string>;
  connect(): void;
  /** Drops the connection and opens a new one at once, resuming from the last cursor. */
  reconnect(): void;
  close(): void;
  subscribe(topics: string[]): void;
  unsubscribe(topics: string[]): void;
  on<K extends keyof Handlers>(type: K, handler: (value: Handlers[K]) => void): () => void;
  /** Events of one `event_type`, e.g. `call_hangup`. */
  on(type: string, handler: (event: GatewayEvent) => void): () => void;
  off(type: string, handler: (value: never) => void): void;
}
