// Launches Debian's Chromium for the demo tests, with every flag explained.

import { existsSync, mkdirSync } from 'node:fs';
import { test } from 'node:test';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const { chromium } = require('playwright-core');

const here = path.dirname(fileURLToPath(import.meta.url));
export const outputDir = path.resolve(here, '..', 'output');

export const CHROMIUM_PATH = '/usr/bin/chromium';

/** Longest wait for anything in a page. */
export const WAIT_MS = 20000;

/**
 * Why the browser tests cannot run, or null when they can.
 *
 * With Chromium missing they must fail, never pass quietly; only INTERCESSOR_SKIP_BROWSER=1 turns
 * that failure into a (loudly announced) skip.
 */
export function chromiumMissing() {
  if (existsSync(CHROMIUM_PATH)) return null;
  return (
    `Chromium is not installed at ${CHROMIUM_PATH}; the browser tests need it. ` +
    'Install it with `apt-get install -y chromium` ' +
    '(or set INTERCESSOR_SKIP_BROWSER=1 to skip the browser tests).'
  );
}

/**
 * Options for each browser test: `{ skip }` only when INTERCESSOR_SKIP_BROWSER=1 asks for it and
 * Chromium is missing, announced loudly; otherwise `{}`, and a missing Chromium fails every test.
 */
export function browserTestOptions() {
  const missing = chromiumMissing();
  if (missing && process.env.INTERCESSOR_SKIP_BROWSER === '1') {
    const bar = '!'.repeat(100);
    console.warn(`${bar}\n!!! SKIPPING BROWSER TESTS (INTERCESSOR_SKIP_BROWSER=1): ${missing}\n${bar}`);
    return { skip: `INTERCESSOR_SKIP_BROWSER=1 and ${missing}` };
  }
  return {};
}

/** Throws the install hint when Chromium is missing. */
export function requireChromium() {
  const missing = chromiumMissing();
  if (missing) throw new Error(missing);
}

let testOptions;

/**
 * `test(name, body)` for a test that needs Chromium: with Chromium missing it fails with the
 * install hint (the suite's hooks then start nothing), unless INTERCESSOR_SKIP_BROWSER=1 makes it
 * skip.
 */
export function browserTest(name, body) {
  testOptions ??= browserTestOptions();
  return test(name, testOptions, (t) => {
    requireChromium();
    return body(t);
  });
}

const LAUNCH_ARGS = [
  // Tests run as root in a container, where Chromium's sandbox cannot start (and refuses to as root).
  '--no-sandbox',
  // There is no GPU; software rendering is enough for the page and the fake camera.
  '--disable-gpu',
  // No QUIC/HTTP3 attempts: everything the test loads is plain HTTP/1.1 or TLS over TCP on loopback.
  '--disable-quic',
  // No first-run UI, and none of the background traffic Chromium starts by itself (safe browsing,
  // variations, component and extension updates, sync): tests talk to the local relay only.
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  // Every host name fails to resolve except 127.0.0.1, so no DNS query (and no connection to a
  // name) can leave this machine; the relay is always reached as 127.0.0.1.
  '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
  // A synthetic camera (a moving test pattern) and microphone (a beep) instead of real devices...
  '--use-fake-device-for-media-stream',
  // ...and getUserMedia's permission prompt answered "allow" without any UI.
  '--use-fake-ui-for-media-stream',
  // WebRTC leaves the loopback interface out of ICE gathering; this adds 127.0.0.1 and ::1 host
  // candidates. Without it a machine whose only interface is loopback (a network namespace with
  // nothing else, as run.sh uses when it can) gathers no candidate at all and ICE never connects.
  // Host candidates carry real addresses, not mDNS ".local" names, only because each context is
  // granted camera and microphone (see newPersonContext).
  '--allow-loopback-in-peer-connection',
];

/** Launches headless Chromium; `extraArgs` come after the standard ones. */
export async function launchBrowser(extraArgs = []) {
  requireChromium();
  return chromium.launch({
    executablePath: CHROMIUM_PATH,
    headless: true,
    args: [...LAUNCH_ARGS, ...extraArgs],
    timeout: WAIT_MS,
  });
}

// Runs in every page before its own scripts, to let a test look on without changing what the
// page does: it lists the page's RTCPeerConnections (to read which candidate pair ICE chose), the
// frames the page sends to the relay (to check their shapes), the relay's ERROR frames, and any
// Content-Security-Policy violation (the relay serves the page with a strict CSP).
function instrumentPage() {
  window.__cspViolations = [];
  document.addEventListener('securitypolicyviolation', (event) => {
    window.__cspViolations.push(`${event.violatedDirective} blocked ${event.blockedURI || 'inline code'}`);
  });
  const NativePeerConnection = window.RTCPeerConnection;
  window.__peerConnections = [];
  window.RTCPeerConnection = class RecordedPeerConnection extends NativePeerConnection {
    constructor(...args) {
      super(...args);
      window.__peerConnections.push(this);
    }
  };
  const NativeWebSocket = window.WebSocket;
  window.__socketUrls = [];
  window.__sentFrames = [];
  window.__relayErrors = [];
  window.WebSocket = class RecordedWebSocket extends NativeWebSocket {
    constructor(...args) {
      super(...args);
      window.__socketUrls.push(this.url);
      this.addEventListener('message', ({ data }) => {
        try {
          const frame = JSON.parse(data);
          if (frame.from === '0' && frame.type === 'ERROR') window.__relayErrors.push(frame.message);
        } catch {
          // not JSON: the page ignores it too
        }
      });
    }

    send(data) {
      window.__sentFrames.push(data);
      return super.send(data);
    }
  };
}

/**
 * An isolated browser context for one person: camera and microphone allowed, which also makes
 * Chromium put real host addresses in ICE candidates instead of mDNS ".local" names (names that
 * only multicast DNS, which is not loopback traffic, could resolve).
 */
export async function newPersonContext(browser, { baseURL, viewport = { width: 900, height: 700 } } = {}) {
  const context = await browser.newContext({
    baseURL,
    viewport,
    permissions: ['camera', 'microphone'],
  });
  context.setDefaultTimeout(WAIT_MS);
  context.setDefaultNavigationTimeout(WAIT_MS);
  await context.addInitScript(instrumentPage);
  return context;
}

/** Saves screenshots of `pages` ({ name: page }) under output/, for a failed test. */
export async function saveScreenshots(testName, pages) {
  mkdirSync(outputDir, { recursive: true });
  const slug = testName.replace(/[^a-z0-9]+/gi, '-').replace(/^-|-$/g, '').toLowerCase();
  const saved = [];
  for (const [name, page] of Object.entries(pages)) {
    if (!page || page.isClosed()) continue;
    const file = path.join(outputDir, `${slug}-${name}.png`);
    try {
      await page.screenshot({ path: file, fullPage: true, timeout: 5000 });
      saved.push(file);
    } catch (error) {
      console.warn(`# could not save ${file}: ${error.message}`);
    }
  }
  if (saved.length) console.log(`# screenshots of the failed test: ${saved.join(', ')}`);
}
