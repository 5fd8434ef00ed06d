// @fanout-gateway/client: a WebSocket client for fanout-gateway (protocol.md §1), usable
// against VoIPBIN's own endpoint too. No runtime dependencies: it uses the platform's
// WebSocket (browsers, Node 22+) or one passed in (the `ws` package on older Node).
//
// What it adds to a bare WebSocket:
// - connect with a token, or a function that fetches a fresh one (called again on every
//   reconnect, and told why when the old one expired);
// - subscribe and unsubscribe at any time; the set is re-sent after every reconnect;
// - events delivered to handlers by `event_type` (and to `event` for all of them);
// - reconnects with exponential back-off and full jitter, at once when the server drains;
// - resume: after a reconnect the subscription carries the last cursor handled, and the
//   app hears `lost` whenever the gateway cannot prove nothing was missed (`recovered:
//   false`), and `gap` when events were lost upstream: both mean "reload state through the
//   REST API";
// - close codes mapped to what they mean and what the client does about them.

/** Defaults of the options. */
export const DEFAULTS = Object.freeze({
  baseDelayMs: 500,
  maxDelayMs: 30_000,
  stableAfterMs: 10_000,
  maxTopicsPerMessage: 256,
});

/**
 * The delay before reconnect attempt `attempt` (0-based): drawn uniformly from
 * [0, min(maxDelayMs, baseDelayMs * 2^attempt)) ("full jitter").
 */
export function backoffDelay(attempt, options = DEFAULTS, random = Math.random) {
  const base = options.baseDelayMs ?? DEFAULTS.baseDelayMs;
  const cap = options.maxDelayMs ?? DEFAULTS.maxDelayMs;
  const ceiling = Math.min(cap, base * 2 ** Math.min(Math.max(attempt, 0), 30));
  return Math.floor(Math.min(Math.max(random(), 0), 0.999999) * ceiling);
}

/**
 * What a close code means and what the client does next:
 * - `refresh`: the token expired; fetch a new one and reconnect at once;
 * - `now`: the server is draining or restarting; reconnect at once (the load balancer
 *   sends the new connection elsewhere);
 * - `backoff`: reconnect after a back-off delay;
 * - `never`: the app closed the client.
 */
export function closeMeaning(code, reason = '') {
  switch (code) {
    case 1001:
      return { reason: 'going_away', retry: 'now' };
    case 1008:
      return reason === 'token expired'
        ? { reason: 'token_expired', retry: 'refresh' }
        : { reason: 'policy', retry: 'backoff' };
    case 1012:
      return { reason: 'restarting', retry: 'now' };
    case 1013:
      return { reason: 'too_slow', retry: 'backoff' };
    case 1002:
    case 1003:
    case 1007:
    case 1009:
      return { reason: 'protocol', retry: 'backoff' };
    case 1011:
      return { reason: 'server_error', retry: 'backoff' };
    case 1000:
      return { reason: 'closed', retry: 'backoff' };
    default:
      return { reason: 'network', retry: 'backoff' };
  }
}

