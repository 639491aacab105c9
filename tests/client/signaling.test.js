// The library against the real relay binary on loopback: every event and method that the relay
// supports without resume, error mapping, close reasons, and code normalisation.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { Intercessor, IntercessorError, collect, next, rejection, startRelay, until } from './lib/harness.js';

const options = { WebSocket };

describe('a host and a guest', () => {
  let relay;
  let url;

  before(async () => {
    relay = await startRelay({
      args: ['--ice-server', 'stun:stun.invalid:3478', '--server-info', 'tests', '--max-clients-per-server', '2'],
    });
    url = `ws://${relay.listen}`;
  });
  after(() => relay?.stop());

  test('host gets a code and the relay ICE servers; a guest joins with the code as typed', async () => {
    const room = await Intercessor.host(url, options);
    assert.match(room.code, /^[0-9A-HJKMNP-TV-Z]{6}$/);
    assert.equal(room.id, room.code);
    assert.equal(room.state, 'open');
    assert.equal(room.serverInfo, 'tests');
    assert.deepEqual(room.iceServers, [{ urls: 'stun:stun.invalid:3478' }]);

    const joined = next(room, 'peerjoined');
    // Lower case, a dash, and O for 0 / L for 1 where the code has them: as a person types it.
    const typed = `${room.code.slice(0, 3)}-${room.code.slice(3)}`.toLowerCase().replace(/0/g, 'o').replace(/1/g, 'l');
    const link = await Intercessor.join(url, typed, options);
    assert.equal(link.code, room.code);
    assert.equal(link.state, 'open');
    assert.equal(link.id.length, 21);
    assert.deepEqual(link.iceServers, room.iceServers);
    assert.deepEqual(await joined, { id: link.id });

    const atHost = next(room, 'message');
    assert.equal(link.send('OFFER', { type: 'offer', sdp: 'v=0' }), true);
    assert.deepEqual(await atHost, { from: link.id, type: 'OFFER', message: { type: 'offer', sdp: 'v=0' } });
    const atGuest = next(link, 'message');
    room.send(link.id, 'ANSWER');
    assert.deepEqual(await atGuest, { from: room.code, type: 'ANSWER', message: null });

    const gone = next(room, 'peergone');
    link.leave();
    assert.equal(link.state, 'closed');
    assert.deepEqual(await gone, { id: link.id });
    assert.equal(link.send('LATE', {}), false, 'a link that left sends nothing');
    room.leave();
  });

  test('messages arrive in order, none dropped, both ways', async () => {
    const room = await Intercessor.host(url, options);
    const link = await Intercessor.join(url, room.code, options);
    const atHost = collect(room, 'message');
    const atGuest = collect(link, 'message');
    for (let n = 0; n < 40; n += 1) {
      link.send('N', n);
      room.send(link.id, 'N', n);
    }
    await until(() => atHost.length === 40 && atGuest.length === 40, '40 messages each way');
    assert.deepEqual(atHost.map(({ message }) => message), [...Array(40).keys()]);
    assert.deepEqual(atGuest.map(({ message }) => message), [...Array(40).keys()]);
    link.leave();
    room.leave();
  });

  test('the host leaving closes the guest with host-left, after peergone', async () => {
    const room = await Intercessor.host(url, options);
    const link = await Intercessor.join(url, room.code, options);
    const events = [];
    link.on('peergone', ({ id }) => events.push(`peergone ${id}`));
    const closed = next(link, 'close');
    room.leave();
    const { code, reason, error } = await closed;
    assert.deepEqual({ code, reason, error }, { code: 4410, reason: 'host-left', error: null });
    assert.equal((await closed).text, 'server gone');
    assert.deepEqual(events, [`peergone ${room.code}`]);
    assert.equal(link.state, 'closed');
  });

  test('every relay ERROR is a typed error event with the relay code', async () => {
    const room = await Intercessor.host(url, options);
    const unknown = next(room, 'error');
    room.send('Xq3V9rK_2mPz8LwN4bT1c', 'OFFER', {});
    const error = await unknown;
    assert.ok(error instanceof IntercessorError);
    assert.equal(error.code, 'UNKNOWN_PEER');
    assert.equal(error.detail.id, 'Xq3V9rK_2mPz8LwN4bT1c');
    assert.equal(typeof error.message, 'string');

    const bad = next(room, 'error');
    room.send(room.code, 'T'.repeat(65), {});
    assert.equal((await bad).code, 'BAD_MESSAGE');
    assert.equal(room.state, 'open', 'an ERROR that closes nothing leaves the room open');
    room.leave();
  });

  test('a full room refuses with SERVER_FULL and room-full', async () => {
    const room = await Intercessor.host(url, options);
    const guests = [await Intercessor.join(url, room.code, options), await Intercessor.join(url, room.code, options)];
    const error = await rejection(Intercessor.join(url, room.code, options));
    assert.equal(error.code, 'SERVER_FULL');
    assert.deepEqual(error.close, { code: 4409, reason: 'room-full' });
    for (const guest of guests) guest.leave();
    room.leave();
  });

  test('an unknown code is UNKNOWN_SERVER and unknown-code; a code that cannot be one is refused here', async () => {
    const error = await rejection(Intercessor.join(url, 'zzz-zzz', options));
    assert.ok(error instanceof IntercessorError);
    assert.equal(error.code, 'UNKNOWN_SERVER');
    assert.deepEqual(error.close, { code: 4404, reason: 'unknown-code' });

    for (const typed of ['', 'ab', 'UUUUUU', '7KQ2MX!']) {
      const local = await rejection(Intercessor.join(url, typed, options));
      assert.equal(local.code, 'BAD_CODE', `join(${JSON.stringify(typed)})`);
    }
  });

  test('the global WebSocket is used when no class is given', async (t) => {
    const had = Object.getOwnPropertyDescriptor(globalThis, 'WebSocket');
    globalThis.WebSocket = WebSocket;
    t.after(() => (had ? Object.defineProperty(globalThis, 'WebSocket', had) : delete globalThis.WebSocket));
    const room = await Intercessor.host(`http://${relay.listen}/`);
    assert.equal(room.state, 'open');
    room.leave();
  });
});

