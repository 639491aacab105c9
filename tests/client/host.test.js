// The host's controls against the real relay: kick, lock and knock (admit, deny, the knock's
// timeout), the room's state, fresh ICE servers for host and guest, and the close reasons and
// errors each one gives the guest.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { Intercessor, collect, next, recordingWebSocket, rejection, startRelay } from './lib/harness.js';

const options = { WebSocket };

describe('room control', () => {
  let relay;
  let url;

  before(async () => {
    relay = await startRelay({ args: ['--knock-timeout', '400ms'] });
    url = `ws://${relay.listen}`;
  });
  after(() => relay?.stop());

  test('kick: the guest closes with kicked and the host reason; the host hears peergone kicked', async () => {
    const room = await Intercessor.host(url, options);
    const link = await Intercessor.join(url, room.code, options);
    assert.equal(link.waiting, false, 'a room without knocking lets guests in at once');
    const gone = next(room, 'peergone');
    const closed = next(link, 'close');
    const reconnecting = collect(link, 'reconnecting');
    assert.equal(room.kick(link.id, 'be nice'), true);
    const { code, reason, text, error } = await closed;
    assert.deepEqual({ code, reason, text }, { code: 4403, reason: 'kicked', text: 'kicked' });
    assert.equal(error.code, 'KICKED');
    assert.equal(error.message, 'be nice');
    assert.deepEqual(await gone, { id: link.id, reason: 'kicked' });
    assert.equal(link.state, 'closed');
    assert.deepEqual(reconnecting, [], 'a kicked guest does not try to resume');
    room.leave();
  });

  test('kick without a reason', async () => {
    const room = await Intercessor.host(url, options);
    const link = await Intercessor.join(url, room.code, options);
    const closed = next(link, 'close');
    room.kick(link.id);
    const { reason, error } = await closed;
    assert.equal(reason, 'kicked');
    assert.equal(error.code, 'KICKED');
    room.leave();
  });

  test('setRoom locks the room: a new guest is refused (locked), members stay, unlocking lets guests in', async () => {
    const room = await Intercessor.host(url, options);
    const member = await Intercessor.join(url, room.code, options);
    const events = collect(room, 'room');
    const state = await room.setRoom({ locked: true });
    assert.deepEqual(state, { locked: true, knock: false, waiting: [] });
    assert.deepEqual(events, [state], 'the answer is a room event too');

    const refused = await rejection(Intercessor.join(url, room.code, options));
    assert.equal(refused.code, 'ROOM_LOCKED');
    assert.deepEqual(refused.close, { code: 4423, reason: 'locked' });

    const atHost = next(room, 'message');
    member.send('STILL_HERE', 1);
    assert.equal((await atHost).type, 'STILL_HERE');

    assert.deepEqual(await room.setRoom({ locked: false }), { locked: false, knock: false, waiting: [] });
    const joined = await Intercessor.join(url, room.code, options);
    assert.equal(joined.state, 'open');
    assert.deepEqual(await room.setRoom(), { locked: false, knock: false, waiting: [] }, 'no settings just asks');
    joined.leave();
    member.leave();
    room.leave();
  });

  test('host({ locked: true }) opens the room locked', async () => {
    const room = await Intercessor.host(url, { ...options, locked: true });
    const refused = await rejection(Intercessor.join(url, room.code, options));
    assert.deepEqual(refused.close, { code: 4423, reason: 'locked' });
    assert.deepEqual(await room.setRoom(), { locked: true, knock: false, waiting: [] });
    room.leave();
  });

  test('knock and admit: the guest waits with its name shown, is admitted, then talks', async () => {
    const room = await Intercessor.host(url, { ...options, knock: true });
    const knocked = next(room, 'knock');
    const joined = collect(room, 'peerjoined');
    const link = await Intercessor.join(url, room.code, { ...options, name: 'Ada Lovelace' });
    assert.equal(link.waiting, true);
    assert.deepEqual(await knocked, { id: link.id, info: 'Ada Lovelace' });
    assert.deepEqual(await room.setRoom(), { locked: false, knock: true, waiting: [link.id] });

    const notAdmitted = next(link, 'error');
    link.send('TOO_EARLY', {});
    assert.equal((await notAdmitted).code, 'NOT_ADMITTED');
    assert.deepEqual(joined, [], 'a knocker is not a member');

    const admitted = next(link, 'admitted');
    const peerJoined = next(room, 'peerjoined');
    assert.equal(room.admit(link.id), true);
    assert.deepEqual(await admitted, {});
    assert.equal(link.waiting, false);
    assert.deepEqual(await peerJoined, { id: link.id });

    const atHost = next(room, 'message');
    link.send('HI', { n: 1 });
    assert.deepEqual(await atHost, { from: link.id, type: 'HI', message: { n: 1 } });
    const atGuest = next(link, 'message');
    room.send(link.id, 'WELCOME');
    assert.equal((await atGuest).type, 'WELCOME');
    link.leave();
    room.leave();
  });

  test('knock with setRoom({ knock: true }), and a guest without a name', async () => {
    const room = await Intercessor.host(url, options);
    assert.deepEqual(await room.setRoom({ knock: true }), { locked: false, knock: true, waiting: [] });
    const knocked = next(room, 'knock');
    const link = await Intercessor.join(url, room.code, options);
    assert.equal(link.waiting, true);
    const knock = await knocked;
    assert.equal(knock.id, link.id);
    assert.equal(knock.info ?? null, null);
    link.leave();
    room.leave();
  });

  test('deny: the knocker closes with denied and the host reason; the host hears knockgone denied', async () => {
    const room = await Intercessor.host(url, { ...options, knock: true });
    const knocked = next(room, 'knock');
    const link = await Intercessor.join(url, room.code, { ...options, name: 'Mallory' });
    await knocked;
    const gone = next(room, 'knockgone');
    const closed = next(link, 'close');
    assert.equal(room.deny(link.id, 'not today'), true);
    const { code, reason, text, error } = await closed;
    assert.deepEqual({ code, reason, text }, { code: 4403, reason: 'denied', text: 'denied' });
    assert.equal(error.code, 'DENIED');
    assert.equal(error.message, 'not today');
    assert.deepEqual(await gone, { id: link.id, reason: 'denied' });
    room.leave();
  });

  test('an unanswered knock closes with knock-timeout; the host hears knockgone timeout', async () => {
    const room = await Intercessor.host(url, { ...options, knock: true });
    const gone = next(room, 'knockgone');
    const link = await Intercessor.join(url, room.code, options);
    const { code, reason, error } = await next(link, 'close');
    assert.deepEqual(
      { code, reason, error: error.code },
      { code: 4408, reason: 'knock-timeout', error: 'KNOCK_TIMEOUT' },
    );
    assert.deepEqual(await gone, { id: link.id, reason: 'timeout' });
    room.leave();
  });

  test('a knocker that leaves is knockgone left; one whose connection drops is gone, not resumed', async () => {
    const room = await Intercessor.host(url, { ...options, knock: true });
    const first = await Intercessor.join(url, room.code, options);
    const left = next(room, 'knockgone', ({ id }) => id === first.id);
    first.leave();
    assert.deepEqual(await left, { id: first.id, reason: 'left' });

    const cut = recordingWebSocket();
    const second = await Intercessor.join(url, room.code, { WebSocket: cut.WebSocket });
    const reconnecting = collect(second, 'reconnecting');
    const dropped = next(room, 'knockgone', ({ id }) => id === second.id);
    const closed = next(second, 'close');
    cut.sockets[0].terminate();
    const { reason } = await closed;
    assert.equal(reason, 'connection-lost');
    assert.deepEqual(reconnecting, []);
    assert.equal((await dropped).reason, 'left');
    room.leave();
  });

  test('setRoom and refreshIce reject with CLOSED once the room is closed', async () => {
    const room = await Intercessor.host(url, options);
    room.leave();
    assert.equal((await rejection(room.setRoom({ locked: true }))).code, 'CLOSED');
    assert.equal((await rejection(room.refreshIce())).code, 'CLOSED');
    assert.equal(room.kick('nobody'), false);
  });
});

