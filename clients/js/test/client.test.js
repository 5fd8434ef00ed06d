// The client against a real WebSocket server on loopback (the `ws` package) that plays
// the gateway's side of protocol.md §1: subscriptions, events, gaps, resume answers and
// close codes.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import WebSocket, { WebSocketServer } from 'ws';

import { FanoutClient, backoffDelay, closeMeaning, withToken } from '../index.js';

/** A fake gateway: every connection with its URL and the messages it received. */
async function fakeGateway() {
  const server = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await once(server, 'listening');
  const connections = [];
  const waiting = [];
  server.on('connection', (socket, request) => {
    const connection = { socket, url: request.url, messages: [], waiting: [] };
    socket.on('message', (data) => {
      connection.messages.push(JSON.parse(String(data)));
      for (const w of connection.waiting.splice(0)) w();
    });
    connections.push(connection);
    for (const w of waiting.splice(0)) w();
  });
  return {
    url: `ws://127.0.0.1:${server.address().port}/v1.0/ws`,
    connections,
    /** The `n`th connection (0-based), once it exists. */
    async connection(n) {
      while (connections.length <= n) await new Promise((resolve) => waiting.push(resolve));
      return connections[n];
    },
    /** The `n`th message of a connection, once it arrived. */
    async message(connection, n) {
      while (connection.messages.length <= n) {
        await new Promise((resolve) => connection.waiting.push(resolve));
      }
      return connection.messages[n];
    },
    close: () => new Promise((resolve) => {
      for (const c of connections) c.socket.terminate();
      server.close(resolve);
    }),
  };
}

/** Resolves with the next value `client` emits as `type`. */
function next(client, type) {
  return new Promise((resolve) => {
    const off = client.on(type, (value) => {
      off();
      resolve(value);
    });
  });
}

const C = '12345678-1234-1234-1234-123456789012';
const CALLS = `customer_id:${C}:call:*`;
const MESSAGES = `customer_id:${C}:message:*`;

function event(type, id, cursor) {
  return JSON.stringify({
    event_type: type,
    timestamp: '2026-01-20T10:30:00.000000Z',
    topic: `customer_id:${C}:call:${id}`,
    cursor,
    data: { id },
  });
}

function client(gateway, options = {}) {
  return new FanoutClient({
    url: gateway.url,
    token: 'tok en',
    topics: [CALLS],
    WebSocket,
    random: () => 0, // no jitter: reconnects come at once
    ...options,
  });
}

test('connects with the token, subscribes, and hands events out by event_type', async () => {
  const gateway = await fakeGateway();
  const c = client(gateway);
  const states = [];
  c.on('state', (s) => states.push(s));
  c.connect();
  const conn = await gateway.connection(0);
  assert.equal(conn.url, '/v1.0/ws?token=tok%20en');
  assert.deepEqual(await gateway.message(conn, 0), { type: 'subscribe', topics: [CALLS] });
  const hangups = [];
  c.on('call_hangup', (e) => hangups.push(e.data.id));
  const all = next(c, 'event');
  conn.socket.send(event('call_hangup', 'k1', 'e-1'));
  assert.equal((await all).data.id, 'k1');
  assert.deepEqual(hangups, ['k1']);
  assert.equal(c.cursor, 'e-1');
  // Later subscriptions go at once; unsubscribing too.
  c.subscribe([MESSAGES, CALLS]);
  assert.deepEqual(await gateway.message(conn, 1), { type: 'subscribe', topics: [MESSAGES] });
  c.unsubscribe([CALLS]);
  assert.deepEqual(await gateway.message(conn, 2), { type: 'unsubscribe', topics: [CALLS] });
  // Refusals are errors, not events.
  const refused = next(c, 'error');
  let events = 0;
  c.on('event', () => events++);
  conn.socket.send(JSON.stringify({ type: 'error', code: 'forbidden_topic', message: 'no', topics: ['x'] }));
  assert.equal((await refused).code, 'forbidden_topic');
  assert.equal(events, 0);
  c.close();
  await next(c, 'state');
  assert.deepEqual(states, ['connecting', 'open', 'closed']);
  await gateway.close();
});

test('after a drop it reconnects, resubscribes everything and resumes from the last cursor', async () => {
  const gateway = await fakeGateway();
  const c = client(gateway, { topics: [CALLS, MESSAGES] });
  c.connect();
  const first = await gateway.connection(0);
  await gateway.message(first, 0);
  first.socket.send(event('call_ringing', 'k1', 'e-7'));
  await next(c, 'event');
  const closed = next(c, 'close');
  first.socket.close(1013, 'too slow to keep up');
  assert.deepEqual((await closed).meaning, { reason: 'too_slow', retry: 'backoff' });
  const second = await gateway.connection(1);
  assert.deepEqual(await gateway.message(second, 0), {
    type: 'subscribe',
    topics: [CALLS, MESSAGES],
    since: 'e-7',
  });
  // Recovered: the replay follows, nothing to reload.
  let lost = 0;
  c.on('lost', () => lost++);
  const resumed = next(c, 'resumed');
  second.socket.send(JSON.stringify({ type: 'resumed', recovered: true, cursor: 'e-9' }));
  assert.equal((await resumed).recovered, true);
  assert.equal(c.cursor, 'e-7', 'a recovered resume does not skip the replay');
  second.socket.send(event('call_ringing', 'k2', 'e-8'));
  await next(c, 'event');
  assert.equal(c.cursor, 'e-8');
  assert.equal(lost, 0);
  // Not recovered on the next drop: the app is told to reload, and the cursor moves on.
  second.socket.terminate();
  const third = await gateway.connection(2);
  assert.equal((await gateway.message(third, 0)).since, 'e-8');
  const reload = next(c, 'lost');
  third.socket.send(JSON.stringify({ type: 'resumed', recovered: false, cursor: 'f-0' }));
  assert.equal((await reload).recovered, false);
  assert.equal(c.cursor, 'f-0');
  c.close();
  await gateway.close();
});

