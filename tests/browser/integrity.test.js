// /intercessor.js loaded by a page on another origin with Subresource Integrity, as the README
// shows it: the file's sha384 lets it run (both as a module script and through an import map),
// any other hash stops it. This needs the relay's CORS header: integrity checks need CORS.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import path from 'node:path';
import { after, before, describe } from 'node:test';
import { browserTest, chromiumMissing, launchBrowser } from './lib/browser.js';
import { withPeople } from './lib/pages.js';
import { repoRoot, startRelay } from './lib/relay.js';

const source = readFileSync(path.join(repoRoot, 'src', 'demo', 'intercessor.js'));
const integrity = `sha384-${createHash('sha384').update(source).digest('base64')}`;
const wrong = `sha384-${createHash('sha384').update('something else').digest('base64')}`;

// Each page sets window.loaded to what it found: the module's export, or the loading error.
const pages = {
  '/script': (library, hash) => `<!doctype html>
<script type="module" src="${library}" integrity="${hash}" crossorigin="anonymous"
  onerror="window.loaded = 'refused'"></script>
<script type="module">
  import { Intercessor } from '${library}';
  window.loaded = typeof Intercessor.host;
</script>`,
  '/importmap': (library, hash) => `<!doctype html>
<script type="importmap">${JSON.stringify({ integrity: { [library]: hash } })}</script>
<script type="module">
  import('${library}').then(({ Intercessor }) => (window.loaded = typeof Intercessor.host), () => (window.loaded = 'refused'));
</script>`,
};

describe('/intercessor.js with integrity, from another origin', () => {
  let relay;
  let site;
  let browser;

  before(async () => {
    if (chromiumMissing()) return;
    relay = await startRelay();
    const library = `${relay.origin}/intercessor.js`;
    site = createServer((request, response) => {
      const url = new URL(request.url, 'http://page');
      const page = pages[url.pathname];
      response.writeHead(page ? 200 : 404, { 'Content-Type': 'text/html; charset=utf-8' });
      response.end(page ? page(library, url.searchParams.get('hash')) : '');
    });
    await new Promise((resolve) => site.listen(0, '127.0.0.1', resolve));
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await new Promise((resolve) => (site ? site.close(resolve) : resolve()));
    await relay?.stop();
  });

  for (const kind of Object.keys(pages)) {
    browserTest(`${kind.slice(1)}: the file's sha384 runs it, another hash does not`, () => {
      const origin = `http://127.0.0.1:${site.address().port}`;
      return withPeople(`integrity ${kind}`, browser, origin, async (open) => {
        for (const [hash, expected] of [[integrity, 'function'], [wrong, 'refused']]) {
          const page = await open(`${kind} ${expected}`, `${kind}?hash=${encodeURIComponent(hash)}`);
          await page.waitForFunction(() => window.loaded !== undefined);
          assert.equal(await page.evaluate(() => window.loaded), expected, `${kind} with ${hash}`);
        }
      });
    });
  }
});
