// The host's say over who is in, on the demo page in Chromium: removing a guest, locking the room,
// and "Ask to join" with Admit (then the chat works) and with Deny; and fresh TURN credentials.

import assert from 'node:assert/strict';
import { after, before, describe } from 'node:test';
import { browserTest, chromiumMissing, launchBrowser } from './lib/browser.js';
import {
  assertNoCspViolations,
  connectPair,
  hostRoom,
  joinRoom,
  sendChat,
  statusText,
  waitForChat,
  waitForStatus,
  withPeople,
} from './lib/pages.js';
import { startRelay } from './lib/relay.js';

const byTestId = (id) => `[data-testid="${id}"]`;

/** The frames of `type` this page sent to the relay. */
async function sentOfType(page, type) {
  const frames = await page.evaluate(() => window.__sentFrames);
  return frames.map((text) => JSON.parse(text)).filter((frame) => frame.type === type);
}

describe('the host decides who is in', () => {
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

  people('Remove: the guest is told "The host removed you." and the host sees it go', async (open) => {
    const { host, guest } = await connectPair(open);
    const row = host.locator(`${byTestId('guests')} ${byTestId('guest')}`);
    await row.waitFor();
    assert.equal(await row.locator('.who').textContent(), 'Guest 1');
    await row.locator(byTestId('remove')).click();

    await waitForStatus(guest, 'The host removed you.');
    await waitForChat(host, 'Guest 1 was removed.');
    await waitForStatus(host, 'waiting for someone to join');
    assert.equal(await host.locator(byTestId('guest')).count(), 0);
    // The guest's page is over: no chat, back to start from the leave button.
    assert.equal(await guest.locator(byTestId('chat-input')).isDisabled(), true);
    assert.equal((await sentOfType(host, 'KICK')).length, 1);
    await assertNoCspViolations(host);
    await assertNoCspViolations(guest);
  });

  people('Lock room: a new guest sees "This room is locked."; unlocking lets them in', async (open) => {
    const { host, code } = await connectPair(open);
    await host.locator(byTestId('lock-room')).check();
    await host.waitForFunction(() => !document.querySelector('[data-testid="lock-room"]').disabled);
    assert.deepEqual((await sentOfType(host, 'ROOM')).map((frame) => frame.message), [{ locked: true }]);

    const late = await open('late guest');
    await joinRoom(late, code);
    await waitForStatus(late, 'This room is locked.');
    await late.locator(byTestId('join')).waitFor({ state: 'visible' });

    await host.locator(byTestId('lock-room')).uncheck();
    await host.waitForFunction(() => !document.querySelector('[data-testid="lock-room"]').disabled);
    await late.locator(byTestId('join')).click();
    await waitForStatus(late, 'connected');
    await sendChat(late, 'made it in');
    await waitForChat(host, 'made it in');
  });

  people('Ask to join, then Admit: the guest waits with its name shown, is let in, and chats', async (open) => {
    const host = await open('host');
    const guest = await open('guest');
    const code = await hostRoom(host);
    await host.locator(byTestId('ask-to-join')).check();
    await host.waitForFunction(() => !document.querySelector('[data-testid="ask-to-join"]').disabled);

    await guest.locator(byTestId('join-name')).fill('Ada');
    await joinRoom(guest, code);
    await waitForStatus(guest, 'Waiting for the host to let you in…');
    const knocker = host.locator(byTestId('knocker'));
    await knocker.waitFor();
    assert.equal(await knocker.locator('.who').textContent(), 'Ada');
    await waitForStatus(host, 'Ada is asking to join');

    await knocker.locator(byTestId('admit')).click();
    await waitForStatus(guest, 'connected');
    await waitForStatus(host, 'connected');
    assert.equal(await host.locator(byTestId('knocker')).count(), 0);
    await sendChat(guest, 'thanks for letting me in');
    await waitForChat(host, 'thanks for letting me in');
    await sendChat(host, 'welcome, Ada');
    await waitForChat(guest, 'welcome, Ada');
    // The host knows the guest by the name it gave.
    assert.equal(await host.locator(`${byTestId('guest')} .who`).textContent(), 'Ada');
    await waitForChat(host, 'Ada joined.');
  });

  people('Ask to join, then Deny: the guest is told "The host did not let you in."', async (open) => {
    const host = await open('host');
    const guest = await open('guest');
    const code = await hostRoom(host);
    await host.locator(byTestId('ask-to-join')).check();
    await host.waitForFunction(() => !document.querySelector('[data-testid="ask-to-join"]').disabled);

    await joinRoom(guest, code);
    await waitForStatus(guest, 'Waiting for the host to let you in…');
    const knocker = host.locator(byTestId('knocker'));
    await knocker.waitFor();
    assert.equal(await knocker.locator('.who').textContent(), 'Someone');
    await knocker.locator(byTestId('deny')).click();

    await waitForStatus(guest, 'The host did not let you in.');
    await waitForChat(host, 'You did not let Someone in.');
    assert.equal(await host.locator(byTestId('knocker')).count(), 0);
    assert.doesNotMatch(await statusText(host), /asking to join/);
  });
});

