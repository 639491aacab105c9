// The demo page, driven in Chromium against a relay started for these tests over plain http/ws.

import assert from 'node:assert/strict';
import { after, before, describe } from 'node:test';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { browserTest, chromiumMissing, launchBrowser } from './lib/browser.js';
import {
  assertIceStaysOnMachine,
  assertNoCspViolations,
  assertSignalingShapes,
  connectPair,
  hostRoom,
  joinRoom,
  qrPixels,
  relayErrors,
  sendChat,
  statusText,
  waitForChat,
  waitForRemoteVideo,
  waitForStatus,
  withPeople,
} from './lib/pages.js';
import { repoRoot, startRelay } from './lib/relay.js';

const require = createRequire(import.meta.url);
const jsQR = require('jsqr');

describe('demo page over ws://', () => {
  let relay;
  let browser;

  before(async () => {
    if (chromiumMissing()) return;
    relay = await startRelay();
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await relay?.stop();
  });

  const people = (name, body) => browserTest(name, () => withPeople(name, browser, relay.origin, body));

  people('data channel opens and chat crosses both ways', async (open) => {
    const { host, guest } = await connectPair(open);
    const fromGuest = 'hello from the guest — ünïcödé ✓ <b>not bold</b>';
    await sendChat(guest, fromGuest, { withEnter: true });
    await waitForChat(host, fromGuest);
    const fromHost = 'hi guest & welcome';
    await sendChat(host, fromHost);
    await waitForChat(guest, fromHost);
    // The markup-looking text stayed text.
    assert.equal(await host.locator('[data-testid="chat-log"] b').count(), 0);
    await assertIceStaysOnMachine(host);
    await assertIceStaysOnMachine(guest);
    assert.deepEqual(await relayErrors(host), []);
    assert.deepEqual(await relayErrors(guest), []);
    await assertNoCspViolations(host);
    await assertNoCspViolations(guest);
  });

  people('camera call: each side plays the other one’s video', async (open) => {
    const { host, guest } = await connectPair(open);
    await guest.locator('[data-testid="call"]').click();
    await waitForRemoteVideo(host);
    await host.locator('[data-testid="call"]').click();
    await waitForRemoteVideo(guest);
    // Renegotiation kept the chat working.
    await sendChat(guest, 'can you see me?');
    await waitForChat(host, 'can you see me?');
    await assertIceStaysOnMachine(guest);
    await assertNoCspViolations(host);
    await assertNoCspViolations(guest);
  });

  people('a code with no host says so', async (open) => {
    const guest = await open('guest');
    await joinRoom(guest, 'zzz-zzz');
    await waitForStatus(guest, 'no host with code');
    assert.match(await statusText(guest), /code ZZZ-ZZZ/);
    // Back on the start screen, with the code kept for correcting.
    await guest.locator('[data-testid="join"]').waitFor({ state: 'visible' });
    assert.equal(await guest.locator('[data-testid="join-code"]').inputValue(), 'zzz-zzz');
  });

  people('leaving and joining again works, for guest and host', async (open) => {
    const { host, guest, code } = await connectPair(open);

    await guest.locator('[data-testid="leave"]').click();
    await waitForStatus(guest, 'you left');
    await waitForStatus(host, 'waiting for someone to join');
    assert.doesNotMatch(await statusText(guest), /connected/);

    // Pasting the whole join link works as well as typing the code.
    await joinRoom(guest, `${relay.origin}/?code=${code.toLowerCase()}`);
    await waitForStatus(guest, 'connected');
    await waitForStatus(host, 'connected');
    await sendChat(host, 'welcome back');
    await waitForChat(guest, 'welcome back');

    await host.locator('[data-testid="leave"]').click();
    await waitForStatus(guest, 'the host left');
    await guest.locator('[data-testid="leave"]').click();

    const secondCode = await hostRoom(host);
    await joinRoom(guest, secondCode.toLowerCase());
    await waitForStatus(guest, 'connected');
    await waitForStatus(host, 'connected');
    await sendChat(guest, 'second room');
    await waitForChat(host, 'second room');

    // Both sides said BYE when they left, and every frame kept to the demo's shapes.
    const guestSent = await assertSignalingShapes(guest);
    const hostSent = await assertSignalingShapes(host);
    assert.ok(guestSent.BYE >= 1 && hostSent.BYE >= 1, 'each side sent BYE on leaving');
    assert.ok(hostSent.OFFER >= 3 && guestSent.ANSWER >= 3 && hostSent.CANDIDATE > 0 && guestSent.CANDIDATE > 0);
  });

  people('a room of three: guests read each other and see who is in', async (open) => {
    const { host, guest: first, code } = await connectPair(open);
    const second = await open('second guest');
    await joinRoom(second, code);
    await waitForStatus(second, 'connected');
    const members = (page) => page.locator('[data-testid="members"] li').allTextContents();
    await second.waitForFunction(() => document.querySelectorAll('[data-testid="members"] li').length === 3);
    await first.waitForFunction(() => document.querySelectorAll('[data-testid="members"] li').length === 3);

    await sendChat(first, 'hello from the first guest');
    await waitForChat(second, 'hello from the first guest');
    await waitForChat(host, 'hello from the first guest');
    await sendChat(second, 'and from the second');
    await waitForChat(first, 'and from the second');

    assert.deepEqual(await members(second), ['Host', 'Guest 1', 'Guest 2 (you)']);
    assert.deepEqual(await members(host), ['Host (you)', 'Guest 1', 'Guest 2']);
    await second.locator('[data-testid="leave"]').click();
    await first.waitForFunction(() => document.querySelectorAll('[data-testid="members"] li').length === 2);
    await waitForChat(first, 'Guest 2 left.');
  });

  people('input that is not a code is refused on the page, not mangled', async (open) => {
    const guest = await open('guest');
    await joinRoom(guest, 'hello world!');
    await waitForStatus(guest, '“hello world!” is not a join code');
    await guest.locator('[data-testid="join"]').waitFor({ state: 'visible' });
    assert.deepEqual(await relayErrors(guest), []);
  });

  people('a call that finds no network path says what to do', async (open) => {
    // Both sides throw every ICE candidate away, as when mDNS names cannot be resolved and no
    // STUN or TURN server is given: no pair is ever tried, so 'failed' never comes.
    const noPath = async (page) => {
      await page.addInitScript(() => {
        const strip = (sdp) => sdp.replace(/^a=candidate:.*\r\n/gm, '');
        RTCPeerConnection.prototype.addIceCandidate = () => Promise.resolve();
        const setRemote = RTCPeerConnection.prototype.setRemoteDescription;
        RTCPeerConnection.prototype.setRemoteDescription = function (description) {
          return setRemote.call(this, { type: description.type, sdp: strip(description.sdp) });
        };
      });
      await page.clock.install();
    };
    const host = await open('host', '/', { prepare: noPath });
    const guest = await open('guest', '/', { prepare: noPath });
    const code = await hostRoom(host);
    await joinRoom(guest, code);
    await waitForStatus(guest, 'setting up a direct connection');

    await guest.clock.fastForward(16_000);
    await host.clock.fastForward(16_000);

    await waitForStatus(guest, 'no direct connection to the host after 15 s');
    await waitForStatus(guest, '--ice-server');
    await waitForChat(host, 'No direct connection to Guest 1');
  });

  people('the share link fills the join box, and the QR code holds it', async (open) => {
    const host = await open('host');
    const code = await hostRoom(host);
    const link = await host.locator('[data-testid="share-link"]').inputValue();
    assert.equal(link, `${relay.origin}/?code=${code}`);
    assert.match(await host.locator('[data-testid="code"]').textContent(), /^[0-9A-Z]{3}-[0-9A-Z]{3}$/);

    const { width, height, data } = await qrPixels(host);
    const decoded = jsQR(Uint8ClampedArray.from(data), width, height);
    assert.ok(decoded, 'the QR code on the page did not decode');
    assert.equal(decoded.data, link);

    const guest = await open('guest', link);
    assert.equal(await guest.locator('[data-testid="join-code"]').inputValue(), code);
    assert.equal(await guest.evaluate(() => document.activeElement?.dataset.testid), 'join');
    // Not joined by itself: the host still waits.
    await waitForStatus(host, 'waiting for someone to join');
    assert.doesNotMatch(await statusText(guest), /connected/);

    await guest.locator('[data-testid="join"]').click();
    await waitForStatus(guest, 'connected');
    await waitForStatus(host, 'connected');
  });
});

