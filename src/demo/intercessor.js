// Intercessor's client library: signaling through the relay, reconnects included, for browsers and
// Node 20+ (give it `ws` where there is no global WebSocket). Typed in intercessor.d.ts.

const RELAY = '0';
const CODE = /^[0-9A-HJKMNP-TV-Z]{4,16}$/;
const HELLO_TIMEOUT_MS = 15000;
const QUEUE_LIMIT = 256;
// Retries start quickly (a blip) and back off; jitter keeps a room's peers from retrying in step.
const RETRY_FIRST_MS = 100;
const RETRY_MAX_MS = 5000;
const REASONS = {
  1000: 'left', 1001: 'relay-shutdown', 1006: 'connection-lost', 1008: 'too-slow',
  1009: 'too-big', 1013: 'unavailable', 4401: 'unauthorized', 4404: 'unknown-code',
  4408: 'idle-timeout', 4409: 'room-full', 4410: 'host-left', 4412: 'superseded',
  4429: 'rate-limited',
};
const PEER_EVENTS = { PEER_JOINED: 'peerjoined', PEER_GONE: 'peergone', PEER_AWAY: 'peeraway', PEER_BACK: 'peerback' };
// The relay ended this peer on purpose: resuming could only fail.
const FINAL = new Set([1000, 1002, 1003, 1007, 1008, 1009, 4401, 4404, 4409, 4410, 4412, 4429]);

/** A code as the relay reads it: any case, `-` and spaces ignored, O as 0, I and L as 1. */
export function normalizeCode(typed) {
  return String(typed).toUpperCase().replace(/[\s-]+/g, '').replace(/O/g, '0').replace(/[IL]/g, '1');
}

