// The JavaScript client (clients/js/index.js) in real Chromium, against `voipbin-sim` and
// `fanout-gateway serve` as separate processes, in both of the simulator's worlds (the
// tutorial's, and VoIPBIN's code as it is today): it resumes after the app closes and
// reopens it (nothing missed, nothing repeated), survives a gateway restart (resumes and
// is told it cannot be proven that nothing was missed) and an upstream drop (a gap).
//
// The page records, in the order the client handled them, every event (with its `seq`, id
// and cursor), gap, resume answer, `lost`, state change and close, into `window.handled`;
// and every frame on the wire, both ways, into `window.wire`.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';

import {
  PERMISSION,
  Proc,
  ROOT,
  agentToken,
  binary,
  freePorts,
  http,
  launchBrowser,
  parseCursor,
  randomUUID,
  servePages,
  sleep,
  waitFor,
} from './support.js';

const CLIENT_JS = path.join(ROOT, 'clients', 'js', 'index.js');

/** The simulator's worlds, with the matching the gateway asks each in, and the frames one
 * call event costs upstream (VoIPBIN's code delivers one per published topic). */
const WORLDS = [
  { world: 'tutorial', matching: 'segment', framesPerEvent: 1 },
  { world: 'voipbin', matching: 'prefix', framesPerEvent: 2 },
];

const PAGE = `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>client test</title></head>
<body>
<p>state: <span id="state">idle</span></p>
<script type="module">
import { FanoutClient } from './client.js';

const settings = await (await fetch('./settings.json')).json();
window.handled = [];
window.wire = [];
let sockets = 0;
// The platform's WebSocket, recording what goes over it (before the client sees it).
class RecordingWebSocket extends WebSocket {
  constructor(url, protocols) {
    super(url, protocols);
    const socket = ++sockets;
    this.recordId = socket;
    window.wire.push({ socket, dir: 'connect' });
    this.addEventListener('message', (message) => {
      let frame;
      try { frame = JSON.parse(message.data); } catch { frame = { unparsed: String(message.data) }; }
      window.wire.push({ socket, dir: 'in', frame });
    });
    this.addEventListener('close', (event) => window.wire.push({ socket, dir: 'closed', code: event.code }));
  }
  send(data) {
    window.wire.push({ socket: this.recordId, dir: 'out', frame: JSON.parse(data) });
    super.send(data);
  }
}

const client = new FanoutClient({
  url: settings.url,
  token: settings.token,
  topics: settings.topics,
  WebSocket: RecordingWebSocket,
  // Shorter than the defaults (500 ms, 30 s), to keep the test short.
  baseDelayMs: 100,
  maxDelayMs: 1000,
});
const record = (entry) => window.handled.push({ at: Date.now(), ...entry });
client.on('event', (e) => record({ kind: 'event', event_type: e.event_type, topic: e.topic, seq: e.data?.seq, id: e.data?.id, cursor: e.cursor }));
client.on('gap', (g) => record({ kind: 'gap', reason: g.reason, since: g.since, until: g.until, cursor: g.cursor }));
client.on('resumed', (r) => record({ kind: 'resumed', recovered: r.recovered, cursor: r.cursor }));
client.on('lost', (r) => record({ kind: 'lost', cursor: r.cursor }));
client.on('error', (e) => record({ kind: 'error', type: e.type, code: e.code, message: e.message }));
client.on('close', (c) => record({ kind: 'close', code: c.code, reason: c.reason, meaning: c.meaning }));
client.on('state', (state) => {
  record({ kind: 'state', state });
  document.getElementById('state').textContent = state;
});
window.client = client;
client.connect();
</script>
</body>
</html>`;

/**
 * The simulator playing `world`, a gateway in front of it, and a browser page with the
 * client subscribed to the calls of a fresh customer.
 */
