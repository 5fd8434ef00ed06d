// What the browser tests share: the repository's paths, free loopback ports, the built
// binaries as child processes, HS256 tokens, polling, plain HTTP and the Chromium launch.
// Everything listens and connects on 127.0.0.1 only.

import { spawn } from 'node:child_process';
import { createHmac, randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { createServer } from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

/** The repository's root (ends with a separator). */
export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
/** Where the built binaries are (`cargo build` puts them there). */
export const BIN_DIR = process.env.FANOUT_BIN_DIR ?? path.join(ROOT, 'target', 'debug');
/** The browser: Debian's `chromium` package. */
export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

export { randomUUID, sleep };

/** The path of a built binary; throws a readable error when it is missing. */
export function binary(name) {
  const file = path.join(BIN_DIR, name);
  if (!existsSync(file)) {
    throw new Error(`${file} is missing: build it first (cargo build -p fanout-gateway -p voipbin-sim)`);
  }
  return file;
}

/** A loopback port that was free a moment ago (bound to port 0, then closed). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** `count` distinct free loopback ports. */
export async function freePorts(count) {
  const ports = new Set();
  while (ports.size < count) ports.add(await freePort());
  return [...ports];
}

/**
 * A child process whose stdout and stderr are kept (the last lines, for failure messages)
 * and can be waited on. Killed with SIGKILL by `stop` if it does not end on SIGTERM.
 */
export class Proc {
  constructor(name, file, args, options = {}) {
    this.name = name;
    this.lines = [];
    this.waiters = [];
    this.child = spawn(file, args, {
      cwd: ROOT,
      env: { ...process.env, ...(options.env ?? {}) },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.exited = new Promise((resolve) => {
      this.child.on('exit', (code, signal) => {
        this.exit = { code, signal };
        resolve(this.exit);
      });
    });
    this.child.on('error', (error) => this.push(`spawn error: ${error.message}`));
    for (const stream of [this.child.stdout, this.child.stderr]) {
      let pending = '';
      stream.setEncoding('utf8');
      stream.on('data', (chunk) => {
        pending += chunk;
        let newline;
        while ((newline = pending.indexOf('\n')) >= 0) {
          this.push(pending.slice(0, newline));
          pending = pending.slice(newline + 1);
        }
      });
    }
  }

  push(line) {
    this.lines.push(line);
    if (this.lines.length > 400) this.lines.splice(0, this.lines.length - 400);
    for (const waiter of [...this.waiters]) {
      const match = waiter.pattern.exec(line);
      if (match) {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        waiter.resolve(match);
      }
    }
  }

  /** Resolves with the match of the first line (from now on, or already seen) matching. */
  waitForLine(pattern, timeoutMs = 15_000) {
    for (const line of this.lines) {
      const match = pattern.exec(line);
      if (match) return Promise.resolve(match);
    }
    return new Promise((resolve, reject) => {
      const waiter = { pattern, resolve };
      this.waiters.push(waiter);
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        reject(new Error(`${this.name}: no line matching ${pattern} within ${timeoutMs} ms\n${this.tail()}`));
      }, timeoutMs);
      timer.unref();
      this.exited.then(() => {
        if (this.waiters.includes(waiter)) {
          clearTimeout(timer);
          this.waiters.splice(this.waiters.indexOf(waiter), 1);
          reject(new Error(`${this.name} exited (${JSON.stringify(this.exit)}) before a line matching ${pattern}\n${this.tail()}`));
        }
      });
    });
  }

  /** The last lines it printed, for failure messages. */
  tail(count = 40) {
    return `--- last output of ${this.name} ---\n${this.lines.slice(-count).join('\n')}`;
  }

  get running() {
    return this.exit === undefined;
  }

  /** Sends `signal` and waits until the process has ended. */
  async kill(signal = 'SIGKILL') {
    if (!this.running) return this.exit;
    this.child.kill(signal);
    return this.exited;
  }

  /** Ends the process: SIGTERM, then SIGKILL after `graceMs`. */
  async stop(graceMs = 3_000) {
    if (!this.running) return this.exit;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }
}

/** Polls `check` (sync or async) until it answers something truthy; answers that. */
export async function waitFor(what, check, { timeoutMs = 10_000, intervalMs = 50, detail } = {}) {
  const deadline = Date.now() + timeoutMs;
  let lastError;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() >= deadline) {
      const extra = detail ? `\n${await detail()}` : '';
      const cause = lastError ? ` (last error: ${lastError.message})` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for: ${what}${cause}${extra}`);
    }
    await sleep(intervalMs);
  }
}

/** An HTTP request to a loopback URL; answers `{ status, body }` with JSON parsed when it is. */
export async function http(url, { method = 'GET', body, timeoutMs = 5_000 } = {}) {
  const response = await fetch(url, {
    method,
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    signal: AbortSignal.timeout(timeoutMs),
  });
  const text = await response.text();
  let parsed = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // Not JSON: the text as it is.
  }
  return { status: response.status, body: parsed };
}

function base64url(data) {
  return Buffer.from(data).toString('base64url');
}

/** An HS256 JWT of `claims` signed with `secret`. */
export function signJwt(secret, claims) {
  const head = base64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = base64url(JSON.stringify(claims));
  const signature = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${signature}`;
}

/** VoIPBIN's timestamp layout (`2026-12-08T12:00:00.000000Z`) for `date`. */
export function voipbinTimestamp(date) {
  return date.toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');
}

/** Permission bits of agent tokens (protocol.md §1.2). */
export const PERMISSION = Object.freeze({
  PROJECT_SUPER_ADMIN: 0x0001,
  AGENT: 0x0010,
  CUSTOMER_ADMIN: 0x0020,
  CUSTOMER_MANAGER: 0x0040,
});

/** An agent JWT of `customer` with `permission`, valid for a week. */
export function agentToken(secret, customer, permission, agent = randomUUID()) {
  const expire = voipbinTimestamp(new Date(Date.now() + 7 * 24 * 3600 * 1000));
  return signJwt(secret, {
    type: 'agent',
    agent: { id: agent, customer_id: customer, permission, username: 'agent' },
    expire,
  });
}

/**
 * Splits a cursor (protocol.md §1.7: 16 hex digits of epoch, `-`, the offset in hex) for the
 * tests' order checks. Apps treat cursors as opaque; tests may look inside.
 */
export function parseCursor(cursor) {
  const match = /^([0-9a-f]{16})-([0-9a-f]+)$/.exec(cursor ?? '');
  if (!match) throw new Error(`not a cursor: ${JSON.stringify(cursor)}`);
  return { epoch: match[1], offset: BigInt(`0x${match[2]}`) };
}

/**
 * Launches headless Chromium (Debian's build, no bundled browser, no network of its own),
 * with `extraArgs` besides the usual ones.
 */
export function launchBrowser(extraArgs = []) {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--no-first-run', ...extraArgs],
    timeout: 30_000,
  });
}

