// VoIPBIN's tutorial, "JavaScript (Browser) Example", in real Chromium against
// `fanout-gateway demo`, in both of the simulator's worlds (VoIPBIN's code as it is today,
// and the tutorial's): the example works unchanged but for its URL and token.
//
// `tutorial_browser.js` is the example as the tutorial prints it (line breaks put back; the
// seed file has its whitespace collapsed), as `tests/clients` keeps the Python and Node ones.
// The test fills in the token and points the URL at the gateway, the only change a reader
// makes.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import { launchBrowser, servePages, startDemo, waitFor, watchConsole } from './support.js';

const EXAMPLE = new URL('./tutorial_browser.js', import.meta.url);
const HOST_LINE = 'const wsUrl = `wss://api.voipbin.net/v1.0/ws?token=${token}`;';
const TOKEN_LINE = "const token = '';";

/** Replaces the one occurrence of `from` in `text`. */
function replaceOnce(text, from, to) {
  const at = text.indexOf(from);
  assert.ok(at >= 0 && text.indexOf(from, at + 1) < 0, `exactly one ${JSON.stringify(from)}`);
  return text.slice(0, at) + to + text.slice(at + from.length);
}

for (const world of ['voipbin', 'tutorial']) {
test(`the tutorial's browser example receives the demo's events in Chromium (${world})`, { timeout: 60_000 }, async () => {
  const demo = await startDemo({ eventRate: 20, world });
  let browser;
  let pages;
  try {
    const { settings, ports } = demo;
    // The reader's two edits: the token, and the endpoint (the gateway instead of VoIPBIN).
    let script = readFileSync(EXAMPLE, 'utf8');
    script = replaceOnce(script, TOKEN_LINE, `const token = '${settings.token}';`);
    script = replaceOnce(script, HOST_LINE, HOST_LINE.replace('wss://api.voipbin.net', `ws://127.0.0.1:${ports.listen}`));
    assert.equal(settings.ws_url, `ws://127.0.0.1:${ports.listen}/v1.0/ws`);

    const html = `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>tutorial example</title></head>
<body>
<h1>Call status: <span id="call-status">none</span></h1>
<div id="messages"></div>
<script src="/tutorial.js"></script>
</body>
</html>`;
    // The page's origin is the test's own loopback server.
    pages = await servePages({
      '/': { type: 'text/html; charset=utf-8', body: html },
      '/tutorial.js': { type: 'text/javascript; charset=utf-8', body: script },
    });
    browser = await launchBrowser();
    const page = await browser.newPage();
    const seen = watchConsole(page);
    // Beside the example (which prints only types): every event's data as it arrived.
    await page.addInitScript(() => {
      window.eventData = [];
      const Native = window.WebSocket;
      window.WebSocket = class extends Native {
        constructor(url, protocols) {
          super(url, protocols);
          this.addEventListener('message', (message) => {
            const frame = JSON.parse(message.data);
            if (frame.event_type) window.eventData.push(JSON.stringify(frame.data));
          });
        }
      };
    });
    await page.goto(pages.url);

    const received = () => seen.messages.filter((m) => m.text.startsWith('Received event: '));
    await waitFor('at least 10 "Received event: …" console messages', () => received().length >= 10, {
      timeoutMs: 20_000,
      detail: () => `console: ${JSON.stringify(seen.messages.slice(-20))}\n${demo.proc.tail()}`,
    });

    const texts = seen.messages.map((m) => m.text);
    assert.ok(texts.includes('WebSocket connection established'), texts.join('\n'));
    assert.ok(texts.includes('Subscribed to events'), texts.join('\n'));
    // Every frame the example read was an event with a type: nothing of the gateway's own
    // (errors, resume answers, gaps) reached a client that never asked for them.
    const types = received().map((m) => m.text.slice('Received event: '.length));
    assert.deepEqual(types.filter((t) => !/^(call|message)_[a-z_]+$/.test(t)), [], `event types: ${types.join(', ')}`);
    assert.ok(!texts.some((t) => t.startsWith('WebSocket connection closed')), texts.join('\n'));
    // Each event once, however many copies VoIPBIN sent (every event of the stream differs).
    const data = await page.evaluate(() => window.eventData);
    assert.equal(new Set(data).size, data.length, `an event twice: ${data.join('\n')}`);
    assert.deepEqual(seen.errors, [], 'no console error and no page error');
  } finally {
    await browser?.close();
    await pages?.close();
    await demo.proc.stop();
  }
});
}