async function start({ world, matching, framesPerEvent }) {
  const secret = `browser-test-${randomUUID()}`;
  const customer = randomUUID();
  const [simPort, listen, admin] = await freePorts(3);
  const env = {
    simUrl: `http://127.0.0.1:${simPort}`,
    customer,
    topic: `customer_id:${customer}:call:*`,
    calls: `customer_id:${customer}:call:`,
    framesPerEvent,
    ports: { sim: simPort, listen, admin },
    procs: [],
  };
  env.sim = new Proc('voipbin-sim', binary('voipbin-sim'), [
    '--listen', `127.0.0.1:${simPort}`, '--jwt-secret', secret, '--world', world,
  ]);
  env.procs.push(env.sim);
  const upstreamToken = agentToken(secret, customer, PERMISSION.PROJECT_SUPER_ADMIN);
  env.gatewayArgs = [
    'serve',
    '--listen', `127.0.0.1:${listen}`,
    '--admin-listen', `127.0.0.1:${admin}`,
    '--upstream-url', `ws://127.0.0.1:${simPort}/v1.0/ws`,
    '--jwt-secret', secret,
    '--upstream-token', upstreamToken,
    '--upstream-matching', matching,
  ];
  env.startGateway = async () => {
    // The simulator applies a subscribe before it reads the next frame: no settle time.
    const gateway = new Proc('fanout-gateway serve', binary('fanout-gateway'), env.gatewayArgs, {
      env: { FANOUT_UPSTREAM__SUBSCRIBE_SETTLE: '0s' },
    });
    env.procs.push(gateway);
    env.gateway = gateway;
    await waitFor('the gateway answers /healthz', async () => (await http(`http://127.0.0.1:${admin}/healthz`)).status === 200, {
      detail: () => gateway.tail(),
    });
    return gateway;
  };
  env.stop = async () => {
    await env.browser?.close();
    await env.pages?.close();
    for (const proc of env.procs.reverse()) await proc.stop();
  };
  try {
    await waitFor('the simulator answers /_sim/stats', async () => (await http(`${env.simUrl}/_sim/stats`)).status === 200, {
      detail: () => env.sim.tail(),
    });
    await env.startGateway();
    const settings = {
      url: `ws://127.0.0.1:${listen}/v1.0/ws`,
      token: agentToken(secret, customer, PERMISSION.CUSTOMER_ADMIN),
      topics: [env.topic],
    };
    env.pages = await servePages({
      '/': { type: 'text/html; charset=utf-8', body: PAGE },
      '/client.js': { type: 'text/javascript; charset=utf-8', body: readFileSync(CLIENT_JS, 'utf8') },
      '/settings.json': { type: 'application/json', body: JSON.stringify(settings) },
    });
    env.browser = await launchBrowser();
    env.page = await env.browser.newPage();
    env.pageErrors = [];
    env.page.on('pageerror', (error) => env.pageErrors.push(error.message));
    await env.page.goto(env.pages.url);
    await waitFor('the client open', () => clientState(env).then((s) => s === 'open'), { detail: () => describe(env) });
    await upstreamSubscribed(env);
    return env;
  } catch (error) {
    await env.stop();
    throw error;
  }
}

const clientState = (env) => env.page.evaluate(() => window.client.state);
const handled = (env) => env.page.evaluate(() => window.handled);
const wire = (env) => env.page.evaluate(() => window.wire);
const simStats = async (env) => (await http(`${env.simUrl}/_sim/stats`)).body;

/** What a failure message shows: what the page handled and the processes' last lines. */
async function describe(env) {
  let page = '';
  try {
    page = `handled: ${JSON.stringify(await handled(env))}\nwire: ${JSON.stringify(await wire(env))}`;
  } catch (error) {
    page = `(page not readable: ${error.message})`;
  }
  return `${page}\npage errors: ${JSON.stringify(env.pageErrors ?? [])}\n${env.gateway?.tail(20) ?? ''}\n${env.sim.tail(10)}`;
}

