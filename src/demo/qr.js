// A small QR Code encoder for the Intercessor demo, written from ISO/IEC 18004.
//
// It encodes text as UTF-8 in byte mode at error correction level M (15 % of the symbol can be
// damaged), picks the smallest version (1–40) that fits, tries all eight masks and keeps the one
// with the lowest penalty, and writes the format and version information.
//
//   import { encodeQR, qrSvg } from './qr.js';
//   const qr = encodeQR('https://example.com/?code=7KQ2MX');   // { version, size, mask, isDark(x, y) }
//   container.append(qrSvg(document, 'https://example.com/?code=7KQ2MX', { label: 'Join link' }));

// ---------------------------------------------------------------------------------------------
// Tables

// Level M, per version: [error correction codewords per block, number of blocks].
const LEVEL_M_BLOCKS = [
  null,
  [10, 1], [16, 1], [26, 1], [18, 2], [24, 2], [16, 4], [18, 4], [22, 4], [22, 5], [26, 5],
  [30, 5], [22, 8], [22, 9], [24, 9], [24, 10], [28, 10], [28, 11], [26, 13], [26, 14], [26, 16],
  [26, 17], [28, 17], [28, 18], [28, 20], [28, 21], [28, 23], [28, 25], [28, 26], [28, 28], [28, 29],
  [28, 31], [28, 33], [28, 35], [28, 37], [28, 38], [28, 40], [28, 43], [28, 45], [28, 47], [28, 49],
];

// Two-bit code of level M in the format information (L = 01, M = 00, Q = 11, H = 10).
const LEVEL_M_FORMAT_BITS = 0b00;

const BYTE_MODE = 0b0100;

// Generator polynomials of the BCH codes protecting the format (15,5) and version (18,6) fields.
const FORMAT_GENERATOR = 0b10100110111;
const FORMAT_XOR_MASK = 0b101010000010010;
const VERSION_GENERATOR = 0b1111100100101;

// Penalty weights of the mask evaluation (N1–N4 in the standard).
const PENALTY_RUN = 3;
const PENALTY_BLOCK = 3;
const PENALTY_FINDER = 40;
const PENALTY_BALANCE = 10;

// ---------------------------------------------------------------------------------------------
// Arithmetic in GF(256) modulo x^8 + x^4 + x^3 + x^2 + 1, and Reed–Solomon

const GF_EXP = new Uint8Array(512);
const GF_LOG = new Uint8Array(256);
{
  let value = 1;
  for (let power = 0; power < 255; power++) {
    GF_EXP[power] = value;
    GF_LOG[value] = power;
    value <<= 1;
    if (value & 0x100) value ^= 0x11d;
  }
  for (let power = 255; power < 512; power++) GF_EXP[power] = GF_EXP[power - 255];
}

function gfMultiply(a, b) {
  return a === 0 || b === 0 ? 0 : GF_EXP[GF_LOG[a] + GF_LOG[b]];
}

const generatorCache = new Map();

// The monic polynomial (x - α^0)(x - α^1)…(x - α^(degree-1)), coefficients from the highest power.
function rsGenerator(degree) {
  let poly = generatorCache.get(degree);
  if (poly) return poly;
  poly = [1];
  for (let root = 0; root < degree; root++) {
    const next = new Array(poly.length + 1).fill(0);
    for (let i = 0; i < poly.length; i++) {
      next[i] ^= poly[i];
      next[i + 1] ^= gfMultiply(poly[i], GF_EXP[root]);
    }
    poly = next;
  }
  generatorCache.set(degree, poly);
  return poly;
}

/** The `ecCount` error correction codewords for `data`: the remainder of data·x^ecCount ÷ generator. */
export function reedSolomon(data, ecCount) {
  const generator = rsGenerator(ecCount);
  const work = [...data, ...new Array(ecCount).fill(0)];
  for (let i = 0; i < data.length; i++) {
    const factor = work[i];
    if (factor === 0) continue;
    for (let j = 1; j < generator.length; j++) work[i + j] ^= gfMultiply(generator[j], factor);
  }
  return work.slice(data.length);
}

// ---------------------------------------------------------------------------------------------
// Symbol geometry

