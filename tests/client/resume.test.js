// Resume (#19) through the library, against the real relay: a dropped socket comes back with the
// same id and loses nothing either way; sends wait in a bounded queue meanwhile; leave() is final.
// Each test skips, saying so, when the relay under test offers no resume (no resumeToken in HELLO).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Intercessor, collect, next, recordingWebSocket, startRelay, until } from './lib/harness.js';

const NO_RESUME = 'resume (#19) not in this build';
const range = (from, to) => Array.from({ length: to - from }, (_, i) => from + i);

describe('resume', () => {
  let relay;
  let url;

  before(async () => {
    relay = await startRelay();
    url = `ws://${relay.listen}`;
  });
  after(() => relay?.stop());

  /** A host and a guest on cuttable sockets, or null (test skipped) when resume is needed but off. */
  async function pair(t, hostOptions = {}, { needsResume = true } = {}) {
    const hostSockets = recordingWebSocket();
    const guestSockets = recordingWebSocket();
    const room = await Intercessor.host(url, { ...hostOptions, WebSocket: hostSockets.WebSocket });
    t.after(() => room.leave());
    if (needsResume && !room.resumable) {
      t.skip(NO_RESUME);
      return null;
    }
    const joined = next(room, 'peerjoined');
    const link = await Intercessor.join(url, room.code, { WebSocket: guestSockets.WebSocket });
    t.after(() => link.leave());
    await joined;
    return { room, link, hostSockets, guestSockets };
  }

  test('a dropped host comes back with its code and misses nothing sent meanwhile', async (t) => {
    const peers = await pair(t);
    if (!peers) return;
    const { room, link, hostSockets } = peers;
    const atHost = collect(room, 'message');
    for (const n of range(0, 5)) link.send('N', n);
    await until(() => atHost.length === 5, 'the first 5 messages');

    const away = next(link, 'peeraway');
    const back = next(link, 'peerback');
    const reconnecting = next(room, 'reconnecting');
    const reconnected = next(room, 'reconnected');
    hostSockets.sockets.at(-1).terminate();
    // Sent while the host's socket is dying or gone: the relay holds them for its resume.
    for (const n of range(5, 10)) link.send('N', n);
    assert.equal((await reconnecting).code, 1006);
    assert.equal(room.state, 'reconnecting');
    assert.deepEqual(await away, { id: room.code });
    const atGuest = next(link, 'message');
    assert.equal(room.send(link.id, 'QUEUED', { n: 1 }), true, 'a send while reconnecting is queued');

    assert.equal((await reconnected).gap, false);
    assert.equal(room.state, 'open');
    assert.equal(room.code, room.id);
    assert.deepEqual(await back, { id: room.code });
    assert.deepEqual(await atGuest, { from: room.code, type: 'QUEUED', message: { n: 1 } });
    await until(() => atHost.length >= 10, 'all 10 messages at the host');
    assert.deepEqual(atHost.map(({ message }) => message), range(0, 10), 'each message once, in order');
    assert.equal(hostSockets.sockets.length, 2);
  });

  test('a dropped guest comes back with its id; the host sees it away and back', async (t) => {
    const peers = await pair(t);
    if (!peers) return;
    const { room, link, guestSockets } = peers;
    const id = link.id;
    const atGuest = collect(link, 'message');
    const away = next(room, 'peeraway');
    const back = next(room, 'peerback');
    const reconnected = next(link, 'reconnected');
    guestSockets.sockets.at(-1).terminate();
    assert.deepEqual(await away, { id });
    for (const n of range(0, 5)) room.send(id, 'N', n);
    await reconnected;
    assert.equal(link.id, id);
    assert.deepEqual(await back, { id });
    await until(() => atGuest.length >= 5, '5 messages at the guest');
    assert.deepEqual(atGuest.map(({ message }) => message), range(0, 5));
    const atHost = next(room, 'message');
    link.send('AFTER', null);
    assert.equal((await atHost).type, 'AFTER');
  });

  test('the queue while reconnecting is bounded: beyond it send() is false and says QUEUE_OVERFLOW', async (t) => {
    const peers = await pair(t, { queueLimit: 3 });
    if (!peers) return;
    const { room, link, hostSockets } = peers;
    const reconnecting = next(room, 'reconnecting');
    hostSockets.sockets.at(-1).terminate();
    await reconnecting;
    const overflow = next(room, 'error');
    assert.deepEqual(range(0, 4).map((n) => room.send(link.id, 'N', n)), [true, true, true, false]);
    assert.equal((await overflow).code, 'QUEUE_OVERFLOW');
    const atGuest = collect(link, 'message');
    await next(room, 'reconnected');
    await until(() => atGuest.length >= 3, 'the 3 queued messages');
    assert.deepEqual(atGuest.map(({ message }) => message), [0, 1, 2]);
  });

  test('after leave() nothing resumes: the guest hears the host gone, not away', async (t) => {
    const peers = await pair(t, {}, { needsResume: false });
    if (!peers) return;
    const { room, link, hostSockets } = peers;
    const seen = [];
    for (const type of ['peeraway', 'peergone']) link.on(type, () => seen.push(type));
    const closed = next(link, 'close');
    room.leave();
    assert.equal((await closed).reason, 'host-left');
    assert.deepEqual(seen, ['peergone']);
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(hostSockets.sockets.length, 1, 'no socket opened after leave()');
    assert.equal(room.state, 'closed');
  });

  test('without resume a dropped socket just closes, as connection-lost', async (t) => {
    const sockets = recordingWebSocket();
    const room = await Intercessor.host(url, { WebSocket: sockets.WebSocket });
    t.after(() => room.leave());
    if (room.resumable) return t.skip('this relay resumes: covered above');
    const closed = next(room, 'close');
    sockets.sockets[0].terminate();
    assert.deepEqual(await closed, { code: 1006, reason: 'connection-lost', text: '', error: null });
    assert.equal(room.send('x', 'N', 1), false);
  });
});
