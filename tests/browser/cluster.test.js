// `scripts/cluster-demo` in real Chromium: the demo page through HAProxy in front of three
// gateway nodes on NATS. The page's scenario (demo_page.js) runs as it does against one node:
// a dropped connection comes back through the load balancer, to whichever node, and resumes
// with nothing missed; a dropped upstream is one connection for the whole fleet, and shows a
// gap. Sessions of the customer on every node keep each node's entry (and the owner) in
// place while the page moves; VoIPBIN holds one upstream for the customer throughout. A
// screenshot lands in target/browser/cluster-demo.png.

import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';

import { exerciseDemoPage } from './demo_page.js';
import { ROOT, http, launchBrowser, startClusterDemo, waitFor } from './support.js';

const SCREENSHOT = path.join(ROOT, 'target', 'browser', 'cluster-demo.png');

test('the demo page works through the cluster demo, with the connections of one node for the fleet', { timeout: 120_000 }, async () => {
  const demo = await startClusterDemo({ eventRate: 10 });
  let browser;
  try {
    browser = await launchBrowser();
    // A session on every node, straight to it.
    const keeper = await browser.newPage();
    // From a page of the loopback origin: Chromium lets it reach loopback.
    await keeper.goto(demo.pageUrl);
    await keeper.evaluate(([nodes, token, topics]) => {
      window.received = nodes.map(() => 0);
      window.keep = nodes.map((url, i) => {
        const ws = new WebSocket(`${url}?token=${encodeURIComponent(token)}`);
        ws.onopen = () => ws.send(JSON.stringify({ type: 'subscribe', topics }));
        ws.onmessage = (message) => {
          if (String(message.data).includes('"event_type"')) window.received[i] += 1;
        };
        return ws;
      });
    }, [demo.nodes, demo.settings.token, demo.settings.topics]);
    const detail = async () => `${demo.proc.tail(20)}\nsim: ${JSON.stringify((await http(`${demo.simUrl}/_sim/stats`)).body)}`;
    await waitFor('events on every node', async () => (await keeper.evaluate(() => window.received)).every((n) => n >= 3),
      { timeoutMs: 20_000, detail });

    await exerciseDemoPage(browser, demo, SCREENSHOT);

    const upstreams = async () => (await http(`${demo.simUrl}/_sim/stats`)).body.customers[demo.settings.customer_id]?.connections;
    // The connections one node would hold (one per kind of topic watched), for the fleet.
    const connections = demo.settings.topics.length;
    await waitFor('one set of upstreams for the fleet', async () => (await upstreams()) === connections, { detail });
    // Every node still delivers.
    const before = await keeper.evaluate(() => window.received);
    await waitFor('events on every node after the scenario', async () => {
      const now = await keeper.evaluate(() => window.received);
      return now.every((n, i) => n >= before[i] + 3);
    }, { timeoutMs: 20_000, detail });
    assert.equal(await upstreams(), connections, await detail());
  } finally {
    await browser?.close();
    await demo.proc.stop();
  }
});