describe('admitting into a full room', () => {
  let relay;
  let browser;

  before(async () => {
    if (chromiumMissing()) return;
    relay = await startRelay({ args: ['--max-clients-per-server', '1'] });
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await relay?.stop();
  });

  browserTest('the host is told the room is full, the guest keeps waiting, and gets in once there is room', () =>
    withPeople('admit into a full room', browser, relay.origin, async (open) => {
      const { host, code } = await connectPair(open);
      await host.locator(byTestId('ask-to-join')).check();
      await host.waitForFunction(() => !document.querySelector('[data-testid="ask-to-join"]').disabled);
      const second = await open('second guest');
      await second.locator(byTestId('join-name')).fill('Grace');
      await joinRoom(second, code);
      await waitForStatus(second, 'Waiting for the host to let you in…');
      const knocker = host.locator(byTestId('knocker'));
      await knocker.locator(byTestId('admit')).click();
      await waitForStatus(host, 'Your room is full, so that guest is still waiting');
      await host.waitForFunction(() => !document.querySelector('[data-testid="admit"]').disabled);
      assert.match(await statusText(second), /Waiting for the host/);

      await host.locator(`${byTestId('guest')} ${byTestId('remove')}`).click();
      await knocker.locator(byTestId('admit')).click();
      await waitForStatus(second, 'connected');
      await sendChat(second, 'room for one more');
      await waitForChat(host, 'room for one more');
    }),
  );
});

describe('the demo refreshes TURN credentials before they expire', () => {
  let relay;
  let browser;

  before(async () => {
    if (chromiumMissing()) return;
    // A TURN server nobody listens on (loopback): only its credentials matter here; the call
    // connects over host candidates. They last 10 s, so the page refreshes them after about 8 s.
    relay = await startRelay({
      args: ['--ice-server', 'turn:127.0.0.1:9', '--turn-secret', 'tests-secret', '--turn-ttl', '10s'],
    });
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await relay?.stop();
  });

  browserTest('host and guest ask for fresh credentials and give them to their connections', () =>
    withPeople('ice refresh', browser, relay.origin, async (open) => {
      const { host, guest } = await connectPair(open);
      const username = (page) =>
        page.evaluate(() => window.__peerConnections.map((pc) => pc.getConfiguration().iceServers[0]?.username));
      const [hostFirst] = await username(host);
      const [guestFirst] = await username(guest);
      assert.match(hostFirst, /^\d+:/);
      for (const page of [host, guest]) {
        await page.waitForFunction(
          () => window.__sentFrames.some((text) => JSON.parse(text).type === 'ICE_REFRESH'),
          null,
          { timeout: 15000 },
        );
      }
      const renewed = (first) => window.__peerConnections[0].getConfiguration().iceServers[0].username !== first;
      await host.waitForFunction(renewed, hostFirst);
      await guest.waitForFunction(renewed, guestFirst);
      assert.ok(Number((await username(host))[0].split(':')[0]) > Number(hostFirst.split(':')[0]));
      // The call goes on.
      await sendChat(guest, 'still here after the refresh');
      await waitForChat(host, 'still here after the refresh');
    }),
  );
});