describe('fresh ICE servers', () => {
  let relay;
  let url;

  before(async () => {
    relay = await startRelay({
      args: [
        '--ice-server', 'stun:stun.invalid:3478', '--ice-server', 'turn:turn.invalid:3478',
        '--turn-secret', 'tests-secret', '--turn-ttl', '1h',
      ],
    });
    url = `ws://${relay.listen}`;
  });
  after(() => relay?.stop());

  test('refreshIce gives host and guest fresh TURN credentials and updates iceServers', async () => {
    const room = await Intercessor.host(url, options);
    const link = await Intercessor.join(url, room.code, options);
    for (const signal of [room, link]) {
      const [stun, turn] = signal.iceServers;
      assert.deepEqual(stun, { urls: 'stun:stun.invalid:3478' });
      const [expiry, id] = turn.username.split(':');
      assert.equal(id, signal.id);
      assert.ok(Math.abs(Number(expiry) - (Date.now() / 1000 + 3600)) < 60, `expiry ${expiry} is about an hour away`);

      const heard = next(signal, 'iceservers');
      const fresh = await signal.refreshIce();
      assert.equal(fresh.length, 2);
      assert.equal(fresh[1].urls, 'turn:turn.invalid:3478');
      assert.match(fresh[1].username, new RegExp(`^\\d+:${signal.id}$`));
      assert.ok(fresh[1].credential);
      assert.deepEqual(signal.iceServers, fresh);
      assert.deepEqual(await heard, { iceServers: fresh });
    }
    link.leave();
    room.leave();
  });

  test('without --ice-server, refreshIce resolves with no servers', async () => {
    const plain = await startRelay();
    try {
      const room = await Intercessor.host(`ws://${plain.listen}`, options);
      assert.deepEqual(await room.refreshIce(), []);
      assert.deepEqual(room.iceServers, []);
      room.leave();
    } finally {
      await plain.stop();
    }
  });
});
