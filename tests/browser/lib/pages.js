// What a person does on the demo page, as test steps. Every wait is bounded by the context's
// default timeout (WAIT_MS).

import assert from 'node:assert/strict';
import { networkInterfaces } from 'node:os';
import { saveScreenshots, newPersonContext } from './browser.js';

const byTestId = (id) => `[data-testid="${id}"]`;

/** Resolves when the status line's text contains `fragment` (case-insensitive). */
export async function waitForStatus(page, fragment) {
  try {
    await page.waitForFunction(
      (wanted) => {
        const status = document.querySelector('[data-testid="status"]');
        return status && status.textContent.toLowerCase().includes(wanted);
      },
      fragment.toLowerCase(),
    );
  } catch (error) {
    const now = await statusText(page).catch(() => '(unreadable)');
    const errors = await relayErrors(page).catch(() => []);
    const also = errors.length ? `; relay errors so far: ${JSON.stringify(errors)}` : '';
    throw new Error(`status never contained "${fragment}"; it says: "${now}"${also}`, { cause: error });
  }
}

export async function statusText(page) {
  return page.locator(byTestId('status')).textContent();
}

/** Clicks "host" and resolves to the join code shown, without its dash. */
export async function hostRoom(page) {
  await page.locator(byTestId('host')).click();
  const code = page.locator(byTestId('code'));
  await code.waitFor({ state: 'visible' });
  await page.waitForFunction(() => document.querySelector('[data-testid="code"]').textContent.trim() !== '');
  return (await code.textContent()).replace(/[-\s]/g, '');
}

/** Types `code` into the join box and clicks "join". */
export async function joinRoom(page, code) {
  await page.locator(byTestId('join-code')).fill(code);
  await page.locator(byTestId('join')).click();
}

/** Sends `text` in the chat, with the button or with Enter. */
export async function sendChat(page, text, { withEnter = false } = {}) {
  const input = page.locator(byTestId('chat-input'));
  await input.fill(text);
  if (withEnter) await input.press('Enter');
  else await page.locator(byTestId('chat-send')).click();
  await waitForChat(page, text);
}

/** Resolves when `text` appears verbatim in the chat log. */
export async function waitForChat(page, text) {
  try {
    await page.waitForFunction(
      (wanted) => document.querySelector('[data-testid="chat-log"]').textContent.includes(wanted),
      text,
    );
  } catch (error) {
    const log = await page.locator(byTestId('chat-log')).textContent().catch(() => '(unreadable)');
    throw new Error(`chat log never showed ${JSON.stringify(text)}; it holds ${JSON.stringify(log)}`, {
      cause: error,
    });
  }
}

/** Resolves when `count` remote videos (at least) play frames with a width. */
export async function waitForRemoteVideo(page, count = 1) {
  await page.waitForFunction(
    (wanted) =>
      [...document.querySelectorAll('[data-testid="remote-video"]')].filter(
        (video) => video.videoWidth > 0 && !video.paused && video.readyState >= 2,
      ).length >= wanted,
    count,
  );
}

// Every address of this machine: loopback, and those of its interfaces. Chromium also gathers
// candidates on the interfaces, and ICE may pick such a pair (or learn a peer-reflexive one from a
// check sent from an interface address); the kernel delivers packets to the machine's own
// addresses locally, so they never reach a wire either way.
function machineAddresses() {
  const addresses = new Set(['127.0.0.1', '::1']);
  for (const list of Object.values(networkInterfaces())) for (const { address } of list) addresses.add(address);
  return addresses;
}

/** Every connected RTCPeerConnection of the page uses a candidate pair within this machine. */
export async function assertIceStaysOnMachine(page) {
  const pairs = await page.evaluate(async () => {
    const found = [];
    for (const pc of window.__peerConnections) {
      if (pc.connectionState !== 'connected') continue;
      const stats = await pc.getStats();
      for (const report of stats.values()) {
        if (report.type !== 'transport' || !report.selectedCandidatePairId) continue;
        const pair = stats.get(report.selectedCandidatePairId);
        const local = stats.get(pair.localCandidateId);
        const remote = stats.get(pair.remoteCandidateId);
        found.push({ local: local.address, remote: remote.address, remoteType: remote.candidateType });
      }
    }
    return found;
  });
  assert.ok(pairs.length > 0, 'no connected RTCPeerConnection with a selected candidate pair');
  const mine = machineAddresses();
  for (const { local, remote, remoteType } of pairs) {
    // A peer-reflexive remote (learned from a connectivity check that beat its candidate's
    // signaling, as after a blip) has its address hidden from stats; the local end still shows.
    const hidden = remoteType === 'prflx' && !remote;
    assert.ok(hidden || mine.has(remote), `ICE pair reaches ${remote}, which is not an address of this machine`);
    assert.ok(mine.has(local), `ICE pair leaves from ${local}, which is not an address of this machine`);
  }
  return pairs;
}