function sizeOf(version) {
  return 17 + 4 * version;
}

// Row/column centres of the alignment patterns: 6, then evenly spaced (by an even step) up to size - 7.
function alignmentCentres(version) {
  if (version === 1) return [];
  const count = Math.floor(version / 7) + 2;
  const last = sizeOf(version) - 7;
  const step = version === 32 ? 26 : 2 * Math.ceil((last - 6) / (2 * (count - 1)));
  const centres = [];
  for (let i = 0; i < count - 1; i++) centres.unshift(last - i * step);
  centres.unshift(6);
  return centres;
}

// The remainder of value·x^degree ÷ generator, over GF(2).
function bchRemainder(value, generator, degree) {
  let rest = value << degree;
  for (let bit = 31 - Math.clz32(rest); bit >= degree; bit--) {
    if ((rest >>> bit) & 1) rest ^= generator << (bit - degree);
  }
  return rest;
}

/** The 15 format bits for level M and `mask`. */
export function formatBits(mask) {
  const data = (LEVEL_M_FORMAT_BITS << 3) | mask;
  return ((data << 10) | bchRemainder(data, FORMAT_GENERATOR, 10)) ^ FORMAT_XOR_MASK;
}

/** The 18 version bits (versions 7 and up). */
export function versionBits(version) {
  return (version << 12) | bchRemainder(version, VERSION_GENERATOR, 12);
}

// A square of modules; `reserved` marks function patterns, which data and masks never touch.
class Grid {
  constructor(version) {
    this.version = version;
    this.size = sizeOf(version);
    this.dark = new Uint8Array(this.size * this.size);
    this.reserved = new Uint8Array(this.size * this.size);
  }

  setFunction(x, y, dark) {
    const i = y * this.size + x;
    this.dark[i] = dark ? 1 : 0;
    this.reserved[i] = 1;
  }

  isReserved(x, y) {
    return this.reserved[y * this.size + x] === 1;
  }

  isDark(x, y) {
    return this.dark[y * this.size + x] === 1;
  }
}

function drawFinder(grid, centreX, centreY) {
  // A 7×7 ring-in-ring with its light separator: distance 2 and 4 from the centre are light.
  for (let dy = -4; dy <= 4; dy++) {
    for (let dx = -4; dx <= 4; dx++) {
      const x = centreX + dx;
      const y = centreY + dy;
      if (x < 0 || y < 0 || x >= grid.size || y >= grid.size) continue;
      const ring = Math.max(Math.abs(dx), Math.abs(dy));
      grid.setFunction(x, y, ring !== 2 && ring !== 4);
    }
  }
}

function drawAlignment(grid, centreX, centreY) {
  for (let dy = -2; dy <= 2; dy++) {
    for (let dx = -2; dx <= 2; dx++) {
      grid.setFunction(centreX + dx, centreY + dy, Math.max(Math.abs(dx), Math.abs(dy)) !== 1);
    }
  }
}

// Finder, timing and alignment patterns, plus placeholders for format and version information.
function drawFunctionPatterns(grid) {
  const { size, version } = grid;
  for (let i = 0; i < size; i++) {
    grid.setFunction(6, i, i % 2 === 0);
    grid.setFunction(i, 6, i % 2 === 0);
  }
  drawFinder(grid, 3, 3);
  drawFinder(grid, size - 4, 3);
  drawFinder(grid, 3, size - 4);
  const centres = alignmentCentres(version);
  const last = centres.length - 1;
  for (let i = 0; i < centres.length; i++) {
    for (let j = 0; j < centres.length; j++) {
      // Skip the three corners taken by finder patterns.
      if ((i === 0 && j === 0) || (i === 0 && j === last) || (i === last && j === 0)) continue;
      drawAlignment(grid, centres[i], centres[j]);
    }
  }
  drawFormat(grid, 0);
  drawVersion(grid);
}

