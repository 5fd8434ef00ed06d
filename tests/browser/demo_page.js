// The demo page's scenario in real Chromium, for `fanout-gateway demo` and for the cluster
// demo behind its load balancer: it connects, shows events with cursors, resumes after
// "Drop the connection" with nothing missed, shows a gap after "Drop the upstream" (VoIPBIN
// holds one connection for the customer), and renders (a screenshot is written).

import assert from 'node:assert/strict';
import { mkdirSync, statSync } from 'node:fs';
import path from 'node:path';

import { parseCursor, waitFor, watchConsole } from './support.js';

/** The page's event rows in arrival order (the list shows the newest first). */
function eventRows(page) {
  return page.$$eval('#events li.event', (rows) => rows.reverse().map((li) => ({
    type: li.dataset.eventType,
    topic: li.dataset.topic,
    cursor: li.dataset.cursor ?? null,
    replayed: li.classList.contains('replayed'),
  })));
}

/** Asserts that `rows` (arrival order) have cursors of one epoch whose offsets go up by one. */
function assertContiguous(rows, what) {
  const cursors = rows.map((row) => row.cursor);
  assert.ok(cursors.every((c) => typeof c === 'string'), `${what}: every row has a cursor: ${cursors}`);
  const parsed = cursors.map(parseCursor);
  for (let i = 1; i < parsed.length; i += 1) {
    assert.equal(parsed[i].epoch, parsed[0].epoch, `${what}: one epoch: ${cursors}`);
    assert.equal(parsed[i].offset, parsed[i - 1].offset + 1n,
      `${what}: cursor ${cursors[i]} follows ${cursors[i - 1]} (nothing missed, nothing repeated): ${cursors.join(' ')}`);
  }
}

/**
 * Runs the scenario in a new page of `browser` against `demo` ({ pageUrl, settings, proc }),
 * writing a screenshot to `screenshot`.
 */
export async function exerciseDemoPage(browser, demo, screenshot) {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const seen = watchConsole(page);
    // For failure messages: what the page sent and every frame it got that is not an event.
    await page.addInitScript(() => {
      window.testWire = [];
      const Native = window.WebSocket;
      let sockets = 0;
      window.WebSocket = class extends Native {
        constructor(url, protocols) {
          super(url, protocols);
          const socket = ++sockets;
          this.testSocket = socket;
          this.addEventListener('message', (message) => {
            if (!String(message.data).includes('"event_type"')) window.testWire.push({ socket, in: String(message.data) });
          });
          this.addEventListener('close', (event) => window.testWire.push({ socket, closed: event.code }));
        }
        send(data) {
          window.testWire.push({ socket: this.testSocket, out: String(data) });
          super.send(data);
        }
      };
    });
    await page.goto(demo.pageUrl);
    const detail = async () => `notices: ${JSON.stringify(await page.$$eval('#notices li', (l) => l.map((li) => `${li.className}: ${li.textContent}`)))}\n`
      + `wire (events left out): ${JSON.stringify(await page.evaluate(() => window.testWire))}\n`
      + `rows: ${JSON.stringify((await eventRows(page)).slice(-10))}\nconsole: ${JSON.stringify(seen.messages.slice(-10))}\n${demo.proc.tail(15)}`;

    await waitFor('#state open', async () => (await page.getAttribute('#state', 'data-state')) === 'open', { detail });
    assert.equal(await page.textContent('#state'), 'open');
    assert.equal(await page.textContent('#customer'), demo.settings.customer_id);
    await waitFor('5 event rows', async () => (await eventRows(page)).length >= 5, { timeoutMs: 15_000, detail });
    const first = await eventRows(page);
    for (const row of first) {
      assert.match(row.topic, new RegExp(`^customer_id:${demo.settings.customer_id}:`));
      assert.match(row.type, /^[a-z]+_[a-z_]+$/);
    }
    assertContiguous(first, 'before the drop');
    // Read together: at 20 events a second another may arrive between two reads.
    const counted = await page.evaluate(() => ({
      rows: document.querySelectorAll('#events li.event').length,
      received: document.querySelector('#received').textContent,
    }));
    assert.equal(counted.received, String(counted.rows));

    // "Drop the connection": a new WebSocket at once, resuming from the last cursor. The
    // demo's one browser comes back within the upstream's linger: nothing may be missed.
    const before = (await eventRows(page)).length;
    await page.click('#drop-connection');
    await waitFor('a li.resumed notice', async () => (await page.$$('#notices li.resumed')).length === 1, { detail });
    await waitFor('#state open again', async () => (await page.getAttribute('#state', 'data-state')) === 'open', { detail });
    await waitFor('5 more events after the resume', async () => (await eventRows(page)).length >= before + 5, { timeoutMs: 15_000, detail });
    const resumed = await eventRows(page);
    assertContiguous(resumed, 'across the dropped connection');
    assert.equal((await page.$$('#notices li.lost')).length, 0, await detail());
    assert.equal((await page.$$('#notices li.gap')).length, 0, await detail());

    // "Drop the upstream": the simulator drops the gateway's connection to VoIPBIN; the page
    // is told events may have been lost, then events go on.
    const beforeGap = (await eventRows(page)).length;
    await page.click('#drop-upstream');
    await waitFor('a li.gap notice', async () => (await page.$$('#notices li.gap')).length >= 1, { timeoutMs: 15_000, detail });
    const gapText = await page.textContent('#notices li.gap');
    assert.match(gapText, /Gap \(upstream_reconnect\)/);
    const info = await page.$$eval('#notices li.info', (l) => l.map((li) => li.textContent));
    // One connection per kind of topic the page watches (each names its resource).
    const connections = demo.settings.topics.length;
    assert.ok(info.some((text) => text.includes(`(${connections} connection(s))`)), `info notices: ${info}`);
    await waitFor('events after the gap', async () => (await eventRows(page)).length >= beforeGap + 5, { timeoutMs: 15_000, detail });
    const after = (await eventRows(page)).slice(beforeGap);
    assert.ok(after.every((row) => typeof row.cursor === 'string'), JSON.stringify(after));
    assert.equal(await page.getAttribute('#state', 'data-state'), 'open');

    mkdirSync(path.dirname(screenshot), { recursive: true });
    await page.screenshot({ path: screenshot, fullPage: true });
    assert.ok(statSync(screenshot).size > 0, `${screenshot} is not empty`);
    assert.deepEqual(seen.errors, [], 'no console error and no page error');
}