describe('demo page errors from other relays', () => {
  let browser;

  before(async () => {
    if (chromiumMissing()) return;
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
  });

  browserTest('a relay with a passphrase asks for it', async () => {
    const relay = await startRelay({ args: ['--passphrase', 'open sesame'] });
    try {
      await withPeople('passphrase', browser, relay.origin, async (open) => {
        const host = await open('host');
        await host.locator('[data-testid="host"]').click();
        await waitForStatus(host, 'passphrase');
        const field = host.locator('[data-testid="passphrase"]');
        await field.waitFor({ state: 'visible' });
        await field.fill('wrong');
        await host.locator('[data-testid="host"]').click();
        await waitForStatus(host, 'did not accept that passphrase');
        await field.fill('open sesame');
        const code = await hostRoom(host);
        assert.match(code, /^[0-9A-Z]{6}$/);
      });
    } finally {
      await relay.stop();
    }
  });

  browserTest('a host that lost the relay is told its code no longer works', async () => {
    // A short resume window: the page stops reconnecting to the stopped relay within a second.
    const relay = await startRelay({ args: ['--resume-window', '1s'] });
    try {
      await withPeople('code expired', browser, relay.origin, async (open) => {
        const { host, guest } = await connectPair(open);
        const note = host.locator('[data-testid="code-note"]');
        assert.match(await note.textContent(), /reloading or leaving makes a new one/);

        await relay.stop();

        await host.waitForFunction(() => document.querySelector('#share').classList.contains('expired'));
        assert.match(await note.textContent(), /no longer works/);
        // The guests already there keep talking directly.
        await sendChat(guest, 'still here');
        await waitForChat(host, 'still here');
      });
    } finally {
      await relay.stop();
    }
  });

  browserTest('an unreachable relay is reported', async () => {
    const relay = await startRelay();
    try {
      await withPeople('unreachable', browser, relay.origin, async (open) => {
        const host = await open('host');
        await relay.stop();
        await host.locator('[data-testid="host"]').click();
        await waitForStatus(host, 'can’t reach the relay');
      });
    } finally {
      await relay.stop();
    }
  });
});

