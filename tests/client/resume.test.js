// Resume (#19) through the library, against the real relay: a dropped socket comes back with the
// same id and loses nothing either way; sends wait in a bounded queue meanwhile; leave() is final.
// Each test skips, saying so, when the relay under test offers no resume (no resumeToken in HELLO).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
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

  test('frames lost on the way are replayed from the count received: each arrives once', async (t) => {
    const peers = await pair(t);
    if (!peers) return;
    const { room, link, hostSockets } = peers;
    const atHost = collect(room, 'message');
    for (const n of range(0, 3)) link.send('N', n);
    await until(() => atHost.length === 3, 'the first 3 messages');
    const socket = hostSockets.sockets[0];
    socket.deaf = true;
    for (const n of range(3, 8)) link.send('N', n);
    await new Promise((resolve) => setTimeout(resolve, 200));
    const reconnected = next(room, 'reconnected');
    socket.terminate();
    assert.deepEqual(await reconnected, { replayed: 5, gap: false });
    await until(() => atHost.length >= 8, 'all 8 messages');
    assert.deepEqual(atHost.map(({ message }) => message), range(0, 8));
  });

  test('frames lost beyond the replay window are a gap: the app hears gap, then reconnected', async (t) => {
    // A replay window of about six 200-byte frames, the least the relay allows for 1 KiB messages.
    const small = await startRelay({ args: ['--max-message-bytes', '1024', '--resume-queue-bytes', '1280'] });
    t.after(() => small.stop());
    const sockets = recordingWebSocket();
    const room = await Intercessor.host(`ws://${small.listen}`, { WebSocket: sockets.WebSocket });
    t.after(() => room.leave());
    if (!room.resumable) return t.skip(NO_RESUME);
    const joined = next(room, 'peerjoined');
    const link = await Intercessor.join(`ws://${small.listen}`, room.code, { WebSocket });
    t.after(() => link.leave());
    await joined;
    // What the relay writes to the host from now on is lost on the way.
    const socket = sockets.sockets[0];
    socket.deaf = true;
    const atHost = collect(room, 'message');
    for (const n of range(0, 20)) link.send('N', { n, pad: 'x'.repeat(180) });
    await new Promise((resolve) => setTimeout(resolve, 200));
    const events = [];
    room.on('gap', () => events.push('gap'));
    const reconnected = next(room, 'reconnected');
    socket.terminate();
    const { gap, replayed } = await reconnected;
    assert.equal(gap, true);
    assert.deepEqual(events, ['gap']);
    assert.ok(replayed > 0 && replayed < 20, `replayed ${replayed}`);
    await until(() => atHost.length === replayed, `the ${replayed} replayed frames`);
    assert.deepEqual(atHost.map(({ message }) => message.n), range(20 - replayed, 20), 'the newest frames, in order');
  });

  test('a token the relay does not know (it restarted) ends in resume-failed', async (t) => {
    const first = await startRelay();
    const sockets = recordingWebSocket();
    const room = await Intercessor.host(`ws://${first.listen}`, { WebSocket: sockets.WebSocket });
    t.after(() => room.leave());
    if (!room.resumable) {
      await first.stop();
      return t.skip(NO_RESUME);
    }
    const reconnecting = next(room, 'reconnecting');
    await first.stop();
    assert.equal((await reconnecting).code, 1001);
    // A new relay on the same address knows no token of the old one.
    const second = await startRelay({ args: ['--listen', first.listen] });
    t.after(() => second.stop());
    const { reason, error } = await next(room, 'close');
    assert.equal(reason, 'resume-failed');
    assert.equal(error.code, 'RESUME_FAILED');
    assert.ok(sockets.sockets.length >= 2);
  });

  test('a host of a relay with a passphrase resumes with its token alone', async (t) => {
    const guarded = await startRelay({ args: ['--passphrase', 'open sesame'] });
    t.after(() => guarded.stop());
    const sockets = recordingWebSocket();
    const room = await Intercessor.host(`ws://${guarded.listen}`, { WebSocket: sockets.WebSocket, passphrase: 'open sesame' });
    t.after(() => room.leave());
    if (!room.resumable) return t.skip(NO_RESUME);
    const reconnected = next(room, 'reconnected');
    sockets.sockets[0].terminate();
    await reconnected;
    const resumedAt = new URL(sockets.sockets[1].url);
    assert.deepEqual([...resumedAt.searchParams.keys()], ['resume', 'received', 'code']);
    assert.equal(resumedAt.searchParams.get('code'), room.code, 'the code finds a cluster\'s room');
  });

  test('with --resume-window 0 a dropped socket just closes, as connection-lost', async (t) => {
    const off = await startRelay({ args: ['--resume-window', '0'] });
    t.after(() => off.stop());
    const sockets = recordingWebSocket();
    const room = await Intercessor.host(`ws://${off.listen}`, { WebSocket: sockets.WebSocket });
    t.after(() => room.leave());
    assert.equal(room.resumable, false);
    const closed = next(room, 'close');
    sockets.sockets[0].terminate();
    assert.deepEqual(await closed, { code: 1006, reason: 'connection-lost', text: '', error: null });
    assert.equal(room.send('x', 'N', 1), false, 'nothing is queued without resume');
  });
});