/** A relay ERROR (`code` is the relay's), or a local one (`TIMEOUT`, `QUEUE_OVERFLOW`, …). */
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
  #ws = null; #live = false; #timer = 0; #timedOut = false;
  #token = null; #windowMs = 0; #received = 0; #deadline = 0; #attempt = 0; #lost = 0;
  #queue = []; #lastError = null;

  constructor(url, options) {
    this.#url = url;
    this.#options = options;
    this.state = 'connecting';
  }

  /** Calls `listener(detail)` on each `type` event; returns a function that stops it. */
  on(type, listener) {
    const set = this.#listeners.get(type) ?? new Set();
    this.#listeners.set(type, set.add(listener));
    return () => set.delete(listener);
  }

  #emit(type, detail) {
    for (const listener of [...(this.#listeners.get(type) ?? [])]) listener(detail);
  }

  /** Whether resume is on: the relay gave a token in HELLO. */
  get resumable() {
    return this.#token !== null;
  }

  _open() {
    return new Promise((resolve, reject) => {
      this.#settle = (error) => (error ? reject(error) : resolve(this));
      this.#connect(null);
    });
  }

  #connect(query) {
    const WebSocket = this.#options.WebSocket ?? globalThis.WebSocket;
    // A resume needs no passphrase: the token is the stronger secret, so it goes alone.
    const url = query ? `${this.#url.split('?')[0]}?${query}` : this.#url;
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (error) {
      this.#end(0, new IntercessorError('CONNECT_FAILED', error.message));
      return;
    }
    this.#ws = ws;
    this.#live = false;
    this.#timedOut = false;
    this.#timer = setTimeout(() => {
      this.#timedOut = true;
      ws.close();
    }, this.#options.helloTimeoutMs ?? HELLO_TIMEOUT_MS);
    ws.onmessage = ({ data }) => ws === this.#ws && this.#frame(data);
    ws.onclose = ({ code, reason }) => ws === this.#ws && this.#closed(code, reason);
    // An error is always followed by a close, which says what happened.
    ws.onerror = () => {};
  }

  #frame(data) {
    // What a resume reports as received: every frame after this socket's HELLO.
    if (this.#live) this.#received += 1;
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (!frame || typeof frame.type !== 'string') return;
    const { from, type } = frame;
    const message = frame.message ?? null;
    if (from === RELAY && type === 'HELLO') return this.#hello(message ?? {});
    // A close's error is the ERROR right before it, if any.
    this.#lastError = null;
    if (from !== RELAY) this.#emit('message', { from, type, message });
    else if (type === 'ERROR') this.#error(message ?? {});
    else if (PEER_EVENTS[type]) this.#emit(PEER_EVENTS[type], { id: message?.id });
  }

  #hello(message) {
    clearTimeout(this.#timer);
    this.#live = true;
    this.#received = 0;
    this.#token = typeof message.resumeToken === 'string' ? message.resumeToken : null;
    this.#windowMs = Number(message.resumeWindowMs) || 0;
    if (this.state === 'reconnecting') {
      this.state = 'open';
      this.#attempt = 0;
      for (const frame of this.#queue.splice(0)) this.#ws.send(frame);
      const replayed = message.replayed ?? 0;
      if (message.gap) this.#emit('gap', { replayed });
      return this.#emit('reconnected', { replayed, gap: Boolean(message.gap) });
    }
    this.id = message.id;
    this.iceServers = Array.isArray(message.iceServers) ? message.iceServers : [];
    this.serverInfo = message.serverInfo ?? null;
    this.state = 'open';
    this.#settle(null);
  }

  #error({ code, reason, ...rest }) {
    const error = new IntercessorError(code, reason, rest);
    this.#lastError = error;
    if (code === 'RESUME_FAILED') {
      this.#ws.close(1000);
      this.#end(this.#lost, error, reason, 'resume-failed');
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
      const local = this.#timedOut ? 'TIMEOUT' : code === 1006 && 'UNREACHABLE';
      return this.#end(code, this.#lastError ?? (local ? new IntercessorError(local) : null), text);
    }
    if (!this.#token || FINAL.has(code)) return this.#end(code, this.#lastError, text);
    if (wasLive) {
      this.#lost = code;
      this.#deadline = Date.now() + this.#windowMs;
      this.state = 'reconnecting';
      this.#emit('reconnecting', { code });
    }
    const left = this.#deadline - Date.now();
    if (left <= 0) return this.#end(this.#lost, this.#lastError);
    const backoff = Math.min(RETRY_MAX_MS, RETRY_FIRST_MS * 2 ** this.#attempt++);
    const delay = Math.min(left, backoff * (0.5 + Math.random() / 2));
    const query = `resume=${encodeURIComponent(this.#token)}&received=${this.#received}`;
    this.#timer = setTimeout(() => this.#connect(query), delay);
  }

  #end(code, error, text = '', reason = REASONS[code] ?? 'closed') {
    clearTimeout(this.#timer);
    const wasOpen = this.state !== 'connecting';
    this.state = 'closed';
    this.#queue = [];
    if (wasOpen) return this.#emit('close', { code, reason, text, error });
    const failure = error ?? new IntercessorError('CLOSED', `closed with ${code}`);
    failure.close = { code, reason };
    this.#settle(failure);
  }

  /** Sends now, or queues while resuming; false when it can do neither. */
  _send(to, type, message) {
    const frame = JSON.stringify({ to, type, message });
    if (this.state === 'open' && this.#ws.readyState === 1) {
      this.#ws.send(frame);
      return true;
    }
    // With resume, a socket closing under an open room is as good as reconnecting.
    if (this.state === 'closed' || this.state === 'connecting' || !this.#token) return false;
    if (this.#queue.length >= (this.#options.queueLimit ?? QUEUE_LIMIT)) {
      this.#emit('error', new IntercessorError('QUEUE_OVERFLOW'));
      return false;
    }
    this.#queue.push(frame);
    return true;
  }

  /** Leaves for good (close 1000: the relay resumes nothing after it). */
  leave() {
    if (this.state === 'closed') return;
    this.#ws?.close(1000);
    this.#end(1000, null);
  }

  /** One RTCPeerConnection to `peer`, negotiated over the relay ("perfect negotiation"). */
  _peerConnection(peer, polite, options = {}) {
    const PeerConnection = options.RTCPeerConnection ?? globalThis.RTCPeerConnection;
    const pc = new PeerConnection({ iceServers: options.iceServers ?? this.iceServers });
    let makingOffer = false;
    let ignoreOffer = false;
    let settingAnswer = false;
    let queue = Promise.resolve();
    const fail = (error) => this.#emit('error', new IntercessorError('WEBRTC', error.message, { peer }));
    const describe = () => {
      const { type, sdp } = pc.localDescription;
      this._send(peer, type.toUpperCase(), { type, sdp });
    };
    pc.addEventListener('negotiationneeded', async () => {
      try {
        makingOffer = true;
        await pc.setLocalDescription();
        describe();
      } catch (error) {
        fail(error);
      } finally {
        makingOffer = false;
      }
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
      if (offer) {
        await pc.setLocalDescription();
        describe();
      }
    };
    const stop = this.on('message', ({ from, type, message }) => {
      if (pc.signalingState === 'closed') return stop();
      if (from !== peer || !message || !['OFFER', 'ANSWER', 'CANDIDATE'].includes(type)) return;
      queue = queue.then(() => take(type, message)).catch(fail);
    });
    return pc;
  }
}

/** The host's side: a room with a join code that guests join. */
export class Room extends Signal {
  /** The join code: the host's id. */
  get code() {
    return this.id;
  }

  send(to, type, message) {
    return this._send(to, type, message);
  }

  peerConnection(peerId, options) {
    return this._peerConnection(peerId, false, options);
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
    return this._peerConnection(this.code, true, options);
  }
}

// `base` is the relay's address (ws:, wss:, http: or https:; relative to the page in a browser).
function endpoint(base, path, query = '') {
  const url = new URL(base, globalThis.location?.href);
  url.protocol = url.protocol.replace(/^http/, 'ws');
  url.pathname = url.pathname.replace(/\/?$/, '/') + path;
  url.search = query;
  url.hash = '';
  return url.href;
}

/** Opens a room at the relay; resolves once it has its code. */
export function host(url, options = {}) {
  const { passphrase } = options;
  const query = passphrase ? `passphrase=${encodeURIComponent(passphrase)}` : '';
  return new Room(endpoint(url, 'server', query), options)._open();
}

/** Joins the room with `code`, spelled however a person typed it. */
export function join(url, code, options = {}) {
  const canonical = normalizeCode(code);
  if (!CODE.test(canonical)) {
    return Promise.reject(new IntercessorError('BAD_CODE', `"${code}" is not a join code`));
  }
  return new Link(endpoint(url, `client/${canonical}`), canonical, options)._open();
}

export const Intercessor = { host, join, normalizeCode };