/**
 * Collects a page's console messages and uncaught errors. `errors` holds console errors and
 * page errors as text.
 */
export function watchConsole(page) {
  const seen = { messages: [], errors: [] };
  page.on('console', (message) => {
    const text = message.text();
    const { url } = message.location();
    seen.messages.push({ type: message.type(), text, url });
    if (message.type() === 'error') seen.errors.push(`console.error: ${text} (${url})`);
  });
  page.on('pageerror', (error) => seen.errors.push(`page error: ${error.message}`));
  return seen;
}

/** The demo's customer (crates/gateway/src/demo.rs), the one the tutorial subscribes to. */
export const DEMO_CUSTOMER = '12345678-1234-1234-1234-123456789012';

/**
 * Starts `fanout-gateway demo` on free ports; answers its process, ports, page URL and the
 * page's settings (`/demo.json`).
 */
export async function startDemo({ eventRate = 20, world = 'voipbin' } = {}) {
  const [listen, admin, sim, page] = await freePorts(4);
  const proc = new Proc('fanout-gateway demo', binary('fanout-gateway'), [
    'demo',
    '--listen', `127.0.0.1:${listen}`,
    '--admin-listen', `127.0.0.1:${admin}`,
    '--sim-listen', `127.0.0.1:${sim}`,
    '--page-listen', `127.0.0.1:${page}`,
    '--event-rate', String(eventRate),
    '--world', world,
  ]);
  try {
    const [, pageUrl] = await proc.waitForLine(/^\s*demo page\s+(http:\/\/\S+)/);
    const { status, body: settings } = await http(new URL('demo.json', pageUrl).href);
    if (status !== 200) throw new Error(`GET /demo.json answered ${status}`);
    return { proc, pageUrl, settings, ports: { listen, admin, sim, page } };
  } catch (error) {
    await proc.stop();
    throw error;
  }
}

