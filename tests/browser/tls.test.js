// `wss://` and the origin allow-list in real Chromium: the gateway binary serves TLS with a
// certificate from a CA made here (openssl), and allows one page origin. A page of that
// origin receives events over `wss://`; a page of another origin is refused (403, counted),
// as a cross-site page riding a user's `token` cookie would be.
//
// Chromium is told to accept the certificate by its public key's hash
// (`--ignore-certificate-errors-spki-list`), the way to trust a test certificate without
// a system trust store.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

import {
  PERMISSION,
  Proc,
  agentToken,
  binary,
  freePorts,
  http,
  launchBrowser,
  randomUUID,
  servePages,
  waitFor,
  watchConsole,
} from './support.js';

function openssl(args, input) {
  return execFileSync('openssl', args, { input, stdio: ['pipe', 'pipe', 'pipe'] });
}

/** A CA and a certificate it issued for localhost; answers the files and the SPKI hash. */
function makeCertificate(dir) {
  const file = (name) => path.join(dir, name);
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', file('ca.key'), '-out', file('ca.pem'), '-days', '2', '-subj', '/CN=fanout test CA']);
  openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', file('tls.key'), '-out', file('tls.csr'), '-subj', '/CN=localhost']);
  writeFileSync(file('tls.ext'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  openssl(['x509', '-req', '-in', file('tls.csr'), '-CA', file('ca.pem'), '-CAkey', file('ca.key'),
    '-CAcreateserial', '-out', file('tls.pem'), '-days', '2', '-extfile', file('tls.ext')]);
  const publicKey = openssl(['x509', '-in', file('tls.pem'), '-pubkey', '-noout']);
  const der = openssl(['pkey', '-pubin', '-outform', 'der'], publicKey);
  const spki = openssl(['dgst', '-sha256', '-binary'], der).toString('base64');
  return { cert: file('tls.pem'), key: file('tls.key'), spki };
}

const PAGE = (wsUrl, topic) => `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>wss</title></head>
<body><script>
  const ws = new WebSocket(${JSON.stringify(wsUrl)});
  ws.onopen = () => {
    console.log('open');
    ws.send(JSON.stringify({ type: 'subscribe', topics: [${JSON.stringify(topic)}] }));
    ws.send(JSON.stringify({ type: 'sync' }));
  };
  ws.onmessage = (message) => {
    const data = JSON.parse(message.data);
    console.log(data.event_type ? 'event ' + data.data.id : 'frame ' + message.data);
  };
  ws.onclose = (event) => console.log('closed ' + event.code);
</script></body></html>`;

test('Chromium gets events over wss:// from an allowed origin, and is refused from another', { timeout: 90_000 }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'fanout-tls-'));
  const procs = [];
  const pages = [];
  let browser;
  try {
    const { cert, key, spki } = makeCertificate(dir);
    const secret = `browser-tls-${randomUUID()}`;
    const customer = randomUUID();
    const [simPort, listen, admin] = await freePorts(3);
    const topic = `customer_id:${customer}:call:*`;
    const wsUrl = (token) => `wss://localhost:${listen}/v1.0/ws?token=${token}`;
    const token = agentToken(secret, customer, PERMISSION.CUSTOMER_ADMIN);
    const allowed = await servePages({ '/': { type: 'text/html; charset=utf-8', body: PAGE(wsUrl(token), topic) } });
    const other = await servePages({ '/': { type: 'text/html; charset=utf-8', body: PAGE(wsUrl(token), topic) } });
    pages.push(allowed, other);
    const allowedOrigin = new URL(allowed.url).origin;

    const sim = new Proc('voipbin-sim', binary('voipbin-sim'), [
      '--listen', `127.0.0.1:${simPort}`, '--jwt-secret', secret, '--world', 'voipbin',
    ]);
    procs.push(sim);
    await sim.waitForLine(/simulator listening/);
    const gateway = new Proc('fanout-gateway', binary('fanout-gateway'), [
      'serve', '--listen', `127.0.0.1:${listen}`, '--admin-listen', `127.0.0.1:${admin}`,
      '--upstream-url', `ws://127.0.0.1:${simPort}/v1.0/ws`,
      '--tls-cert', cert, '--tls-key', key,
      '--allowed-origins', allowedOrigin,
    ], {
      env: {
        FANOUT_JWT_SECRET: secret,
        FANOUT_UPSTREAM_TOKEN: agentToken(secret, customer, PERMISSION.PROJECT_SUPER_ADMIN),
        FANOUT_UPSTREAM__SUBSCRIBE_SETTLE: '0s',
      },
    });
    procs.push(gateway);
    await gateway.waitForLine(/Gateway listening/);

    browser = await launchBrowser([`--ignore-certificate-errors-spki-list=${spki}`]);
    const page = await browser.newPage();
    const seen = watchConsole(page);
    await page.goto(allowed.url);
    await waitFor('the allowed page subscribed over wss://', () => seen.messages.some((m) => m.text.includes('unknown_type')), {
      timeoutMs: 20_000,
      detail: () => `console: ${JSON.stringify(seen.messages)}\n${gateway.tail()}`,
    });
    await waitFor('the upstream subscription', async () => {
      const { body } = await http(`http://127.0.0.1:${simPort}/_sim/stats`);
      return (body.customers?.[customer]?.subscriptions ?? []).length === 1;
    });
    const { status } = await http(`http://127.0.0.1:${simPort}/_sim/events`, {
      method: 'POST',
      body: [{ event_type: 'call_created', data: { id: 'over-wss', customer_id: customer, status: 'dialing' } }],
    });
    assert.equal(status, 200);
    await waitFor('the event over wss://', () => seen.messages.some((m) => m.text === 'event over-wss'), {
      detail: () => `console: ${JSON.stringify(seen.messages)}`,
    });

    const otherPage = await browser.newPage();
    const otherSeen = watchConsole(otherPage);
    await otherPage.goto(other.url);
    await waitFor('the other origin refused', () => otherSeen.messages.some((m) => m.text.startsWith('closed ')), {
      detail: () => `console: ${JSON.stringify(otherSeen.messages)}`,
    });
    assert.ok(!otherSeen.messages.some((m) => m.text === 'open'), 'no session from another origin');
    const { body: metrics } = await http(`http://127.0.0.1:${admin}/metrics`);
    const refused = /fanout_handshakes_refused_total\{reason="origin"\} (\d+)/.exec(metrics);
    assert.ok(refused && Number(refused[1]) >= 1, 'the refusal is counted as origin');
    assert.ok(/fanout_tls_certificate_expiry_timestamp_seconds [1-9]/.test(metrics), 'the certificate expiry is exported');
  } finally {
    await browser?.close();
    for (const proc of procs.reverse()) await proc.stop();
    for (const page of pages) await page.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
