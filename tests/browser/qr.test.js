// src/demo/qr.js, checked against an independent decoder (npm's jsqr) and the standard's numbers.
// No browser needed: the encoder is plain JavaScript.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { test } from 'node:test';
import { repoRoot } from './lib/relay.js';

const require = createRequire(import.meta.url);
const jsQR = require('jsqr');

// qr.js is an ES module served to browsers; load its exact text (src/demo has no package.json
// telling Node that .js files there are modules).
const source = readFileSync(path.join(repoRoot, 'src', 'demo', 'qr.js'), 'utf8');
const qr = await import(`data:text/javascript;base64,${Buffer.from(source).toString('base64')}`);

const SCALE = 4;
const QUIET = 4;

/** RGBA pixels of a symbol, `SCALE` pixels a module, with its quiet zone. */
function render(symbol, flip = () => false) {
  const width = (symbol.size + 2 * QUIET) * SCALE;
  const data = new Uint8ClampedArray(width * width * 4);
  for (let py = 0; py < width; py++) {
    for (let px = 0; px < width; px++) {
      const x = Math.floor(px / SCALE) - QUIET;
      const y = Math.floor(py / SCALE) - QUIET;
      const dark = symbol.isDark(x, y) !== flip(x, y);
      const i = (py * width + px) * 4;
      data[i] = data[i + 1] = data[i + 2] = dark ? 0 : 255;
      data[i + 3] = 255;
    }
  }
  return { data, width };
}

function decode(symbol, flip) {
  const { data, width } = render(symbol, flip);
  return jsQR(data, width, width, { inversionAttempts: 'dontInvert' });
}

// Byte-mode capacity at level M, versions 1–10, from the standard's table 7.
const BYTES_AT_M = [14, 26, 42, 62, 84, 106, 122, 152, 180, 213];

/** A join link about `length` characters long, like the ones the demo encodes. */
function link(length, seed = 0) {
  const base = `https://relay${seed}.example.org/?code=7KQ2MX`;
  let text = base;
  while (text.length < length) text += `&p${text.length}=${(text.length * 7919 + seed).toString(36)}`;
  return text.slice(0, length);
}

test('join links of many lengths decode back to the same text', () => {
  const lengths = [1, 20, 33, 47, 60, 90, 120, 150, 200, 213, 300, 600, 1200, 2331];
  for (const [seed, length] of lengths.entries()) {
    const text = link(length, seed);
    const symbol = qr.encodeQR(text);
    const result = decode(symbol);
    assert.ok(result, `length ${length} (version ${symbol.version}) did not decode`);
    assert.equal(result.data, text);
    assert.equal(result.version, symbol.version);
  }
});

test('real-looking demo links round-trip', () => {
  for (const text of [
    'http://127.0.0.1:8080/?code=7KQ2MX',
    'https://localhost:8443/?code=0123456789ABCDEF',
    'https://signal.example.com/?code=ZZZZZZ',
    'https://intercessor-demo.example.net:443/?code=AB12CD',
  ]) {
    const result = decode(qr.encodeQR(text));
    assert.equal(result?.data, text);
  }
});

test('UTF-8 text round-trips', () => {
  const text = 'Grüße, 世界! ✓ https://example.com/?q=ünïcödé';
  assert.equal(decode(qr.encodeQR(text))?.data, text);
});

test('the smallest version that fits is chosen, at the standard capacities', () => {
  for (const [index, bytes] of BYTES_AT_M.entries()) {
    const version = index + 1;
    assert.equal(qr.encodeQR('x'.repeat(bytes)).version, version, `${bytes} bytes fit version ${version}`);
    assert.equal(qr.encodeQR('x'.repeat(bytes + 1)).version, version + 1, `${bytes + 1} bytes need version ${version + 1}`);
    const symbol = qr.encodeQR('y'.repeat(bytes));
    assert.equal(symbol.size, 17 + 4 * version);
    assert.equal(decode(symbol)?.data, 'y'.repeat(bytes));
  }
  assert.throws(() => qr.encodeQR('z'.repeat(2332)), RangeError);
});

test('every one of the eight masks decodes', () => {
  for (let mask = 0; mask < 8; mask++) {
    for (const length of [30, 150]) {
      const text = link(length, mask);
      const symbol = qr.encodeQR(text, { mask });
      assert.equal(symbol.mask, mask);
      assert.equal(decode(symbol)?.data, text, `mask ${mask}, length ${length}`);
    }
  }
});

test('the chosen mask has the lowest penalty', () => {
  for (const length of [10, 50, 100, 200]) {
    const text = link(length, length);
    const chosen = qr.encodeQR(text);
    const score = (symbol) => qr.penalty({ size: symbol.size, dark: symbol.modules });
    for (let mask = 0; mask < 8; mask++) {
      assert.ok(score(chosen) <= score(qr.encodeQR(text, { mask })), `mask ${mask} beats mask ${chosen.mask}`);
    }
  }
});

