// Makes docs/demo.png for the README: the host's page with its code, QR code and a chat with a
// connected guest. Run with `npm run screenshot` (Chromium and the relay as for the tests).
//
// Other views for a look by eye: `node screenshot.js --all` also writes the guest's page and a
// phone-sized host page under output/.

import { mkdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { launchBrowser, newPersonContext, outputDir } from './lib/browser.js';
import { hostRoom, joinRoom, sendChat, waitForChat, waitForStatus } from './lib/pages.js';
import { repoRoot, startRelay } from './lib/relay.js';

const target = path.join(repoRoot, 'docs', 'demo.png');
const all = process.argv.includes('--all');

const relay = await startRelay();
const browser = await launchBrowser();
try {
  const hostContext = await newPersonContext(browser, { baseURL: relay.origin, viewport: { width: 900, height: 700 } });
  const guestContext = await newPersonContext(browser, { baseURL: relay.origin, viewport: { width: 390, height: 780 } });
  const host = await hostContext.newPage();
  const guest = await guestContext.newPage();
  await host.goto('/');
  await guest.goto('/');
  if (all) {
    mkdirSync(outputDir, { recursive: true });
    await host.screenshot({ path: path.join(outputDir, 'look-start.png') });
    await guest.screenshot({ path: path.join(outputDir, 'look-start-phone.png') });
  }
  const code = await hostRoom(host);
  if (all) {
    await host.screenshot({ path: path.join(outputDir, 'look-host-waiting.png') });
    const phone = await guestContext.newPage();
    await phone.goto('/');
    const phoneCode = await hostRoom(phone);
    await phone.screenshot({ path: path.join(outputDir, 'look-host-phone.png'), fullPage: true });
    await phone.goto(`/?code=${phoneCode}`);
    await phone.screenshot({ path: path.join(outputDir, 'look-share-link-phone.png') });
    await phone.close();
  }
  await joinRoom(guest, code);
  await waitForStatus(host, 'connected');
  await waitForStatus(guest, 'connected');
  await sendChat(guest, 'Hi! I scanned the QR code with my phone.');
  await waitForChat(host, 'scanned the QR code');
  await sendChat(host, 'Welcome! This chat goes straight from my browser to yours.');
  await waitForChat(guest, 'straight from my browser');
  await sendChat(guest, 'Nice, and no account needed.');
  await waitForChat(host, 'no account needed');
  await host.locator('[data-testid="chat-input"]').blur();
  mkdirSync(path.dirname(target), { recursive: true });
  await host.screenshot({ path: target });
  console.log(`wrote ${path.relative(repoRoot, target)} (${Math.round(statSync(target).size / 1024)} KiB)`);
  if (all) {
    await guest.screenshot({ path: path.join(outputDir, 'look-guest-phone.png'), fullPage: true });
    await guest.locator('[data-testid="call"]').click();
    await host.locator('[data-testid="call"]').click();
    await host.waitForFunction(() => [...document.querySelectorAll('[data-testid="remote-video"]')].some((v) => v.videoWidth > 0));
    await guest.waitForFunction(() => [...document.querySelectorAll('[data-testid="remote-video"]')].some((v) => v.videoWidth > 0));
    await host.screenshot({ path: path.join(outputDir, 'look-host-call.png'), fullPage: true });
    await guest.screenshot({ path: path.join(outputDir, 'look-guest-call-phone.png'), fullPage: true });
    await host.locator('[data-testid="leave"]').click();
    await waitForStatus(guest, 'the host left');
    await guest.screenshot({ path: path.join(outputDir, 'look-guest-host-left.png'), fullPage: true });
    console.log(`wrote look-*.png under ${outputDir}`);
  }
} finally {
  await browser.close();
  await relay.stop();
}
