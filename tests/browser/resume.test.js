// The demo rides out a network blip: each page reaches the relay through a proxy of its own that
// the test cuts for a few seconds, first the host's, then the guest's. The page says
// "reconnecting…" and then nothing, the library resumes the same session, and the chat and the
// call, peer-to-peer over loopback, go on throughout.

import assert from 'node:assert/strict';
import { after, before, describe } from 'node:test';
import { browserTest, chromiumMissing, launchBrowser } from './lib/browser.js';
import {
  assertIceStaysOnMachine,
  assertNoCspViolations,
  joinRoom,
  hostRoom,
  relayErrors,
  sendChat,
  statusText,
  waitForChat,
  waitForRemoteVideo,
  waitForStatus,
  withPeople,
} from './lib/pages.js';
import { startCutProxy } from './lib/proxy.js';
import { startRelay } from './lib/relay.js';

// Long enough for several of the library's retries to be turned away, well within the relay's
// default 30 s resume window.
const CUT_MS = 2500;
const RECONNECTING = 'reconnecting to the relay…';

/** The relay's "peer left" log lines for `peer`. */
function peerLeftLines(relay, peer) {
  return relay.logs
    .map((line) => {
      try {
        return JSON.parse(line).fields;
      } catch {
        return undefined;
      }
    })
    .filter((fields) => fields?.message === 'peer left' && fields.peer === peer);
}

async function waitForStatusWithout(page, fragment) {
  try {
    await page.waitForFunction(
      (unwanted) => !document.querySelector('[data-testid="status"]').textContent.toLowerCase().includes(unwanted),
      fragment.toLowerCase(),
    );
  } catch (error) {
    throw new Error(`status still says "${fragment}": "${await statusText(page)}"`, { cause: error });
  }
}

/** Resolves once every remote video on the page has played on past where it is now. */
async function videosPlayOn(page) {
  const times = await page.$$eval('[data-testid="remote-video"]', (videos) => videos.map((video) => video.currentTime));
  assert.ok(times.length > 0, 'no remote video on the page');
  await page.waitForFunction(
    (before) =>
      [...document.querySelectorAll('[data-testid="remote-video"]')].every(
        (video, index) => video.currentTime > before[index] + 0.5,
      ),
    times,
  );
}

/** What must not change across a blip: the same RTCPeerConnections, connected, and who is in. */
function roomState(page) {
  return page.evaluate(() => ({
    peerConnections: window.__peerConnections.map((pc) => pc.connectionState),
    members: [...document.querySelectorAll('[data-testid="members"] li')].map((item) => item.textContent),
    code: document.querySelector('[data-testid="code"]').textContent,
  }));
}