test('reconnect drops the socket and resumes at once from the last cursor', async () => {
  const gateway = await fakeGateway();
  const c = client(gateway);
  let closes = 0;
  c.on('close', () => closes++);
  c.connect();
  const first = await gateway.connection(0);
  await gateway.message(first, 0);
  first.socket.send(event('call_ringing', 'k1', 'e-3'));
  await next(c, 'event');
  const firstClosed = once(first.socket, 'close');
  c.reconnect();
  const second = await gateway.connection(1);
  assert.deepEqual(await gateway.message(second, 0), { type: 'subscribe', topics: [CALLS], since: 'e-3' });
  await firstClosed;
  assert.equal(closes, 0, 'the old socket closing is not a failure');
  assert.equal(c.state, 'open');
  c.close();
  await gateway.close();
});

test('after a recovered replay the cursor is the seam; a refused resume subscribes afresh', async () => {
  const gateway = await fakeGateway();
  const c = client(gateway, { cursor: 'e-1' });
  c.connect();
  const first = await gateway.connection(0);
  assert.equal((await gateway.message(first, 0)).since, 'e-1');
  first.socket.send(JSON.stringify({ type: 'resumed', recovered: true, cursor: 'e-9', replayed: 2 }));
  await next(c, 'resumed');
  first.socket.send(event('call_ringing', 'k2', 'e-2'));
  await next(c, 'event');
  assert.equal(c.cursor, 'e-2', 'mid-replay: the last event handled');
  first.socket.send(event('call_ringing', 'k5', 'e-5'));
  await next(c, 'event');
  assert.equal(c.cursor, 'e-9', 'the replay is over: the stream was at e-9 then');
  first.socket.send(event('call_ringing', 'k10', 'e-a'));
  await next(c, 'event');
  assert.equal(c.cursor, 'e-a');
  // Nothing to replay: the seam at once.
  first.socket.terminate();
  const second = await gateway.connection(1);
  assert.equal((await gateway.message(second, 0)).since, 'e-a');
  second.socket.send(JSON.stringify({ type: 'resumed', recovered: true, cursor: 'e-c', replayed: 0 }));
  await next(c, 'resumed');
  assert.equal(c.cursor, 'e-c');
  // A resume the gateway refuses: subscribed again without `since`, and told to reload.
  second.socket.terminate();
  const third = await gateway.connection(2);
  assert.equal((await gateway.message(third, 0)).since, 'e-c');
  const lost = next(c, 'lost');
  third.socket.send(JSON.stringify({ type: 'error', code: 'invalid_cursor', message: 'no' }));
  assert.equal((await lost).recovered, false);
  assert.deepEqual(await gateway.message(third, 1), { type: 'subscribe', topics: [CALLS] });
  assert.equal(c.cursor, null);
  c.close();
  await gateway.close();
});

test('reconnect while a token is being fetched opens one connection, not two', async () => {
  const gateway = await fakeGateway();
  let release;
  const slow = new Promise((resolve) => { release = resolve; });
  let asked = 0;
  const c = client(gateway, {
    token: async () => {
      asked += 1;
      if (asked === 1) await slow;
      return `t${asked}`;
    },
  });
  c.connect();
  c.reconnect();
  const only = await gateway.connection(0);
  assert.ok(only.url.includes('token=t2'), only.url);
  release();
  await new Promise((resolve) => setTimeout(resolve, 100));
  assert.equal(gateway.connections.length, 1);
  c.close();
  await gateway.close();
});

test('a gap is surfaced and a later resume starts after it', async () => {
  const gateway = await fakeGateway();
  const c = client(gateway);
  c.connect();
  const first = await gateway.connection(0);
  await gateway.message(first, 0);
  first.socket.send(event('call_ringing', 'k1', 'e-1'));
  await next(c, 'event');
  const gap = next(c, 'gap');
  first.socket.send(JSON.stringify({
    type: 'gap', reason: 'upstream_reconnect', since: '2026-01-20T10:30:00.000000Z',
    until: '2026-01-20T10:30:05.000000Z', cursor: 'e-2',
  }));
  assert.equal((await gap).reason, 'upstream_reconnect');
  assert.equal(c.cursor, 'e-2');
  first.socket.close(1001, 'server shutting down');
  const second = await gateway.connection(1);
  assert.equal((await gateway.message(second, 0)).since, 'e-2');
  c.close();
  await gateway.close();
});