/**
 * Waits until the simulator holds a connection of the customer subscribed to its topic
 * (the gateway's upstream), one opened after `afterTotal` connections in all when given.
 */
async function upstreamSubscribed(env, afterTotal = 0) {
  return waitFor('the gateway subscribed upstream', async () => {
    const stats = await simStats(env);
    const mine = stats.customers?.[env.customer];
    return stats.connections_total > afterTotal && mine?.connections === 1 && mine.subscriptions.length > 0 ? stats : null;
  }, { detail: async () => `sim stats: ${JSON.stringify(await simStats(env))}\n${await describe(env)}` });
}

/** Publishes one call event per `seq` (data carries `seq`); asserts each reached the upstream. */
async function publish(env, seqs) {
  const at = new Date().toISOString();
  const specs = seqs.map((seq) => ({
    event_type: 'call_progressing',
    data: {
      id: randomUUID(), customer_id: env.customer, seq, status: 'progressing', direction: 'incoming',
      tm_progressing: at, tm_update: at,
    },
  }));
  const { status, body } = await http(`${env.simUrl}/_sim/events`, { method: 'POST', body: specs });
  assert.equal(status, 200, JSON.stringify(body));
  assert.equal(body.sent, seqs.length * env.framesPerEvent,
    `the simulator delivered each event to the gateway (once per published topic in VoIPBIN's world): ${JSON.stringify(body)}`);
}

const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
const events = (entries) => entries.filter((e) => e.kind === 'event');

/** Waits until the page handled events with every one of `seqs`; answers what it handled. */
async function waitForSeqs(env, seqs, timeoutMs = 10_000) {
  return waitFor(`events ${seqs[0]}..${seqs.at(-1)} handled`, async () => {
    const all = await handled(env);
    const got = new Set(events(all).map((e) => e.seq));
    return seqs.every((s) => got.has(s)) ? all : null;
  }, { timeoutMs, detail: () => describe(env) });
}

/** Asserts events' cursors are of one epoch and strictly increasing. */
function assertCursorsIncrease(list, what) {
  const cursors = list.map((e) => e.cursor);
  const parsed = cursors.map(parseCursor);
  for (let i = 1; i < parsed.length; i += 1) {
    assert.equal(parsed[i].epoch, parsed[i - 1].epoch, `${what}: one epoch: ${cursors.join(' ')}`);
    assert.ok(parsed[i].offset > parsed[i - 1].offset, `${what}: cursors increase: ${cursors.join(' ')}`);
  }
}

/** The first part of every test: numbered events arrive in order, with cursors. */
async function liveEventsArrive(env, seqs) {
  await publish(env, seqs);
  const all = await waitForSeqs(env, seqs);
  const got = events(all);
  assert.deepEqual(got.map((e) => e.seq), seqs, 'in order, once each');
  assert.ok(got.every((e) => e.topic.startsWith(env.calls)), JSON.stringify(got));
  assert.ok(got.every((e) => e.event_type === 'call_progressing'), JSON.stringify(got));
  assertCursorsIncrease(got, 'live events');
  return got;
}