/**
 * Serves `files` (`{ '/path': { type, body } }`) on a free loopback port, the origin of a
 * test page. (A page on a made-up public origin may not open WebSockets to 127.0.0.1:
 * Chromium's local network access checks refuse it; a loopback origin may.) Answers
 * `{ url, requests, close }`; `requests` lists the paths asked for.
 */
export async function servePages(files) {
  const requests = [];
  const server = createServer((req, res) => {
    const { pathname } = new URL(req.url, 'http://127.0.0.1');
    requests.push(`${req.method} ${pathname}`);
    const file = files[pathname];
    if (req.method === 'GET' && file) {
      res.writeHead(200, { 'content-type': file.type, 'cache-control': 'no-store' });
      res.end(file.body);
    } else if (pathname === '/favicon.ico') {
      res.writeHead(204).end();
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
    }
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}/`,
    requests,
    close: () => new Promise((resolve) => {
      server.closeAllConnections?.();
      server.close(() => resolve());
    }),
  };
}

/**
 * Starts `scripts/cluster-demo` (nats-server, the simulator, three gateway nodes in cluster
 * mode, HAProxy in front) on ports from a free base and waits for its URL; answers
 * { proc, pageUrl, settings, nodes: [ws URL…], simUrl }.
 */
export async function startClusterDemo({ eventRate = 10 } = {}) {
  // The script takes ports base … base+23: look for a base with all of them free.
  let base;
  for (let attempt = 0; attempt < 50 && base === undefined; attempt += 1) {
    const candidate = 20_000 + Math.floor(Math.random() * 20_000);
    const free = await Promise.all(Array.from({ length: 24 }, (_, i) => portFree(candidate + i)));
    if (free.every(Boolean)) base = candidate;
  }
  if (base === undefined) throw new Error('no free range of 24 ports');
  const proc = new Proc('scripts/cluster-demo', path.join(ROOT, 'scripts', 'cluster-demo'), [], {
    env: { CLUSTER_DEMO_PORT: String(base), CLUSTER_DEMO_EVENT_RATE: String(eventRate), FANOUT_BIN_DIR: BIN_DIR },
  });
  try {
    const [, pageUrl] = await proc.waitForLine(/^\s*demo page\s+(http:\/\/\S+)/, 60_000);
    const { status, body: settings } = await http(new URL('demo.json', pageUrl).href);
    if (status !== 200) throw new Error(`GET /demo.json through the load balancer answered ${status}`);
    const nodes = [0, 1, 2].map((i) => `ws://127.0.0.1:${base + 11 + i}/v1.0/ws`);
    return { proc, pageUrl, settings, nodes, simUrl: `http://127.0.0.1:${base + 2}` };
  } catch (error) {
    await proc.stop();
    throw error;
  }
}

/** Whether nothing listens on 127.0.0.1:`port`. */
function portFree(port) {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}