describe('demo page through a network blip', () => {
  let relay;
  let hostProxy;
  let guestProxy;
  let browser;

  before(async () => {
    if (chromiumMissing()) return;
    relay = await startRelay();
    hostProxy = await startCutProxy(relay.listen);
    guestProxy = await startCutProxy(relay.listen);
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await hostProxy?.stop();
    await guestProxy?.stop();
    await relay?.stop();
  });

  /**
   * Cuts `page`'s relay connection through `proxy`: the page says it is reconnecting, the chat
   * with `other` goes on meanwhile and afterwards, both ways, the video plays on on both sides,
   * and the relay kept `peer` away (not gone) and took it back. `during()` runs while the page
   * reconnects.
   */
  async function blip(page, other, proxy, peer, role, during = async () => {}) {
    const before = { page: await roomState(page), other: await roomState(other) };
    const sockets = (await page.evaluate(() => window.__socketUrls)).length;
    const refused = proxy.refused;

    const restored = proxy.cut(CUT_MS);
    await waitForStatus(page, RECONNECTING);
    // The data channel needs no relay.
    await sendChat(page, `${role}: while reconnecting`);
    await waitForChat(other, `${role}: while reconnecting`);
    await during();
    await restored;
    await waitForStatusWithout(page, 'reconnecting');
    await waitForStatus(page, 'connected');
    assert.ok(proxy.refused > refused, 'no reconnect attempt came during the cut');

    await sendChat(page, `${role}: after the blip`);
    await waitForChat(other, `${role}: after the blip`);
    await sendChat(other, `to the ${role}: after the blip`);
    await waitForChat(page, `to the ${role}: after the blip`);
    await videosPlayOn(page);
    await videosPlayOn(other);

    // The same session resumed: every new socket (those the cut turned away, then the one let
    // through) asked to resume with the token and the count received; the relay logged the loss
    // as away (1006, no close frame), never a leave; nothing in the room changed.
    const urls = (await page.evaluate(() => window.__socketUrls)).slice(sockets);
    assert.equal(urls.length, proxy.refused - refused + 1, urls.join('\n'));
    for (const url of urls) {
      const query = new URL(url).searchParams;
      assert.ok(query.get('resume') && /^\d+$/.test(query.get('received')), url);
    }
    const left = peerLeftLines(relay, peer);
    assert.equal(left.length, 1, JSON.stringify(left));
    assert.equal(left[0].role, role);
    assert.equal(left[0].away, true);
    assert.equal(left[0].close, 1006);
    assert.deepEqual(await roomState(page), before.page);
    assert.deepEqual(await roomState(other), before.other);
    assert.ok(before.page.peerConnections.every((state) => state === 'connected'));
    for (const each of [page, other]) {
      assert.doesNotMatch(await each.locator('[data-testid="chat-log"]').textContent(), /left\./);
    }
  }

  const name = 'host and guest each lose the relay for a few seconds; chat and call go on';
  browserTest(name, () =>
    withPeople(name, browser, hostProxy.origin, async (open) => {
      const host = await open('host');
      const code = await hostRoom(host);
      const guest = await open('guest', `${guestProxy.origin}/`);
      await joinRoom(guest, code);
      await waitForStatus(guest, 'connected');
      await waitForStatus(host, 'connected');
      await sendChat(guest, 'hello before the blip');
      await waitForChat(host, 'hello before the blip');
      await sendChat(host, 'hi before the blip');
      await waitForChat(guest, 'hi before the blip');
      await guest.locator('[data-testid="call"]').click();
      await waitForRemoteVideo(host);
      await host.locator('[data-testid="call"]').click();
      await waitForRemoteVideo(guest);
      // The guest's id at the relay: where the host sends its signaling.
      const guestId = await host.evaluate(() => JSON.parse(window.__sentFrames[0]).to);

      // While the host reconnects, its code note says so, not that the code is dead.
      const note = host.locator('[data-testid="code-note"]');
      await blip(host, guest, hostProxy, code, 'server', async () => {
        assert.match(await note.textContent(), /^Reconnecting to the relay… The code still works/);
      });
      assert.match(await note.textContent(), /reloading or leaving makes a new one/);

      await blip(guest, host, guestProxy, guestId, 'client');

      // Signaling still crosses both resumed sockets: the guest's camera going off renegotiates
      // the call (its OFFER to the host, the ANSWER back), and a newcomer joins the host's room.
      await guest.locator('[data-testid="call"]').click();
      await host.waitForFunction(() => document.querySelectorAll('[data-testid="remote-video"]').length === 0);
      const late = await open('late guest', `${guestProxy.origin}/`);
      await joinRoom(late, code);
      await waitForStatus(late, 'connected');
      await host.waitForFunction(() => document.querySelectorAll('[data-testid="members"] li').length === 3);

      for (const page of [host, guest]) {
        await assertIceStaysOnMachine(page);
        assert.deepEqual(await relayErrors(page), []);
        await assertNoCspViolations(page);
      }
    }),
  );
});

// A replay window of the smallest size the relay allows (--max-message-bytes + 256).
const REPLAY_BYTES = 65536 + 256;
const NOISE = { frames: 3, bytes: 40000 };

describe('demo page through a blip that loses frames for good', () => {
  let relay;
  let hostProxy;
  let browser;

  before(async () => {
    if (chromiumMissing()) return;
    relay = await startRelay({ args: ['--resume-queue-bytes', String(REPLAY_BYTES)] });
    hostProxy = await startCutProxy(relay.listen);
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await hostProxy?.stop();
    await relay?.stop();
  });

  const name = 'a host whose relay could not replay everything says so, and the chat goes on';
  browserTest(name, () =>
    withPeople(name, browser, relay.origin, async (open) => {
      const host = await open('host', `${hostProxy.origin}/`);
      const code = await hostRoom(host);
      const guest = await open('guest');
      await joinRoom(guest, code);
      await waitForStatus(guest, 'connected');
      await waitForStatus(host, 'connected');

      // While the host's proxy drops what the relay writes, another client of the room sends the
      // host more than the replay window holds: the host's resume must say gap.
      hostProxy.deafen();
      const noisy = await open('noisy client');
      await noisy.evaluate(
        async ({ code, frames, bytes }) => {
          const ws = new WebSocket(`ws://${location.host}/client/${code}`);
          await new Promise((resolve) => ws.addEventListener('message', resolve, { once: true }));
          const frame = JSON.stringify({ to: code, type: 'NOISE', message: 'x'.repeat(bytes) });
          for (let i = 0; i < frames; i += 1) ws.send(frame);
        },
        { code, ...NOISE },
      );
      const deadline = Date.now() + 10000;
      while (hostProxy.dropped < NOISE.frames * NOISE.bytes && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      assert.ok(hostProxy.dropped >= NOISE.frames * NOISE.bytes, `only ${hostProxy.dropped} bytes dropped`);

      await hostProxy.cut(CUT_MS);
      await waitForChat(host, 'Some setup messages sent to this page while it was reconnecting were lost.');
      await waitForStatusWithout(host, 'reconnecting');
      await waitForStatus(host, 'connected');
      await sendChat(guest, 'after the gap');
      await waitForChat(host, 'after the gap');
      await sendChat(host, 'still here');
      await waitForChat(guest, 'still here');
      assert.deepEqual(await relayErrors(host), []);
      const left = peerLeftLines(relay, code);
      assert.equal(left.length, 1, JSON.stringify(left));
      assert.equal(left[0].away, true);
    }),
  );
});