describe('normalizeCode', () => {
  test('reads codes the relay way', () => {
    assert.equal(Intercessor.normalizeCode('7kq-2mx'), '7KQ2MX');
    assert.equal(Intercessor.normalizeCode(' 7KQ 2MX '), '7KQ2MX');
    assert.equal(Intercessor.normalizeCode('o1l-iOz'), '01110Z');
  });
});

describe('a relay with a passphrase', () => {
  let relay;
  before(async () => {
    relay = await startRelay({ args: ['--passphrase', 'sesame & co'] });
  });
  after(() => relay?.stop());

  test('hosting needs it; with it the room opens', async () => {
    const url = `ws://${relay.listen}`;
    const refused = await rejection(Intercessor.host(url, options));
    assert.equal(refused.code, 'UNAUTHORIZED');
    assert.deepEqual(refused.close, { code: 4401, reason: 'unauthorized' });
    const wrong = await rejection(Intercessor.host(url, { ...options, passphrase: 'sesame' }));
    assert.equal(wrong.code, 'UNAUTHORIZED');
    const room = await Intercessor.host(url, { ...options, passphrase: 'sesame & co' });
    assert.equal(room.state, 'open');
    room.leave();
  });
});

describe('no relay', () => {
  test('an address where nothing listens is UNREACHABLE and connection-lost', async () => {
    const relay = await startRelay();
    const url = `ws://${relay.listen}`;
    await relay.stop();
    const error = await rejection(Intercessor.host(url, options));
    assert.equal(error.code, 'UNREACHABLE');
    assert.deepEqual(error.close, { code: 1006, reason: 'connection-lost' });
  });

  test('a relay that never says HELLO is a TIMEOUT', async (t) => {
    const { WebSocketServer } = await import('ws');
    const silent = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    t.after(() => silent.close());
    await new Promise((resolve) => silent.once('listening', resolve));
    const url = `ws://127.0.0.1:${silent.address().port}`;
    const error = await rejection(Intercessor.host(url, { ...options, helloTimeoutMs: 200 }));
    assert.equal(error.code, 'TIMEOUT');
  });
});

describe('close reasons and errors from relays with tight limits', () => {
  test('rate-limited frames are RATE_LIMITED error events, and the room stays open', async (t) => {
    const relay = await startRelay({ args: ['--rate-limit', '1'] });
    t.after(() => relay.stop());
    const room = await Intercessor.host(`ws://${relay.listen}`, options);
    const errors = collect(room, 'error');
    for (let n = 0; n < 6; n += 1) room.send(room.code, 'FLOOD', n);
    await until(() => errors.some(({ code }) => code === 'RATE_LIMITED'), 'a RATE_LIMITED error');
    assert.equal(room.state, 'open');
    room.leave();
  });

  test('a message over --max-message-bytes closes with too-big', async (t) => {
    const relay = await startRelay({ args: ['--max-message-bytes', '1024'] });
    t.after(() => relay.stop());
    const room = await Intercessor.host(`ws://${relay.listen}`, options);
    const closed = next(room, 'close');
    room.send(room.code, 'BIG', 'x'.repeat(2048));
    const { code, reason } = await closed;
    assert.deepEqual({ code, reason }, { code: 1009, reason: 'too-big' });
  });

  test('a second connection from one address over --max-connections-per-ip is rate-limited', async (t) => {
    const relay = await startRelay({ args: ['--max-connections-per-ip', '1'] });
    t.after(() => relay.stop());
    const url = `ws://${relay.listen}`;
    const room = await Intercessor.host(url, options);
    const error = await rejection(Intercessor.host(url, options));
    assert.equal(error.code, 'RATE_LIMITED');
    assert.deepEqual(error.close, { code: 4429, reason: 'rate-limited' });
    room.leave();
  });

  test('a message the schema refuses is INVALID_MESSAGE, with its type and path', async (t) => {
    const schema = new URL('../../examples/webrtc-signaling.schema.json', import.meta.url).pathname;
    let relay;
    try {
      relay = await startRelay({ args: ['--message-schema', schema] });
    } catch (error) {
      // A relay built without its default cargo feature `schema` cannot validate at all.
      if (/no JSON Schema support/.test(error.message)) return t.skip('the relay was built without `schema`');
      throw error;
    }
    t.after(() => relay.stop());
    const room = await Intercessor.host(`ws://${relay.listen}`, options);
    const refused = next(room, 'error');
    room.send(room.code, 'OFFER', { sdp: 42 });
    const error = await refused;
    assert.equal(error.code, 'INVALID_MESSAGE');
    assert.equal(error.detail.type, 'OFFER');
    assert.equal(typeof error.detail.path, 'string');
    room.leave();
  });

  test('the relay shutting down is relay-shutdown (or, with resume, a reconnect)', async (t) => {
    const relay = await startRelay();
    t.after(() => relay.stop());
    const room = await Intercessor.host(`ws://${relay.listen}`, options);
    t.after(() => room.leave());
    const event = room.resumable ? 'reconnecting' : 'close';
    const seen = next(room, event);
    await relay.stop();
    const detail = await seen;
    assert.equal(detail.code, 1001);
    if (event === 'close') assert.equal(detail.reason, 'relay-shutdown');
  });
});
