// The demo's call across a cluster: two relay instances, a and b, sharing join codes through a
// redis-server of the test's own, the host's room on a and the guest reaching b first.

import assert from 'node:assert/strict';
import { after, before, describe } from 'node:test';
import { browserTest, chromiumMissing, launchBrowser } from './lib/browser.js';
import { metric, startInstance, startProxy, startRedis } from './lib/cluster.js';
import {
  assertIceStaysOnMachine,
  assertNoCspViolations,
  hostRoom,
  relayErrors,
  sendChat,
  waitForChat,
  waitForRemoteVideo,
  waitForStatus,
  withPeople,
} from './lib/pages.js';

/** Starts each of `starters` in turn; resolves to their results. */
async function startAll(starters) {
  const started = [];
  for (const start of starters) started.push(await start());
  return started;
}

/** Stops what the hooks started, newest first (the relays drain while their Redis still answers). */
async function stopAll(started) {
  for (const part of [...started].reverse()) await part?.stop();
}

/**
 * The guest joins the host's room `code` from `guestOrigin`'s join link; both say "connected",
 * chat crosses both ways and a camera call plays both ways, on candidate pairs within this
 * machine, with no relay errors and no CSP violations.
 */
async function callCompletes(host, open, guestOrigin, code) {
  const guest = await open('guest', `${guestOrigin}/?code=${code}`);
  assert.equal(await guest.locator('[data-testid="join-code"]').inputValue(), code);
  await guest.locator('[data-testid="join"]').click();
  await waitForStatus(guest, 'connected');
  await waitForStatus(host, 'connected');

  await sendChat(guest, 'hello across instances');
  await waitForChat(host, 'hello across instances');
  await sendChat(host, 'hi from the owner');
  await waitForChat(guest, 'hi from the owner');
  await guest.locator('[data-testid="call"]').click();
  await waitForRemoteVideo(host);
  await host.locator('[data-testid="call"]').click();
  await waitForRemoteVideo(guest);

  for (const page of [host, guest]) {
    await assertIceStaysOnMachine(page);
    assert.deepEqual(await relayErrors(page), []);
    await assertNoCspViolations(page);
  }
  return guest;
}

describe('demo page on a two-instance cluster, --cluster-routing fly-replay', () => {
  let started = [];
  let a;
  let b;
  let nearA;
  let nearB;
  let browser;

  before(async () => {
    if (chromiumMissing()) return;
    const [redis] = (started = await startAll([startRedis]));
    [a, b] = await startAll([
      () => startInstance(redis, 'a', 'fly-replay'),
      () => startInstance(redis, 'b', 'fly-replay', ['--metrics-listen', '127.0.0.1:0']),
    ]);
    started.push(a, b);
    // Two proxies in front of both instances, as two of Fly's edges: one sends each connection
    // to a first, the other to b. A replay is the proxy's doing, so each is watched on its own.
    [nearA, nearB] = await startAll([() => startProxy({ a, b }, 'a'), () => startProxy({ a, b }, 'b')]);
    started.push(nearA, nearB);
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await stopAll(started);
  });

  const name = 'the call completes with the host on a and the guest replayed to it from b';
  browserTest(name, () =>
    withPeople(name, browser, nearA.origin, async (open) => {
      const host = await open('host');
      const code = await hostRoom(host);
      assert.equal(await host.locator('[data-testid="share-link"]').inputValue(), `${nearA.origin}/?code=${code}`);

      const guest = await callCompletes(host, open, nearB.origin, code);

      // The host registered on a directly; b served the guest's page and answered its upgrade
      // with a replay to a, which the proxy carried out.
      assert.ok(nearA.lines.includes('GET /server -> a 101'), nearA.lines.join('\n'));
      assert.ok(nearB.lines.includes('GET / -> b 200'), nearB.lines.join('\n'));
      const replayed = new RegExp(`^GET /client/${code} -> b 307, replayed -> a 101$`, 'i');
      assert.equal(nearB.lines.filter((line) => replayed.test(line)).length, 1, nearB.lines.join('\n'));
      assert.equal(await metric(b, 'intercessor_directory_operations_total{outcome="replayed"}'), 1);
      const sockets = await guest.evaluate(() => window.__socketUrls);
      assert.deepEqual(sockets.map((url) => new URL(url).host), [new URL(nearB.origin).host]);
    }),
  );
});

describe('demo page on a two-instance cluster, --cluster-routing pubsub', () => {
  let started = [];
  let a;
  let b;
  let browser;

  before(async () => {
    if (chromiumMissing()) return;
    const [redis] = (started = await startAll([startRedis]));
    [a, b] = await startAll([
      () => startInstance(redis, 'a', 'pubsub'),
      () => startInstance(redis, 'b', 'pubsub', ['--metrics-listen', '127.0.0.1:0']),
    ]);
    started.push(a, b);
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await stopAll(started);
  });

  const name = 'the call completes with the host on a and the guest on b, with no proxy';
  browserTest(name, () =>
    withPeople(name, browser, a.origin, async (open) => {
      const host = await open('host');
      const code = await hostRoom(host);

      const guest = await callCompletes(host, open, b.origin, code);

      // Each page's only socket went to the instance that served it, so b forwarded the guest's
      // frames to a and a's answers back, over Redis.
      const hosts = async (page) => (await page.evaluate(() => window.__socketUrls)).map((url) => new URL(url).host);
      assert.deepEqual(await hosts(host), [a.listen]);
      assert.deepEqual(await hosts(guest), [b.listen]);
      assert.ok((await metric(b, 'intercessor_forwarded_frames_total{direction="out"}')) > 0);
      assert.ok((await metric(b, 'intercessor_forwarded_frames_total{direction="in"}')) > 0);
    }),
  );
});