// Writes the format bits twice: around the top-left finder, and split between the other two.
// Bit 0 is the least significant of the 15.
function drawFormat(grid, mask) {
  const bits = formatBits(mask);
  const bit = (i) => ((bits >>> i) & 1) === 1;
  const { size } = grid;
  // Copy 1: up column 8 from row 0 (skipping the timing row), then along row 8 leftwards.
  for (let i = 0; i <= 5; i++) grid.setFunction(8, i, bit(i));
  grid.setFunction(8, 7, bit(6));
  grid.setFunction(8, 8, bit(7));
  grid.setFunction(7, 8, bit(8));
  for (let i = 9; i < 15; i++) grid.setFunction(14 - i, 8, bit(i));
  // Copy 2: bits 0–7 along row 8 under the top-right finder, bits 8–14 down column 8 beside the
  // bottom-left one.
  for (let i = 0; i < 8; i++) grid.setFunction(size - 1 - i, 8, bit(i));
  for (let i = 8; i < 15; i++) grid.setFunction(8, size - 15 + i, bit(i));
  // The dark module, always dark.
  grid.setFunction(8, size - 8, true);
}

// Two 6×3 blocks, beside the top-right and bottom-left finders, for versions 7 and up.
function drawVersion(grid) {
  if (grid.version < 7) return;
  const bits = versionBits(grid.version);
  for (let i = 0; i < 18; i++) {
    const dark = ((bits >>> i) & 1) === 1;
    const across = grid.size - 11 + (i % 3);
    const down = Math.floor(i / 3);
    grid.setFunction(across, down, dark);
    grid.setFunction(down, across, dark);
  }
}

function countDataModules(version) {
  const grid = new Grid(version);
  drawFunctionPatterns(grid);
  return grid.reserved.reduce((free, reserved) => free + (reserved ? 0 : 1), 0);
}

// ---------------------------------------------------------------------------------------------
// Data codewords

const capacityCache = new Map();

/** Codeword counts of `version` at level M: total, data, and the block layout. */
export function capacity(version) {
  let found = capacityCache.get(version);
  if (found) return found;
  const [ecPerBlock, blocks] = LEVEL_M_BLOCKS[version];
  const total = Math.floor(countDataModules(version) / 8);
  found = { total, data: total - ecPerBlock * blocks, ecPerBlock, blocks };
  capacityCache.set(version, found);
  return found;
}

function countBits(version) {
  return version <= 9 ? 8 : 16;
}

class BitWriter {
  constructor() {
    this.bits = [];
  }

  write(value, length) {
    for (let i = length - 1; i >= 0; i--) this.bits.push((value >>> i) & 1);
  }
}

// Mode, count, bytes, terminator, padding: exactly `capacity(version).data` codewords.
function dataCodewords(bytes, version) {
  const { data } = capacity(version);
  const writer = new BitWriter();
  writer.write(BYTE_MODE, 4);
  writer.write(bytes.length, countBits(version));
  for (const byte of bytes) writer.write(byte, 8);
  const room = data * 8;
  writer.write(0, Math.min(4, room - writer.bits.length));
  writer.write(0, (8 - (writer.bits.length % 8)) % 8);
  const codewords = [];
  for (let i = 0; i < writer.bits.length; i += 8) {
    let byte = 0;
    for (let j = 0; j < 8; j++) byte = (byte << 1) | writer.bits[i + j];
    codewords.push(byte);
  }
  for (let pad = 0xec; codewords.length < data; pad ^= 0xec ^ 0x11) codewords.push(pad);
  return codewords;
}

/**
 * Splits data codewords into the version's blocks (the shorter ones first) and adds each block's
 * error correction codewords.
 */
export function makeBlocks(codewords, version) {
  const { total, ecPerBlock, blocks: count } = capacity(version);
  const longBlocks = total % count;
  const shortLength = Math.floor(total / count) - ecPerBlock;
  const blocks = [];
  let offset = 0;
  for (let i = 0; i < count; i++) {
    const length = shortLength + (i >= count - longBlocks ? 1 : 0);
    const data = codewords.slice(offset, offset + length);
    offset += length;
    blocks.push({ data, ec: reedSolomon(data, ecPerBlock) });
  }
  return blocks;
}

