// The module exports exactly the values intercessor.d.ts declares, so the hand-written types
// cannot drift from the code by a name (tsc checks the rest: see types.check.ts).

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

test('intercessor.js exports what intercessor.d.ts declares', async () => {
  const declarations = readFileSync(new URL('../../src/demo/intercessor.d.ts', import.meta.url), 'utf8');
  const declared = [...declarations.matchAll(/^export (?:declare )?(?:class|function|const) (\w+)/gm)].map((m) => m[1]);
  const module = await import('../../src/demo/intercessor.js');
  assert.deepEqual(Object.keys(module).sort(), [...new Set(declared)].sort());
  const { Intercessor } = module;
  assert.deepEqual(Object.keys(Intercessor).sort(), ['host', 'join', 'normalizeCode']);
});