test('an expired token is refreshed and a drain reconnects at once', async () => {
  const gateway = await fakeGateway();
  const asked = [];
  const c = client(gateway, {
    token: async ({ reason }) => {
      asked.push(reason);
      return `t${asked.length}`;
    },
    random: () => 0.5,
    baseDelayMs: 200,
    maxDelayMs: 60_000,
  });
  const delays = [];
  c.on('reconnecting', ({ delay }) => delays.push(delay));
  c.connect();
  const first = await gateway.connection(0);
  assert.equal(first.url, '/v1.0/ws?token=t1');
  first.socket.close(1008, 'token expired');
  const second = await gateway.connection(1);
  assert.equal(second.url, '/v1.0/ws?token=t2');
  second.socket.close(1001, 'server shutting down');
  const third = await gateway.connection(2);
  assert.equal(third.url, '/v1.0/ws?token=t3');
  assert.deepEqual(asked, ['initial', 'expired', 'reconnect']);
  // Refresh: no delay; drain: at most the first ceiling (jittered).
  assert.deepEqual(delays, [0, 100]);
  c.close();
  await gateway.close();
});

test('repeated failures back off exponentially with full jitter, up to the cap', () => {
  const options = { baseDelayMs: 100, maxDelayMs: 1000 };
  const ceilings = [0, 1, 2, 3, 4, 5, 40].map((n) => backoffDelay(n, options, () => 0.9999999));
  assert.deepEqual(ceilings, [99, 199, 399, 799, 999, 999, 999]);
  assert.equal(backoffDelay(3, options, () => 0), 0);
  assert.equal(backoffDelay(3, options, () => 0.5), 400);
  for (let i = 0; i < 100; i++) {
    const d = backoffDelay(2, options);
    assert.ok(d >= 0 && d < 400, `${d}`);
  }
});

test('consecutive failed attempts grow the delay; a stable connection resets it', async () => {
  const gateway = await fakeGateway();
  let clock = 0;
  const c = client(gateway, {
    random: () => 0.9999,
    baseDelayMs: 10,
    maxDelayMs: 100,
    stableAfterMs: 1000,
    now: () => clock,
  });
  const delays = [];
  c.on('reconnecting', ({ delay }) => delays.push(delay));
  c.connect();
  for (let n = 0; n < 4; n++) {
    const conn = await gateway.connection(n);
    await gateway.message(conn, 0);
    conn.socket.close(1011, 'internal error');
  }
  const fifth = await gateway.connection(4);
  await gateway.message(fifth, 0);
  clock += 5000; // it stayed up
  fifth.socket.close(1011, 'internal error');
  await gateway.connection(5);
  assert.deepEqual(delays, [9, 19, 39, 79, 9]);
  c.close();
  await gateway.close();
});

test('many topics are sent in messages of at most the gateway limit', async () => {
  const gateway = await fakeGateway();
  const topics = Array.from({ length: 600 }, (_, i) => `customer_id:${C}:call:k${i}`);
  const c = client(gateway, { topics });
  c.connect();
  const conn = await gateway.connection(0);
  const sizes = [];
  for (let i = 0; i < 3; i++) sizes.push((await gateway.message(conn, i)).topics.length);
  assert.deepEqual(sizes, [256, 256, 88]);
  c.close();
  await gateway.close();
});

test('close codes map to what they mean', () => {
  assert.deepEqual(closeMeaning(1008, 'token expired'), { reason: 'token_expired', retry: 'refresh' });
  assert.deepEqual(closeMeaning(1008, 'sending too fast'), { reason: 'policy', retry: 'backoff' });
  assert.deepEqual(closeMeaning(1013), { reason: 'too_slow', retry: 'backoff' });
  assert.deepEqual(closeMeaning(1001), { reason: 'going_away', retry: 'now' });
  assert.deepEqual(closeMeaning(1006), { reason: 'network', retry: 'backoff' });
  assert.deepEqual(closeMeaning(1002), { reason: 'protocol', retry: 'backoff' });
  assert.equal(withToken('wss://h/v1.0/ws', 'a&b'), 'wss://h/v1.0/ws?token=a%26b');
  assert.equal(withToken('wss://h/v1.0/ws?x=1', 't'), 'wss://h/v1.0/ws?x=1&token=t');
});

test('close stops reconnecting, even while a reconnect is pending', async () => {
  const gateway = await fakeGateway();
  const c = client(gateway, { random: () => 0.999, baseDelayMs: 300 });
  c.connect();
  const conn = await gateway.connection(0);
  await gateway.message(conn, 0);
  const reconnecting = next(c, 'reconnecting');
  conn.socket.terminate();
  await reconnecting;
  c.close();
  assert.equal(c.state, 'closed');
  await new Promise((resolve) => setTimeout(resolve, 400));
  assert.equal(gateway.connections.length, 1);
  await gateway.close();
});