// Data codewords of all blocks interleaved column by column, then their EC codewords likewise.
function interleave(blocks) {
  const out = [];
  const longest = Math.max(...blocks.map((block) => block.data.length));
  for (let i = 0; i < longest; i++) {
    for (const block of blocks) if (i < block.data.length) out.push(block.data[i]);
  }
  for (let i = 0; i < blocks[0].ec.length; i++) {
    for (const block of blocks) out.push(block.ec[i]);
  }
  return out;
}

// Fills the free modules in two-column strips from the bottom-right, zigzagging up and down and
// skipping the vertical timing column; leftover remainder bits stay light.
function placeCodewords(grid, codewords) {
  const { size } = grid;
  const totalBits = codewords.length * 8;
  let index = 0;
  let upward = true;
  for (let right = size - 1; right > 0; right -= 2) {
    if (right === 6) right = 5;
    for (let step = 0; step < size; step++) {
      const y = upward ? size - 1 - step : step;
      for (const x of [right, right - 1]) {
        if (grid.isReserved(x, y)) continue;
        if (index < totalBits) {
          grid.dark[y * size + x] = (codewords[index >>> 3] >>> (7 - (index & 7))) & 1;
        }
        index++;
      }
    }
    upward = !upward;
  }
}

// ---------------------------------------------------------------------------------------------
// Masks

const MASKS = [
  (x, y) => (x + y) % 2 === 0,
  (x, y) => y % 2 === 0,
  (x, y) => x % 3 === 0,
  (x, y) => (x + y) % 3 === 0,
  (x, y) => (Math.floor(y / 2) + Math.floor(x / 3)) % 2 === 0,
  (x, y) => ((x * y) % 2) + ((x * y) % 3) === 0,
  (x, y) => (((x * y) % 2) + ((x * y) % 3)) % 2 === 0,
  (x, y) => (((x + y) % 2) + ((x * y) % 3)) % 2 === 0,
];

function applyMask(grid, mask) {
  const flip = MASKS[mask];
  for (let y = 0; y < grid.size; y++) {
    for (let x = 0; x < grid.size; x++) {
      if (!grid.isReserved(x, y) && flip(x, y)) grid.dark[y * grid.size + x] ^= 1;
    }
  }
}

// Dark/light sequences 1:1:3:1:1 with four light modules on one side look like finder patterns.
const FINDER_LIKE = [
  [1, 0, 1, 1, 1, 0, 1, 0, 0, 0, 0],
  [0, 0, 0, 0, 1, 0, 1, 1, 1, 0, 1],
];

function linePenalty(line) {
  let score = 0;
  // Runs of five or more modules of one colour.
  let runLength = 1;
  for (let i = 1; i <= line.length; i++) {
    if (i < line.length && line[i] === line[i - 1]) {
      runLength++;
    } else {
      if (runLength >= 5) score += PENALTY_RUN + (runLength - 5);
      runLength = 1;
    }
  }
  // Finder-like patterns; the quiet zone around the symbol counts as light.
  const padded = [0, 0, 0, 0, ...line, 0, 0, 0, 0];
  for (let start = 0; start + 11 <= padded.length; start++) {
    for (const pattern of FINDER_LIKE) {
      let same = true;
      for (let k = 0; k < 11 && same; k++) same = padded[start + k] === pattern[k];
      if (same) score += PENALTY_FINDER;
    }
  }
  return score;
}

/** The mask penalty of a finished symbol (rules N1–N4). */
export function penalty(grid) {
  const { size, dark } = grid;
  let score = 0;
  for (let i = 0; i < size; i++) {
    const row = Array.from(dark.subarray(i * size, (i + 1) * size));
    const column = Array.from({ length: size }, (_, y) => dark[y * size + i]);
    score += linePenalty(row) + linePenalty(column);
  }
  for (let y = 0; y + 1 < size; y++) {
    for (let x = 0; x + 1 < size; x++) {
      const colour = dark[y * size + x];
      if (
        dark[y * size + x + 1] === colour &&
        dark[(y + 1) * size + x] === colour &&
        dark[(y + 1) * size + x + 1] === colour
      ) {
        score += PENALTY_BLOCK;
      }
    }
  }
  const darkCount = dark.reduce((sum, module) => sum + module, 0);
  const percent = (darkCount * 100) / (size * size);
  score += PENALTY_BALANCE * Math.floor(Math.abs(percent - 50) / 5);
  return score;
}

