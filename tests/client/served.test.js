// The library as the relay serves it at /intercessor.js: the file's bytes (so an integrity hash of
// the file holds), a JavaScript type, importable from other origins, and within its size budget.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { startRelay } from './lib/harness.js';

const source = readFileSync(new URL('../../src/demo/intercessor.js', import.meta.url));
const SIZE_BUDGET = 12 * 1024;

let relay;
before(async () => {
  relay = await startRelay();
});
after(() => relay?.stop());

test('/intercessor.js is the source file, as JavaScript, importable cross-origin, revalidated', async () => {
  const response = await fetch(`${relay.origin}/intercessor.js`, { headers: { Origin: 'https://app.example' } });
  assert.equal(response.status, 200);
  assert.equal(response.headers.get('content-type'), 'text/javascript; charset=utf-8');
  assert.equal(response.headers.get('access-control-allow-origin'), '*');
  assert.equal(response.headers.get('cache-control'), 'no-cache');
  assert.equal(response.headers.get('x-content-type-options'), 'nosniff');
  const body = Buffer.from(await response.arrayBuffer());
  assert.ok(body.equals(source), 'the served bytes differ from src/demo/intercessor.js');
  const integrity = `sha384-${createHash('sha384').update(source).digest('base64')}`;
  assert.equal(`sha384-${createHash('sha384').update(body).digest('base64')}`, integrity);
  console.log(`# <script type="module" integrity="${integrity}">`);
});

test(`the library stays within ${SIZE_BUDGET} bytes unminified`, () => {
  assert.ok(source.length <= SIZE_BUDGET, `src/demo/intercessor.js is ${source.length} bytes`);
});