/**
 * Runs `body` with a helper that opens pages in fresh isolated contexts ("people"); on failure,
 * screenshots every page under output/. Contexts are always closed.
 */
export async function withPeople(testName, browser, baseURL, body) {
  const pages = {};
  const contexts = [];
  // `prepare(page)` runs before the page loads: init scripts, a fake clock.
  const open = async (name, path = '/', { prepare } = {}) => {
    const context = await newPersonContext(browser, { baseURL });
    contexts.push(context);
    const page = await context.newPage();
    if (prepare) await prepare(page);
    page.on('pageerror', (error) => console.log(`# [${name}] page error: ${error.message}`));
    page.on('console', (message) => {
      if (message.type() === 'error' || message.type() === 'warning') {
        console.log(`# [${name}] console.${message.type()}: ${message.text()}`);
      }
    });
    pages[name] = page;
    await page.goto(path);
    return page;
  };
  try {
    await body(open);
  } catch (error) {
    await saveScreenshots(testName, pages);
    throw error;
  } finally {
    for (const context of contexts) await context.close().catch(() => {});
  }
}

/** The host and a guest, connected, each seeing "connected". */
export async function connectPair(open) {
  const host = await open('host');
  const guest = await open('guest');
  const code = await hostRoom(host);
  assert.match(code, /^[0-9A-HJKMNP-TV-Z]{6}$/, `join code ${code} is not 6 Crockford base32 characters`);
  await joinRoom(guest, code);
  await waitForStatus(guest, 'connected');
  await waitForStatus(host, 'connected');
  return { host, guest, code };
}

/** Decodes the QR code the page shows (its SVG, drawn onto a canvas) into RGBA pixels. */
export async function qrPixels(page) {
  return page.evaluate(async () => {
    const svg = document.querySelector('#qr svg');
    const scale = 6;
    const [, , width] = svg.getAttribute('viewBox').split(' ').map(Number);
    const blob = new Blob([new XMLSerializer().serializeToString(svg)], { type: 'image/svg+xml' });
    const url = URL.createObjectURL(blob);
    try {
      const image = new Image();
      image.src = url;
      await image.decode();
      const canvas = document.createElement('canvas');
      canvas.width = canvas.height = width * scale;
      const context = canvas.getContext('2d');
      context.imageSmoothingEnabled = false;
      context.drawImage(image, 0, 0, canvas.width, canvas.height);
      const { data } = context.getImageData(0, 0, canvas.width, canvas.height);
      return { width: canvas.width, height: canvas.height, data: Array.from(data) };
    } finally {
      URL.revokeObjectURL(url);
    }
  });
}

/** The page broke none of the relay's Content-Security-Policy rules (no inline script or style). */
export async function assertNoCspViolations(page) {
  assert.deepEqual(await page.evaluate(() => window.__cspViolations), []);
}

/** The relay's ERROR messages this page has received so far. */
export async function relayErrors(page) {
  return page.evaluate(() => window.__relayErrors);
}

const keysOf = (value) => Object.keys(value).sort().join(',');

/**
 * Every frame the page sent to the relay has exactly the demo's shape: {to, type, message} with
 * OFFER/ANSWER {type, sdp}, CANDIDATE RTCIceCandidate.toJSON(), BYE {} — and nothing else.
 * Resolves to how many frames of each type were sent.
 */
export async function assertSignalingShapes(page) {
  const frames = await page.evaluate(() => window.__sentFrames);
  const counts = {};
  for (const text of frames) {
    const frame = JSON.parse(text);
    assert.equal(keysOf(frame), 'message,to,type', `frame ${text}`);
    assert.equal(typeof frame.to, 'string');
    const { type, message } = frame;
    counts[type] = (counts[type] ?? 0) + 1;
    switch (type) {
      case 'OFFER':
      case 'ANSWER':
        assert.equal(keysOf(message), 'sdp,type', `${type} ${text.slice(0, 200)}`);
        assert.equal(message.type, type.toLowerCase());
        assert.ok(typeof message.sdp === 'string' && message.sdp.startsWith('v=0'));
        break;
      case 'CANDIDATE':
        assert.equal(keysOf(message), 'candidate,sdpMLineIndex,sdpMid,usernameFragment', `CANDIDATE ${text}`);
        assert.equal(typeof message.candidate, 'string');
        assert.ok(message.sdpMid === null || typeof message.sdpMid === 'string');
        assert.ok(message.sdpMLineIndex === null || Number.isInteger(message.sdpMLineIndex));
        assert.ok(message.usernameFragment === null || typeof message.usernameFragment === 'string');
        break;
      case 'BYE':
        assert.deepEqual(message, {});
        break;
      default:
        assert.fail(`the page sent a frame of unexpected type ${type}: ${text.slice(0, 200)}`);
    }
  }
  return counts;
}
