// examples/minimal.html in Chromium: served from its own origin, it imports /intercessor.js from
// the relay (a cross-origin module) and opens a data channel between two people by a typed code.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import path from 'node:path';
import { after, before, describe } from 'node:test';
import { browserTest, chromiumMissing, launchBrowser } from './lib/browser.js';
import { assertIceStaysOnMachine, relayErrors, withPeople } from './lib/pages.js';
import { repoRoot, startRelay } from './lib/relay.js';

const example = readFileSync(path.join(repoRoot, 'examples', 'minimal.html'));

/** Serves the example page, and nothing else, on 127.0.0.1: an origin other than the relay's. */
async function serveExample() {
  const server = createServer((request, response) => {
    response.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
    response.end(example);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { origin: `http://127.0.0.1:${server.address().port}`, stop: () => new Promise((r) => server.close(r)) };
}

const status = (page) => page.locator('#status');

describe('examples/minimal.html', () => {
  let relay;
  let site;
  let browser;

  before(async () => {
    if (chromiumMissing()) return;
    relay = await startRelay();
    site = await serveExample();
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await site?.stop();
    await relay?.stop();
  });

  browserTest('opens a data channel by code, and text crosses both ways', () => {
    return withPeople('minimal example', browser, site.origin, async (open) => {
      const page = `/?relay=${encodeURIComponent(relay.origin)}`;
      const host = await open('host', page);
      const guest = await open('guest', page);
      await host.locator('#host').click();
      await status(host).filter({ hasText: /^code: / }).waitFor();
      const code = (await status(host).textContent()).replace('code: ', '');
      // As a person types it: lower case, with a dash.
      await guest.locator('#code').fill(`${code.slice(0, 3)}-${code.slice(3)}`.toLowerCase());
      await guest.locator('#join').click();
      for (const page of [host, guest]) await status(page).filter({ hasText: 'data channel open' }).waitFor();

      for (const [from, to, text] of [[guest, host, 'hello host'], [host, guest, 'hello guest']]) {
        await from.locator('#text').fill(text);
        await from.locator('#chat button').click();
        await to.locator('#log').filter({ hasText: `them: ${text}` }).waitFor();
      }
      await assertIceStaysOnMachine(host);
      assert.deepEqual(await relayErrors(host), []);
      assert.deepEqual(await relayErrors(guest), []);
    });
  });
});
