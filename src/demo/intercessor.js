// Intercessor's client library: signaling through the relay, reconnects included, for browsers and
// Node 20+ (give it `ws` where there is no global WebSocket). The API is typed and documented in
// intercessor.d.ts.

const RELAY = '0';
const CODE = /^[0-9A-HJKMNP-TV-Z]{4,16}$/;
const HELLO_TIMEOUT_MS = 15000;
const QUEUE_LIMIT = 256;
// Retries start quickly (a blip) and back off; jitter keeps a room's peers from retrying in step.
const RETRY_FIRST_MS = 100;
const RETRY_MAX_MS = 5000;
// Close reasons by close code, or by the ERROR just before the close, which says more (4403, 4408).
const REASONS = {
  1000: 'left', 1001: 'relay-shutdown', 1006: 'connection-lost', 1008: 'too-slow',
  1009: 'too-big', 1013: 'unavailable', 4401: 'unauthorized', 4404: 'unknown-code',
  4408: 'idle-timeout', 4409: 'room-full', 4410: 'host-left', 4412: 'superseded',
  4423: 'locked', 4429: 'rate-limited',
  KICKED: 'kicked', DENIED: 'denied', KNOCK_TIMEOUT: 'knock-timeout', RESUME_FAILED: 'resume-failed',
};
// Relay notices emitted as events: PEER_JOINED as `peerjoined`, KNOCK_GONE as `knockgone`, …
const EVENTS = /^(PEER_(JOINED|GONE|AWAY|BACK)|KNOCK(_GONE)?|ADMITTED|ROOM|ICE_SERVERS)$/;
// The relay ended this peer on purpose: resuming could only fail.
const FINAL = new Set([1000, 1002, 1003, 1007, 1008, 1009, 4401, 4403, 4404, 4409, 4410, 4412, 4423, 4429]);

export function normalizeCode(typed) {
  return String(typed).toUpperCase().replace(/[\s-]+/g, '').replace(/O/g, '0').replace(/[IL]/g, '1');
}

export class IntercessorError extends Error {
  constructor(code, message, detail = {}) {
    super(message || code);
    this.name = 'IntercessorError';
    this.code = code;
    this.detail = detail;
  }
}

class Signal {
  #listeners = new Map();
  #url; #options; #settle;
  #ws; #live; #timer;
  #token = null; #windowMs = 0; #received = 0; #deadline = 0; #attempt = 0; #lost = 0;
  #queue = []; #error = null;

  constructor(url, options) {
    this.#url = url;
    this.#options = options;
    this.state = 'connecting';
  }

  on(type, listener) {
    const set = this.#listeners.get(type) ?? new Set();
    this.#listeners.set(type, set.add(listener));
    return () => set.delete(listener);
  }