test('the second copy of the format information is right too', () => {
  // jsqr reads the copy around the top-left finder first; wreck that copy and it must use the
  // other one, under the top-right finder and beside the bottom-left one.
  for (let mask = 0; mask < 8; mask++) {
    const text = link(40, mask);
    const symbol = qr.encodeQR(text, { mask });
    const topLeftCopy = (x, y) => (y === 8 && x <= 8 && x !== 6 && x % 2 === 0) || (x === 8 && y <= 7 && y !== 6 && y % 2 === 1);
    assert.equal(decode(symbol, topLeftCopy)?.data, text, `mask ${mask} with the first format copy damaged`);
  }
});

test('version information is right in both blocks (versions 7 and up)', () => {
  for (const version of [7, 8, 9, 10, 16, 24, 32, 40]) {
    const [ecPerBlock, blocks] = [qr.capacity(version).ecPerBlock, qr.capacity(version).blocks];
    assert.ok(ecPerBlock > 0 && blocks > 0);
    const bytes = qr.capacity(version).data - 3; // fills this version, not the one before
    const text = link(bytes, version);
    const symbol = qr.encodeQR(text);
    assert.equal(symbol.version, version);
    const size = symbol.size;
    // Wreck one block at a time: the other must still name the version.
    const topRight = (x, y) => y < 6 && x >= size - 11 && x < size - 8 && (x + y) % 2 === 0;
    const bottomLeft = (x, y) => x < 6 && y >= size - 11 && y < size - 8 && (x + y) % 2 === 0;
    assert.equal(decode(symbol, topRight)?.data, text, `version ${version}, top-right block damaged`);
    assert.equal(decode(symbol, bottomLeft)?.data, text, `version ${version}, bottom-left block damaged`);
  }
});

test('known values from the standard', () => {
  // Annex I's worked example: data codewords of "01234567" at 1-M and their 10 EC codewords.
  const data = [0x10, 0x20, 0x0c, 0x56, 0x61, 0x80, 0xec, 0x11, 0xec, 0x11, 0xec, 0x11, 0xec, 0x11, 0xec, 0x11];
  assert.deepEqual(qr.reedSolomon(data, 10), [0xa5, 0x24, 0xd4, 0xc1, 0xed, 0x36, 0xc7, 0x87, 0x2c, 0x55]);
  // Format information, level M: masks 0–7 (table C.1).
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5, 6, 7].map((mask) => qr.formatBits(mask)),
    [0x5412, 0x5125, 0x5e7c, 0x5b4b, 0x45f9, 0x40ce, 0x4f97, 0x4aa0],
  );
  // Version information (table D.1).
  assert.equal(qr.versionBits(7), 0x07c94);
  assert.equal(qr.versionBits(10), 0x0a4d3);
  assert.equal(qr.versionBits(40), 0x28c69);
  // Codeword counts at level M (table 9): total and data codewords.
  const expected = { 1: [26, 16], 2: [44, 28], 5: [134, 86], 7: [196, 124], 10: [346, 216], 14: [581, 365], 40: [3706, 2334] };
  for (const [version, [total, dataCount]] of Object.entries(expected)) {
    const capacity = qr.capacity(Number(version));
    assert.deepEqual([capacity.total, capacity.data], [total, dataCount], `version ${version}`);
  }
});

test('every block is a Reed–Solomon codeword (checked with an independent GF(256))', () => {
  // Multiply without log tables, evaluate each block's polynomial at α^0…α^(n-1): all zero.
  const mul = (a, b) => {
    let product = 0;
    for (; b; b >>= 1) {
      if (b & 1) product ^= a;
      a = a & 0x80 ? ((a << 1) ^ 0x11d) & 0xff : a << 1;
    }
    return product;
  };
  for (const version of [1, 5, 9, 10, 20, 40]) {
    const { data } = qr.capacity(version);
    const codewords = Array.from({ length: data }, (_, i) => (i * 37 + version) & 0xff);
    for (const block of qr.makeBlocks(codewords, version)) {
      const word = [...block.data, ...block.ec];
      for (let root = 0, alpha = 1; root < block.ec.length; root++, alpha = mul(alpha, 2)) {
        const value = word.reduce((sum, coefficient) => mul(sum, alpha) ^ coefficient, 0);
        assert.equal(value, 0, `version ${version}: block is not a codeword (root ${root})`);
      }
    }
  }
});

test('the SVG drawing has one module per dark square, with a quiet zone', async () => {
  // A minimal stand-in for the DOM calls qrSvg makes.
  const element = (name) => ({
    name,
    attributes: {},
    children: [],
    setAttribute(key, value) {
      this.attributes[key] = value;
    },
    append(...nodes) {
      this.children.push(...nodes);
    },
  });
  const doc = { createElementNS: (_ns, name) => element(name) };
  const text = 'http://127.0.0.1:8080/?code=7KQ2MX';
  const svg = qr.qrSvg(doc, text);
  const symbol = qr.encodeQR(text);
  const extent = symbol.size + 8;
  assert.equal(svg.attributes.viewBox, `0 0 ${extent} ${extent}`);
  const path = svg.children.find((node) => node.name === 'path');
  let area = 0;
  for (const [, run] of path.attributes.d.matchAll(/h(\d+)v1/g)) area += Number(run);
  assert.equal(area, symbol.modules.reduce((sum, module) => sum + module, 0));
});