for (const world of WORLDS) {
test(`the client resumes after close() and connect(): the missed events once each, then live ones (${world.world})`, { timeout: 60_000 }, async () => {
  const env = await start(world);
  try {
    const first = await liveEventsArrive(env, range(1, 5));
    const lastCursor = first.at(-1).cursor;

    await env.page.evaluate(() => window.client.close());
    await waitFor('the client closed', () => clientState(env).then((s) => s === 'closed'), { detail: () => describe(env) });
    const closedAt = (await handled(env)).length;
    // While it is away; the gateway keeps the customer's upstream for its linger.
    await publish(env, range(6, 10));

    await env.page.evaluate(() => window.client.connect());
    await waitForSeqs(env, range(6, 10));
    await publish(env, range(11, 13));
    const all = await waitForSeqs(env, range(11, 13));
    const sinceReopen = all.slice(closedAt);
    const context = await describe(env);

    // The subscription after the reopen carried the last cursor handled.
    const sockets = await wire(env);
    const subscribes = sockets.filter((w) => w.dir === 'out' && w.frame.type === 'subscribe');
    assert.equal(subscribes.length, 2, context);
    assert.equal(subscribes[0].frame.since, undefined, context);
    assert.equal(subscribes[1].frame.since, lastCursor, context);

    const answers = sinceReopen.filter((e) => e.kind === 'resumed');
    assert.equal(answers.length, 1, context);
    assert.equal(answers[0].recovered, true, `recovered: the gateway held the customer's stream throughout\n${context}`);
    assert.deepEqual(sinceReopen.filter((e) => ['lost', 'gap', 'error'].includes(e.kind)), [], context);
    // The resume answer comes before any event of the new connection.
    const answerAt = sinceReopen.findIndex((e) => e.kind === 'resumed');
    assert.ok(sinceReopen.findIndex((e) => e.kind === 'event') > answerAt, context);
    const replayed = events(sinceReopen);
    assert.deepEqual(replayed.map((e) => e.seq), range(6, 13), `the missed events once each, in order, then live ones\n${context}`);
    assertCursorsIncrease([...first, ...replayed], 'across the reopen');
    assert.deepEqual(events(all).map((e) => e.seq), range(1, 13), context);
    assert.deepEqual(env.pageErrors, []);
  } finally {
    await env.stop();
  }
});

test(`a resume with nothing missed is recovered: reconnect() at once, then live events (${world.world})`, { timeout: 60_000 }, async () => {
  const env = await start(world);
  try {
    const first = await liveEventsArrive(env, range(1, 3));
    const before = (await handled(env)).length;
    // What the demo page's "Drop the connection" does: a new socket at once, with the
    // cursor of the newest event; there is nothing to replay.
    await env.page.evaluate(() => window.client.reconnect());
    await waitFor('a resume answer', async () => (await handled(env)).slice(before).some((e) => e.kind === 'resumed'), {
      detail: () => describe(env),
    });
    await publish(env, range(4, 6));
    const all = await waitForSeqs(env, range(4, 6));
    const since = all.slice(before);
    const context = await describe(env);
    const resumes = (await wire(env)).filter((w) => w.dir === 'out' && w.frame.since !== undefined);
    assert.equal(resumes.length, 1, context);
    assert.equal(resumes[0].frame.since, first.at(-1).cursor, context);
    const answers = since.filter((e) => e.kind === 'resumed');
    assert.equal(answers.length, 1, context);
    assert.equal(answers[0].recovered, true, `nothing was missed: the gateway holds every event after the cursor (none)\n${context}`);
    assert.deepEqual(since.filter((e) => ['lost', 'gap', 'error'].includes(e.kind)), [], context);
    assert.deepEqual(events(since).map((e) => e.seq), range(4, 6), context);
    assertCursorsIncrease([...first, ...events(since)], 'across the reconnect');
    assert.deepEqual(env.pageErrors, []);
  } finally {
    await env.stop();
  }
});

test(`the client survives a gateway restart: it resumes by itself and hears it is not recovered (${world.world})`, { timeout: 60_000 }, async () => {
  const env = await start(world);
  try {
    const first = await liveEventsArrive(env, range(1, 3));
    const statsBefore = await simStats(env);

    await env.gateway.kill('SIGKILL');
    await waitFor('the client notices', () => clientState(env).then((s) => s === 'reconnecting'), { detail: () => describe(env) });
    const droppedAt = (await handled(env)).length;
    // Down for a while: the client keeps trying on its back-off.
    await sleep(1_500);
    await env.startGateway();

    await waitFor('a resume answer from the new gateway', async () => (await handled(env)).slice(droppedAt).some((e) => e.kind === 'resumed'), {
      timeoutMs: 15_000,
      detail: () => describe(env),
    });
    await upstreamSubscribed(env, statsBefore.connections_total);
    await publish(env, range(4, 6));
    const all = await waitForSeqs(env, range(4, 6));
    const since = all.slice(droppedAt);
    const context = await describe(env);

    const sockets = await wire(env);
    const resumes = sockets.filter((w) => w.dir === 'out' && w.frame.type === 'subscribe' && w.frame.since !== undefined);
    assert.ok(resumes.length >= 1, context);
    assert.ok(resumes.every((w) => w.frame.since === first.at(-1).cursor), `the resume carried the old cursor\n${context}`);

    // A new gateway knows nothing of the old one's stream: recovered must be false.
    const answers = since.filter((e) => e.kind === 'resumed');
    assert.equal(answers.length, 1, context);
    assert.equal(answers[0].recovered, false, `never a wrong recovered:true\n${context}`);
    assert.equal(since.filter((e) => e.kind === 'lost').length, 1, context);
    assert.ok(since.findIndex((e) => e.kind === 'lost') < since.findIndex((e) => e.kind === 'event'), context);
    const after = events(since);
    assert.deepEqual(after.map((e) => e.seq), range(4, 6), context);
    assertCursorsIncrease(after, 'after the restart');
    assert.notEqual(parseCursor(after[0].cursor).epoch, parseCursor(first[0].cursor).epoch,
      `a new gateway's stream has a new epoch\n${context}`);
    assert.deepEqual(events(all).map((e) => e.seq), range(1, 6), context);
    assert.deepEqual(env.pageErrors, []);
  } finally {
    await env.stop();
  }
});

test(`the client hears a gap when the upstream drops, and events go on (${world.world})`, { timeout: 60_000 }, async () => {
  const env = await start(world);
  try {
    const first = await liveEventsArrive(env, range(1, 3));
    const handledBefore = (await handled(env)).length;
    const statsBefore = await simStats(env);

    const { status, body } = await http(`${env.simUrl}/_sim/drop?customer_id=${env.customer}`, { method: 'POST' });
    assert.equal(status, 200);
    assert.equal(body.dropped, 1, JSON.stringify(body));
    await upstreamSubscribed(env, statsBefore.connections_total);
    await publish(env, range(4, 6));
    await waitForSeqs(env, range(4, 6));
    const all = await waitFor('a gap', async () => {
      const list = await handled(env);
      return list.slice(handledBefore).some((e) => e.kind === 'gap') ? list : null;
    }, { detail: () => describe(env) });
    const since = all.slice(handledBefore);
    const context = await describe(env);

    const gaps = since.filter((e) => e.kind === 'gap');
    assert.equal(gaps.length, 1, context);
    assert.equal(gaps[0].reason, 'upstream_reconnect', context);
    assert.equal(typeof gaps[0].cursor, 'string', context);
    assert.equal(typeof gaps[0].since, 'string', context);
    assert.equal(typeof gaps[0].until, 'string', context);
    // Before the first event after the loss; the browser's own connection stayed up.
    assert.ok(since.findIndex((e) => e.kind === 'gap') < since.findIndex((e) => e.kind === 'event'), context);
    assert.deepEqual(since.filter((e) => ['close', 'state', 'resumed', 'lost', 'error'].includes(e.kind)), [], context);
    const after = events(since);
    assert.deepEqual(after.map((e) => e.seq), range(4, 6), context);
    const gapCursor = parseCursor(gaps[0].cursor);
    if (gapCursor.epoch === parseCursor(after[0].cursor).epoch) {
      assert.ok(parseCursor(after[0].cursor).offset > gapCursor.offset, `events after the gap come after its cursor\n${context}`);
    }
    assertCursorsIncrease([...first, ...after], 'across the upstream drop');
    assert.deepEqual(env.pageErrors, []);
  } finally {
    await env.stop();
  }
});
}