// The schema an operator may turn on (examples/webrtc-signaling.schema.json): every OFFER, ANSWER,
// CANDIDATE and BYE the demo sends, through a call on both sides and hang-ups, must pass it.
const schemaFile = path.join(repoRoot, 'examples', 'webrtc-signaling.schema.json');

describe('demo page under the example message schema', () => {
  let relay;
  let browser;
  let noSchemaSupport = null;

  before(async () => {
    if (chromiumMissing()) return;
    assert.ok(existsSync(schemaFile), `${schemaFile} is missing`);
    try {
      relay = await startRelay({ args: ['--message-schema', schemaFile] });
    } catch (error) {
      // A relay built without its default cargo feature `schema` cannot validate at all.
      if (!/no JSON Schema support/.test(error.message)) throw error;
      noSchemaSupport = `the relay binary was built without the \`schema\` feature: ${error.message.split('\n').pop()}`;
      return;
    }
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await relay?.stop();
  });

  browserTest('chat, a call both ways and leaving raise no INVALID_MESSAGE', (t) =>
    noSchemaSupport ? t.skip(noSchemaSupport) : withPeople('schema', browser, relay.origin, async (open) => {
      const { host, guest } = await connectPair(open);
      await guest.locator('[data-testid="call"]').click();
      await host.locator('[data-testid="call"]').click();
      await waitForRemoteVideo(host);
      await waitForRemoteVideo(guest);
      await sendChat(host, 'schema-checked hello');
      await waitForChat(guest, 'schema-checked hello');
      // The guest stops its camera (one more renegotiation), then leaves with a BYE.
      await guest.locator('[data-testid="call"]').click();
      await sendChat(guest, 'camera off');
      await waitForChat(host, 'camera off');
      await guest.locator('[data-testid="leave"]').click();
      await waitForStatus(host, 'waiting for someone to join');
      assert.deepEqual(await relayErrors(host), []);
      assert.deepEqual(await relayErrors(guest), []);
      await assertSignalingShapes(host);
      await assertSignalingShapes(guest);
    }));
});