// ---------------------------------------------------------------------------------------------
// Public API

/** The smallest version that holds `byteLength` bytes in byte mode at level M, or 0. */
export function versionFor(byteLength, minVersion = 1, maxVersion = 40) {
  for (let version = minVersion; version <= maxVersion; version++) {
    const needed = 4 + countBits(version) + 8 * byteLength;
    if (needed <= capacity(version).data * 8) return version;
  }
  return 0;
}

/**
 * Encodes `text` (as UTF-8 bytes) into a QR Code symbol at error correction level M.
 *
 * Options: `minVersion`, `maxVersion` (1–40) bound the version; `mask` (0–7) forces a mask
 * instead of choosing the one with the lowest penalty. Throws a RangeError when the text does not fit.
 *
 * Returns `{ version, size, mask, modules, isDark(x, y) }`; `modules` is a Uint8Array of
 * size×size entries, row by row, 1 for dark. The caller adds the four-module quiet zone.
 */
export function encodeQR(text, options = {}) {
  const { minVersion = 1, maxVersion = 40, mask: forcedMask } = options;
  const bytes = new TextEncoder().encode(String(text));
  const version = versionFor(bytes.length, minVersion, maxVersion);
  if (!version) {
    throw new RangeError(`${bytes.length} bytes do not fit in a QR code up to version ${maxVersion}`);
  }
  const grid = new Grid(version);
  drawFunctionPatterns(grid);
  placeCodewords(grid, interleave(makeBlocks(dataCodewords(bytes, version), version)));

  let chosen = forcedMask;
  if (chosen === undefined) {
    let best = Infinity;
    for (let mask = 0; mask < MASKS.length; mask++) {
      applyMask(grid, mask);
      drawFormat(grid, mask);
      const score = penalty(grid);
      if (score < best) {
        best = score;
        chosen = mask;
      }
      applyMask(grid, mask); // masks are XOR: applying one again undoes it
    }
  } else if (!Number.isInteger(chosen) || chosen < 0 || chosen > 7) {
    throw new RangeError(`mask must be 0–7, not ${chosen}`);
  }
  applyMask(grid, chosen);
  drawFormat(grid, chosen);

  const { size } = grid;
  const modules = grid.dark;
  return {
    version,
    size,
    mask: chosen,
    modules,
    isDark: (x, y) => x >= 0 && y >= 0 && x < size && y < size && modules[y * size + x] === 1,
  };
}

const SVG_NS = 'http://www.w3.org/2000/svg';

/**
 * An `<svg>` element (built with DOM calls, no markup parsing) showing `text` as a QR code with a
 * light quiet zone of `margin` modules. It scales to its box; CSS sets the displayed size.
 */
export function qrSvg(doc, text, { margin = 4, label = 'QR code', dark = '#000', light = '#fff' } = {}) {
  const qr = encodeQR(text);
  const extent = qr.size + 2 * margin;
  const svg = doc.createElementNS(SVG_NS, 'svg');
  svg.setAttribute('viewBox', `0 0 ${extent} ${extent}`);
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', label);
  svg.setAttribute('shape-rendering', 'crispEdges');
  const title = doc.createElementNS(SVG_NS, 'title');
  title.textContent = label;
  svg.append(title);

  const background = doc.createElementNS(SVG_NS, 'rect');
  background.setAttribute('width', String(extent));
  background.setAttribute('height', String(extent));
  background.setAttribute('fill', light);
  svg.append(background);

  // One path: a rectangle per horizontal run of dark modules.
  const parts = [];
  for (let y = 0; y < qr.size; y++) {
    for (let x = 0; x < qr.size; ) {
      if (!qr.isDark(x, y)) {
        x++;
        continue;
      }
      let run = 1;
      while (qr.isDark(x + run, y)) run++;
      parts.push(`M${x + margin} ${y + margin}h${run}v1h-${run}z`);
      x += run;
    }
  }
  const path = doc.createElementNS(SVG_NS, 'path');
  path.setAttribute('d', parts.join(''));
  path.setAttribute('fill', dark);
  svg.append(path);
  return svg;
}