/** A client of one gateway URL. */
export class FanoutClient {
  /**
   * @param {object} options see index.d.ts
   */
  constructor(options) {
    if (!options || typeof options.url !== 'string') {
      throw new TypeError('options.url is required');
    }
    this.options = { ...DEFAULTS, ...options };
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.WebSocket !== 'function') {
      throw new TypeError('no WebSocket implementation: pass options.WebSocket');
    }
    this.random = options.random ?? Math.random;
    this.setTimeout = options.setTimeout ?? ((fn, ms) => globalThis.setTimeout(fn, ms));
    this.clearTimeout = options.clearTimeout ?? ((id) => globalThis.clearTimeout(id));
    this.now = options.now ?? (() => Date.now());
    /** The topics subscribed to, in the order first asked for. */
    this.topics = new Set(options.topics ?? []);
    /** The cursor of the last event or gap handled; sent back on resume. */
    this.cursor = options.cursor ?? null;
    /** `idle`, `connecting`, `open`, `reconnecting` or `closed`. */
    this.state = 'idle';
    this.attempt = 0;
    this.handlers = new Map();
    this.socket = null;
    this.timer = null;
    this.openedAt = null;
    this.tokenReason = 'initial';
    /** Whether the last subscriptions sent carried `since` and are not answered yet. */
    this.resuming = false;
    /** Replayed events still to come, and the cursor the replay ends the stream at. */
    this.replayLeft = 0;
    this.replayEnd = null;
  }

  /** Calls `handler` for `type`: an `event_type`, or `event`, `gap`, `resumed`, `lost`,
   * `error`, `state`, `close`. Answers a function that removes it. */
  on(type, handler) {
    if (!this.handlers.has(type)) this.handlers.set(type, new Set());
    this.handlers.get(type).add(handler);
    return () => this.off(type, handler);
  }

  /** Removes a handler. */
  off(type, handler) {
    this.handlers.get(type)?.delete(handler);
  }

  emit(type, value) {
    for (const handler of [...(this.handlers.get(type) ?? [])]) {
      try {
        handler(value);
      } catch (error) {
        // One handler's bug must not stop the others or the client.
        if (type !== 'handler_error') this.emit('handler_error', { type, error });
      }
    }
  }

  setState(state) {
    if (this.state !== state) {
      this.state = state;
      this.emit('state', state);
    }
  }

  /** Opens the connection (again, after `close`). */
  connect() {
    if (this.state === 'connecting' || this.state === 'open') return;
    this.closedByApp = false;
    this.open();
  }

  async open() {
    // A later open (reconnect() while a token is being fetched) supersedes this one.
    this.opening = (this.opening ?? 0) + 1;
    const opening = this.opening;
    this.setState(this.attempt === 0 && this.state !== 'reconnecting' ? 'connecting' : 'reconnecting');
    let token;
    try {
      token = typeof this.options.token === 'function'
        ? await this.options.token({ reason: this.tokenReason })
        : this.options.token;
    } catch (error) {
      if (opening !== this.opening) return;
      this.emit('error', { type: 'token', error });
      this.scheduleReconnect({ retry: 'backoff' });
      return;
    }
    if (this.closedByApp || opening !== this.opening) return;
    const url = token ? withToken(this.options.url, token) : this.options.url;
    let socket;
    try {
      socket = new this.WebSocket(url);
    } catch (error) {
      this.emit('error', { type: 'connect', error });
      this.scheduleReconnect({ retry: 'backoff' });
      return;
    }
    this.socket = socket;
    socket.onopen = () => {
      if (this.socket !== socket) return;
      this.openedAt = this.now();
      this.tokenReason = 'reconnect';
      this.setState('open');
      this.sendSubscriptions('subscribe', [...this.topics], true);
    };
    socket.onmessage = (message) => {
      if (this.socket === socket) this.receive(message.data);
    };
    socket.onerror = () => {
      // A close follows every error; that is where the client acts.
    };
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.closed(event.code, event.reason ?? '');
    };
  }

  /** Adds topics; sent at once when open, and after every reconnect. */
  subscribe(topics) {
    const added = topics.filter((t) => !this.topics.has(t));
    for (const topic of added) this.topics.add(topic);
    if (added.length > 0 && this.state === 'open') this.sendSubscriptions('subscribe', added, false);
  }

  /** Removes topics. */
  unsubscribe(topics) {
    const removed = topics.filter((t) => this.topics.delete(t));
    if (removed.length > 0 && this.state === 'open') this.sendSubscriptions('unsubscribe', removed, false);
  }

  sendSubscriptions(type, topics, resume) {
    const size = this.options.maxTopicsPerMessage;
    this.resuming = Boolean(resume && this.cursor);
    this.replayLeft = 0;
    this.replayEnd = null;
    for (let i = 0; i < topics.length; i += size) {
      const message = { type, topics: topics.slice(i, i + size) };
      if (resume && this.cursor) message.since = this.cursor;
      this.send(message);
    }
  }

  send(message) {
    try {
      this.socket?.send(JSON.stringify(message));
    } catch (error) {
      this.emit('error', { type: 'send', error });
    }
  }

  receive(data) {
    let message;
    try {
      message = JSON.parse(typeof data === 'string' ? data : String(data));
    } catch {
      this.emit('error', { type: 'invalid_frame', data });
      return;
    }
    if (message === null || typeof message !== 'object') return;
    if (typeof message.event_type === 'string') {
      this.emit('event', message);
      this.emit(message.event_type, message);
      if (typeof message.cursor === 'string') this.cursor = message.cursor;
      if (this.replayLeft > 0) {
        this.replayLeft -= 1;
        // The replay is handled: the seam's cursor covers whatever else the stream had.
        if (this.replayLeft === 0 && this.replayEnd) this.cursor = this.replayEnd;
      }
      return;
    }
    switch (message.type) {
      case 'gap':
        this.emit('gap', message);
        // Handled (the app reloads its state): a later resume starts after the gap.
        if (typeof message.cursor === 'string') this.cursor = message.cursor;
        break;
      case 'resumed':
        if (message.recovered === true) {
          // The replay follows; each event moves the cursor as it is handled, and once all
          // `replayed` of them are, the cursor is the seam's (the stream's latest then).
          const left = Number.isInteger(message.replayed) ? message.replayed : -1;
          const end = typeof message.cursor === 'string' ? message.cursor : null;
          if (left === 0 && end) this.cursor = end;
          this.replayLeft = left > 0 ? left : 0;
          this.replayEnd = left > 0 ? end : null;
          this.resuming = false;
          this.emit('resumed', message);
        } else {
          // Not recovered: a `null` cursor (a stream with no event yet) keeps the old one, so
          // the next resume is told `lost` again rather than nothing.
          if (typeof message.cursor === 'string') this.cursor = message.cursor;
          this.resuming = false;
          this.emit('resumed', message);
          this.emit('lost', message);
        }
        break;
      case 'error':
        this.emit('error', message);
        if (message.code === 'invalid_cursor' && this.resuming) {
          // The gateway took none of the resume: subscribe afresh, and say what may be lost.
          this.resuming = false;
          this.cursor = null;
          this.sendSubscriptions('subscribe', [...this.topics], false);
          this.emit('lost', { type: 'resumed', recovered: false, cursor: null, replayed: 0 });
        }
        break;
      default:
        break;
    }
  }

  closed(code, reason) {
    const meaning = this.closedByApp ? { reason: 'closed', retry: 'never' } : closeMeaning(code, reason);
    if (this.openedAt !== null && this.now() - this.openedAt >= this.options.stableAfterMs) {
      this.attempt = 0;
    }
    this.openedAt = null;
    this.emit('close', { code, reason, meaning });
    this.scheduleReconnect(meaning);
  }

  scheduleReconnect(meaning) {
    if (meaning.retry === 'never' || this.closedByApp) {
      this.setState('closed');
      return;
    }
    let delay;
    if (meaning.retry === 'refresh') {
      this.tokenReason = 'expired';
      delay = 0;
    } else if (meaning.retry === 'now') {
      // At once, but spread a little so a drained node's clients do not arrive together.
      delay = backoffDelay(0, this.options, this.random);
    } else {
      delay = backoffDelay(this.attempt, this.options, this.random);
      this.attempt += 1;
    }
    this.setState('reconnecting');
    this.emit('reconnecting', { delay, attempt: this.attempt });
    this.timer = this.setTimeout(() => {
      this.timer = null;
      if (!this.closedByApp) this.open();
    }, delay);
  }

  /** Drops the connection and opens a new one at once, resuming from the last cursor: what
   * a network blip does (the demo page's button). */
  reconnect() {
    const socket = this.socket;
    // Its close is not handled as a failure: this socket is no longer the client's.
    this.socket = null;
    if (socket) {
      try {
        socket.close(1000, 'reconnecting');
      } catch {
        // Already closing.
      }
    }
    if (this.timer !== null) {
      this.clearTimeout(this.timer);
      this.timer = null;
    }
    this.closedByApp = false;
    this.open();
  }

  /** Closes the connection for good (until `connect` is called again). */
  close() {
    this.closedByApp = true;
    if (this.timer !== null) {
      this.clearTimeout(this.timer);
      this.timer = null;
    }
    const socket = this.socket;
    if (socket) {
      try {
        socket.close(1000, 'bye');
      } catch {
        // Already closing.
      }
    } else {
      this.setState('closed');
    }
  }
}

/** `url` with `token` as its `token` query parameter. */
export function withToken(url, token) {
  const separator = url.includes('?') ? '&' : '?';
  return `${url}${separator}token=${encodeURIComponent(token)}`;
}