  #emit(type, detail) {
    for (const listener of [...(this.#listeners.get(type) ?? [])]) listener(detail);
  }

  get resumable() {
    return this.#token !== null;
  }

  _open() {
    return new Promise((resolve, reject) => {
      this.#settle = (error) => (error ? reject(error) : resolve(this));
      this.#connect();
    });
  }

  #connect(query) {
    // A resume sends its token, never the passphrase; `code` finds a cluster's room.
    const url = query ? `${this.#url.split('?')[0]}?${query}` : this.#url;
    let ws;
    try {
      ws = new (this.#options.WebSocket ?? WebSocket)(url);
    } catch (error) {
      return this.#end(0, new IntercessorError('CONNECT_FAILED', error.message));
    }
    this.#ws = ws;
    this.#timer = setTimeout(() => {
      this.#error = new IntercessorError('TIMEOUT');
      ws.close();
    }, this.#options.helloTimeoutMs ?? HELLO_TIMEOUT_MS);
    ws.onmessage = ({ data }) => ws === this.#ws && this.#frame(data);
    ws.onclose = ({ code, reason }) => ws === this.#ws && this.#closed(code, reason);
    // An error is always followed by a close, which says what happened.
    ws.onerror = () => {};
  }

  #frame(data) {
    // A resume reports how many frames came after this socket's HELLO.
    if (this.#live) this.#received += 1;
    let frame = null;
    try {
      frame = JSON.parse(data);
    } catch {}
    if (typeof frame?.type !== 'string') return;
    const { from, type, message = null } = frame;
    if (from === RELAY && type === 'HELLO') return this.#hello(message ?? {});
    // A close's error is the ERROR right before it, if any.
    this.#error = null;
    if (from !== RELAY) return this.#emit('message', { from, type, message });
    if (type === 'ERROR') return this.#onError(message ?? {});
    if (type === 'ADMITTED') this.waiting = false;
    if (type === 'ICE_SERVERS') this.iceServers = message?.iceServers ?? [];
    if (EVENTS.test(type)) this.#emit(type.toLowerCase().replace('_', ''), message ?? {});
  }

  #hello(message) {
    clearTimeout(this.#timer);
    this.#live = true;
    this.#received = 0;
    this.#token = message.resumeToken ?? null;
    this.#windowMs = Number(message.resumeWindowMs) || 0;
    if (this.state === 'reconnecting') {
      this.state = 'open';
      this.#attempt = 0;
      for (const frame of this.#queue.splice(0)) this.#ws.send(frame);
      const { replayed = 0, gap = false } = message;
      if (gap) this.#emit('gap', { replayed });
      return this.#emit('reconnected', { replayed, gap });
    }
    this.id = message.id;
    this.iceServers = message.iceServers ?? [];
    this.serverInfo = message.serverInfo ?? null;
    this.waiting = message.waiting === true;
    this.state = 'open';
    this.#settle();
  }

  #onError({ code, reason, ...rest }) {
    const error = new IntercessorError(code, reason, rest);
    this.#error = error;
    if (code === 'RESUME_FAILED') {
      this.#ws.close(1000);
      this.#end(this.#lost, error, reason);
    } else if (this.#live) {
      this.#emit('error', error);
    }
  }

  #closed(code, text) {
    clearTimeout(this.#timer);
    const wasLive = this.#live;
    this.#live = false;
    if (this.state === 'closed') return;
    if (this.state === 'connecting') {
      return this.#end(code, this.#error ?? (code === 1006 ? new IntercessorError('UNREACHABLE') : null), text);
    }
    // A knocker that drops is gone, not away.
    if (!this.#token || this.waiting || FINAL.has(code)) return this.#end(code, this.#error, text);
    if (wasLive) {
      this.#lost = code;
      this.#deadline = Date.now() + this.#windowMs;
      this.state = 'reconnecting';
      this.#emit('reconnecting', { code });
    }
    const left = this.#deadline - Date.now();
    if (left <= 0) return this.#end(this.#lost, this.#error);
    const backoff = Math.min(RETRY_MAX_MS, RETRY_FIRST_MS * 2 ** this.#attempt++) * (0.5 + Math.random() / 2);
    const query = `resume=${this.#token}&received=${this.#received}&code=${this.code}`;
    this.#timer = setTimeout(() => this.#connect(query), Math.min(left, backoff));
  }

  #end(code, error, text = '', reason = REASONS[error?.code] ?? REASONS[code] ?? 'closed') {
    clearTimeout(this.#timer);
    const wasOpen = this.state !== 'connecting';
    this.state = 'closed';
    this.#queue = [];
    if (wasOpen) return this.#emit('close', { code, reason, text, error });
    const failure = error ?? new IntercessorError('CLOSED', `closed with ${code}`);
    failure.close = { code, reason };
    this.#settle(failure);
  }

  // Sends now, or queues while resuming; false when it can do neither.
  _send(to, type, message) {
    const frame = JSON.stringify({ to, type, message });
    if (this.state === 'open' && this.#ws.readyState === 1) this.#ws.send(frame);
    // With resume, a socket closing under an open room is as good as reconnecting.
    else if (this.state === 'closed' || this.state === 'connecting' || !this.#token) return false;
    else if (this.#queue.length < (this.#options.queueLimit ?? QUEUE_LIMIT)) this.#queue.push(frame);
    else {
      this.#emit('error', new IntercessorError('QUEUE_OVERFLOW'));
      return false;
    }
    return true;
  }

  // Sends a command to the relay; resolves with its answer, the next `event`.
  _ask(type, message, event) {
    let stops;
    return new Promise((resolve, reject) => {
      const closed = () => reject(new IntercessorError('CLOSED'));
      stops = [this.on(event, resolve), this.on('close', closed)];
      if (!this._send(RELAY, type, message)) closed();
    }).finally(() => stops.forEach((stop) => stop()));
  }

  refreshIce() {
    return this._ask('ICE_REFRESH', {}, 'iceservers').then(() => this.iceServers);
  }

  leave() {
    if (this.state === 'closed') return;
    this.#ws?.close(1000);
    this.#end(1000, null);
  }

  // One RTCPeerConnection to `peer`, negotiated over the relay ("perfect negotiation").
  _pc(peer, polite, options = {}) {
    const { iceServers = this.iceServers, RTCPeerConnection: PC = RTCPeerConnection } = options;
    const pc = new PC({ iceServers });
    let makingOffer = false, ignoreOffer = false, settingAnswer = false;
    let queue = Promise.resolve();
    const fail = (error) => this.#emit('error', new IntercessorError('WEBRTC', error.message, { peer }));
    const describe = async () => {
      await pc.setLocalDescription();
      const { type, sdp } = pc.localDescription;
      this._send(peer, type.toUpperCase(), { type, sdp });
    };
    pc.addEventListener('negotiationneeded', async () => {
      makingOffer = true;
      await describe().catch(fail);
      makingOffer = false;
    });
    pc.addEventListener('icecandidate', ({ candidate }) => {
      // A null candidate marks the end of gathering: nothing to send.
      if (candidate?.candidate) this._send(peer, 'CANDIDATE', candidate.toJSON());
    });
    // Each message waits for the one before, so descriptions and candidates apply in order.
    const take = async (type, message) => {
      if (type === 'CANDIDATE') {
        // Candidates of an offer we ignored are expected to fail.
        return pc.addIceCandidate(message).catch((error) => !ignoreOffer && Promise.reject(error));
      }
      // Colliding offers: the impolite side (host) ignores the other's, the polite one yields.
      const offer = type === 'OFFER';
      const ready = !makingOffer && (pc.signalingState === 'stable' || settingAnswer);
      ignoreOffer = !polite && offer && !ready;
      if (ignoreOffer) return;
      settingAnswer = !offer;
      try {
        await pc.setRemoteDescription({ type: offer ? 'offer' : 'answer', sdp: message.sdp });
      } finally {
        settingAnswer = false;
      }
      if (offer) await describe();
    };
    const stop = this.on('message', ({ from, type, message }) => {
      if (pc.signalingState === 'closed') return stop();
      if (from !== peer || !message || !/^(OFFER|ANSWER|CANDIDATE)$/.test(type)) return;
      queue = queue.then(() => take(type, message)).catch(fail);
    });
    return pc;
  }
}

/** The host's side: a room with a join code that guests join. */
export class Room extends Signal {
  get code() {
    return this.id;
  }

  send(to, type, message) {
    return this._send(to, type, message);
  }

  peerConnection(id, options) {
    return this._pc(id, false, options);
  }

  kick(id, reason) {
    return this._send(RELAY, 'KICK', { id, reason });
  }

  setRoom({ locked, knock } = {}) {
    return this._ask('ROOM', { locked, knock }, 'room');
  }

  admit(id) {
    return this._send(RELAY, 'ADMIT', { id });
  }

  deny(id, reason) {
    return this._send(RELAY, 'DENY', { id, reason });
  }
}

/** A guest's side: joined to one host by its code. */
export class Link extends Signal {
  constructor(url, code, options) {
    super(url, options);
    this.code = code;
  }

  send(type, message) {
    return this._send(this.code, type, message);
  }

  peerConnection(options) {
    return this._pc(this.code, true, options);
  }
}

// `base` is the relay (ws:, wss:, http:, https:, or relative to the page); empty values of `query`
// are left out.
function endpoint(base, path, query) {
  const url = new URL(base, globalThis.location?.href);
  url.protocol = url.protocol.replace(/^http/, 'ws');
  url.pathname = url.pathname.replace(/\/?$/, '/') + path;
  url.search = new URLSearchParams(Object.entries(query).filter(([, value]) => value));
  url.hash = '';
  return url.href;
}

export function host(url, options = {}) {
  const { passphrase, locked, knock } = options;
  return new Room(endpoint(url, 'server', { passphrase, locked: locked && 1, knock: knock && 1 }), options)._open();
}

export function join(url, code, options = {}) {
  const canonical = normalizeCode(code);
  if (!CODE.test(canonical)) return Promise.reject(new IntercessorError('BAD_CODE', `"${code}" is not a join code`));
  return new Link(endpoint(url, `client/${canonical}`, { name: options.name }), canonical, options)._open();
}

export const Intercessor = { host, join, normalizeCode };
