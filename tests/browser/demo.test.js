// `fanout-gateway demo`'s page in real Chromium (the scenario is in demo_page.js); a
// screenshot lands in target/browser/demo.png.

import path from 'node:path';
import { test } from 'node:test';

import { exerciseDemoPage } from './demo_page.js';
import { ROOT, launchBrowser, startDemo } from './support.js';

const SCREENSHOT = path.join(ROOT, 'target', 'browser', 'demo.png');

test('the demo page shows events, resumes after a dropped connection and shows an upstream gap', { timeout: 90_000 }, async () => {
  const demo = await startDemo({ eventRate: 10 });
  let browser;
  try {
    browser = await launchBrowser();
    await exerciseDemoPage(browser, demo, SCREENSHOT);
  } finally {
    await browser?.close();
    await demo.proc.stop();
  }
});
