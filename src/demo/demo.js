// The Intercessor demo: host a room or join one with a code, then chat and call peer-to-peer.
//
// Signaling goes through the relay with the client library (intercessor.js: a room for the host,
// a link for a guest), which also negotiates each RTCPeerConnection ("perfect negotiation", the
// guest being the polite peer); everything else goes over WebRTC. The host keeps one connection
// per guest and opens the "chat" data channel. The host is the hub of the room: over the data
// channels (JSON {kind: 'chat' | 'members' | 'hello'}) it passes each guest's chat on to the others
// and tells everyone who is in the room. Signaling messages keep to the exact shapes an operator's
// JSON Schema may enforce: OFFER/ANSWER {type, sdp}, CANDIDATE RTCIceCandidate.toJSON(), BYE {}.
// The host also decides who is in: it can remove a guest, lock the room, or make guests ask to
// join (knock) and let each in or not; the library sends those commands to the relay.

import { Intercessor } from './intercessor.js';
import { qrSvg } from './qr.js';

// How long a direct connection may take before the page says that none was found.
const CONNECT_TIMEOUT_MS = 15000;
// A join code in the relay's spelling: Crockford's base32 (no I, L, O or U), 4 to 16 characters.
const CODE_PATTERN = /^[0-9A-HJKMNP-TV-Z]{4,16}$/;
const ERROR_SHOWN_MS = 8000;
const COPIED_SHOWN_MS = 2000;
// TURN credentials expire (the relay's --turn-ttl); fresh ones are fetched once this share of
// their remaining life has passed, but never sooner than ICE_REFRESH_MIN_MS.
const ICE_REFRESH_AT = 0.8;
const ICE_REFRESH_MIN_MS = 5000;
// setTimeout's longest delay (about 24.8 days).
const MAX_TIMER_MS = 2 ** 31 - 1;

const $ = (id) => document.getElementById(id);
const ui = {
  status: $('status'),
  start: $('start'),
  hostForm: $('host-form'),
  hostButton: $('host-button'),
  passphraseRow: $('passphrase-row'),
  passphrase: $('passphrase'),
  joinForm: $('join-form'),
  joinCode: $('join-code'),
  joinName: $('join-name'),
  joinButton: $('join-button'),
  session: $('session'),
  share: $('share'),
  code: $('code'),
  codeNote: $('code-note'),
  members: $('members'),
  lockRoom: $('lock-room'),
  askToJoin: $('ask-to-join'),
  knockers: $('knockers'),
  guests: $('guests'),
  qr: $('qr'),
  shareLink: $('share-link'),
  copyLink: $('copy-link'),
  shareNative: $('share-native'),
  localHint: $('local-hint'),
  localHost: $('local-host'),
  serverInfo: $('server-info'),
  roomTitle: $('room-title'),
  peerCount: $('peer-count'),
  chatLog: $('chat-log'),
  chatForm: $('chat-form'),
  chatInput: $('chat-input'),
  chatSend: $('chat-send'),
  videos: $('videos'),
  selfTile: $('self-tile'),
  selfVideo: $('self-video'),
  call: $('call'),
  leave: $('leave'),
};

// ---------------------------------------------------------------------------------------------
// Small helpers

/** `7KQ2MX` → `7KQ-2MX`: groups of three (or four) are easier to read aloud. */
function groupCode(code) {
  if (code.length <= 5) return code;
  const group = code.length % 3 !== 0 && code.length % 4 === 0 ? 4 : 3;
  return code.match(new RegExp(`.{1,${group}}`, 'g')).join('-');
}

function plural(count, word) {
  return `${count} ${word}${count === 1 ? '' : 's'}`;
}

let statusTimer = 0;

/** Shows `text` in the status line; tone is info, ok, warn or error. */
function setStatus(text, tone = 'info') {
  clearTimeout(statusTimer);
  ui.status.textContent = text;
  ui.status.dataset.tone = tone;
}

/** Shows a passing problem, then goes back to what `restore` says after a while. */
function flashProblem(text, restore) {
  setStatus(text, 'error');
  statusTimer = setTimeout(restore, ERROR_SHOWN_MS);
}

function addChatLine(who, text, kind) {
  const item = document.createElement('li');
  item.className = `line ${kind}`;
  if (who) {
    const name = document.createElement('span');
    name.className = 'who';
    name.textContent = who;
    item.append(name);
  }
  const body = document.createElement('span');
  body.className = 'text';
  body.textContent = text;
  item.append(body);
  ui.chatLog.append(item);
  ui.chatLog.scrollTop = ui.chatLog.scrollHeight;
}

function addNote(text) {
  addChatLine('', text, 'note');
}

/** What the relay's ERROR codes mean, in plain words. */
function describeRelayError(session, code, reason, kind) {
  const room = session.code ? groupCode(session.code) : '';
  const detail = reason ? ` (${reason})` : '';
  switch (code) {
    case 'UNAUTHORIZED':
      return session.usedPassphrase
        ? 'The relay did not accept that passphrase. Check it and press Start hosting again.'
        : 'This relay needs a passphrase to host a room. Type it in and press Start hosting again.';
    case 'UNKNOWN_SERVER':
      return `There is no host with code ${room}. Check the code and try again.`;
    case 'SERVER_FULL':
      return session.role === 'host'
        ? 'Your room is full, so that guest is still waiting: let them in once someone leaves.'
        : `The room with code ${room} is full. Ask the host, or try again later.`;
    case 'BAD_MESSAGE':
      return `The relay could not read a message from this page${detail}.`;
    case 'UNKNOWN_PEER':
      return session.role === 'host'
        ? 'A message was not delivered: that guest has already left.'
        : 'A message was not delivered: the host is no longer there.';
    case 'RATE_LIMITED':
      return session.ready
        ? 'Too many messages too fast: the relay dropped one. Slow down a little.'
        : 'The relay is turning this address away for now (too many attempts or connections). Wait a minute and try again.';
    case 'INVALID_MESSAGE':
      return `The relay refused a ${kind || 'signaling'} message that breaks its rules${detail}.`;
    case 'ROOM_LOCKED':
      return 'This room is locked. Ask the host to unlock it, then try again.';
    case 'KICKED':
      return 'The host removed you.';
    case 'DENIED':
      return 'The host did not let you in.';
    case 'KNOCK_TIMEOUT':
      return 'The host did not let you in: nobody answered in time.';
    case 'NOT_ADMITTED':
      return 'The host has not let you in yet.';
    default:
      return `The relay reported a problem: ${code || 'unknown'}${detail}.`;
  }
}

/** Why the relay closed the WebSocket, in plain words (for closes with no ERROR before them). */
function describeClose(session, { code, text, reason: why }) {
  const reason = text ? ` (${text})` : '';
  if (why === 'kicked') return 'The host removed you.';
  if (why === 'denied') return 'The host did not let you in.';
  if (why === 'knock-timeout') return 'The host did not let you in: nobody answered in time.';
  switch (code) {
    case 4423:
      return 'This room is locked.';
    case 4410:
      return 'Session over: the host left.';
    case 4401:
      return 'This relay needs a passphrase to host a room.';
    case 4404:
      return `There is no host with code ${groupCode(session.code || '')}.`;
    case 4409:
      return 'That room is full.';
    case 4429:
      return 'The relay is turning this address away for now (too many attempts or connections). Wait a minute and try again.';
    case 1001:
      return 'The relay is shutting down.';
    case 4408:
      return 'The relay closed the connection after a long silence.';
    case 1008:
      return `The relay closed the connection${reason || ': too many messages'}.`;
    case 1009:
      return 'The relay closed the connection: a message was too large.';
    case 1006:
      return session.ready
        ? 'Lost the connection to the relay.'
        : `Can’t reach the relay at ${session.relayHost}. Check that it is running and that you are online, then try again.`;
    default:
      return `The relay closed the connection (code ${code})${reason}.`;
  }
}

function describeMediaError(error) {
  switch (error && error.name) {
    case 'NotAllowedError':
      return 'permission was denied. Allow camera access in the browser and try again.';
    case 'NotFoundError':
    case 'OverconstrainedError':
      return 'no camera was found.';
    case 'NotReadableError':
      return 'the camera is busy in another app.';
    default:
      return error && error.message ? error.message : 'unknown error.';
  }
}

// ---------------------------------------------------------------------------------------------
// Local camera and microphone

let localStream = null;

function stopLocalMedia() {
  if (localStream) for (const track of localStream.getTracks()) track.stop();
  localStream = null;
  ui.selfVideo.srcObject = null;
  ui.selfTile.hidden = true;
  ui.call.textContent = 'Start camera';
  ui.call.classList.remove('active');
}

async function getCameraStream() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new Error('this page needs https:// (or localhost) to use the camera.');
  }
  try {
    return await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
  } catch (withAudio) {
    // No microphone, or it was refused: video alone is still a call.
    const stream = await navigator.mediaDevices.getUserMedia({ video: true });
    addNote('Microphone unavailable: sharing video only.');
    return stream;
  }
}

async function toggleCall() {
  const current = session;
  if (!current || current.over) return;
  if (localStream) {
    for (const peer of current.peers.values()) peer.removeLocalMedia();
    stopLocalMedia();
    return;
  }
  ui.call.disabled = true;
  let stream = null;
  try {
    stream = await getCameraStream();
  } catch (error) {
    flashProblem(`Couldn’t start the camera: ${describeMediaError(error)}`, () => current.showStatus());
  } finally {
    ui.call.disabled = current.over;
  }
  if (!stream) return;
  if (session !== current || current.over) {
    for (const track of stream.getTracks()) track.stop();
    return;
  }
  localStream = stream;
  ui.selfVideo.srcObject = stream;
  ui.selfTile.hidden = false;
  ui.call.textContent = 'Stop camera';
  ui.call.classList.add('active');
  for (const peer of current.peers.values()) peer.addLocalMedia(stream);
}

// ---------------------------------------------------------------------------------------------
// One WebRTC connection to one remote peer

class Peer {
  /** `pc` comes from the library, which negotiates it over the relay. */
  constructor(session, id, pc, label) {
    this.session = session;
    this.id = id;
    this.label = label;
    this.closed = false;
    this.channel = null;
    this.channelOpen = false;
    this.senders = [];
    this.remoteStream = null;
    this.tile = null;
    this.pc = pc;
    pc.ondatachannel = ({ channel }) => {
      if (channel.label === 'chat') this.attachChannel(channel);
    };
    pc.ontrack = (event) => this.showRemoteTrack(event);
    pc.onconnectionstatechange = () => {
      if (!this.closed && pc.connectionState === 'failed') this.session.peerFailed(this);
    };
    // 'failed' never comes when no candidate pair is ever tried (no usable candidates at all).
    this.stuckTimer = setTimeout(() => {
      if (!this.closed && !this.channelOpen) this.session.peerStuck(this);
    }, CONNECT_TIMEOUT_MS);
    if (localStream) this.addLocalMedia(localStream);
  }

  openChannel() {
    this.attachChannel(this.pc.createDataChannel('chat'));
  }

  attachChannel(channel) {
    this.channel = channel;
    channel.onopen = () => {
      this.channelOpen = true;
      clearTimeout(this.stuckTimer);
      this.session.channelOpened(this);
    };
    channel.onclose = () => {
      const wasOpen = this.channelOpen;
      this.channelOpen = false;
      if (!this.closed && wasOpen) this.session.channelClosed(this);
    };
    channel.onmessage = ({ data }) => {
      if (typeof data !== 'string') return;
      let message;
      try {
        message = JSON.parse(data);
      } catch {
        return;
      }
      if (message && typeof message === 'object') this.session.onRoomMessage(this, message);
    };
  }

  /** Sends one room message ({kind: 'chat' | 'members' | 'hello', …}) over the data channel. */
  sendRoom(message) {
    if (this.channelOpen) this.channel.send(JSON.stringify(message));
  }

  problem(error) {
    if (this.closed) return;
    console.warn(`WebRTC problem with ${this.label}:`, error);
    this.session.peerProblem(this, error);
  }

  addLocalMedia(stream) {
    for (const track of stream.getTracks()) this.senders.push(this.pc.addTrack(track, stream));
  }

  /** Fresh TURN credentials, for whatever ICE gathers from now on (a restart, a new path). */
  useIceServers(iceServers) {
    if (this.closed) return;
    try {
      this.pc.setConfiguration({ iceServers });
    } catch (error) {
      console.warn(`Could not update the ICE servers for ${this.label}:`, error);
    }
  }

  removeLocalMedia() {
    if (this.closed) return;
    for (const sender of this.senders) this.pc.removeTrack(sender);
    this.senders = [];
  }

  showRemoteTrack({ track, streams }) {
    if (this.closed) return;
    if (streams[0]) {
      this.remoteStream = streams[0];
    } else {
      this.remoteStream ??= new MediaStream();
      this.remoteStream.addTrack(track);
    }
    const stream = this.remoteStream;
    stream.onremovetrack = () => {
      if (stream.getTracks().length === 0) this.removeTile();
    };
    this.ensureTile().video.srcObject = stream;
    this.tile.video.play().catch(() => {});
  }

  ensureTile() {
    if (this.tile) return this.tile;
    const figure = document.createElement('figure');
    figure.className = 'tile remote';
    const video = document.createElement('video');
    video.dataset.testid = 'remote-video';
    video.autoplay = true;
    video.playsInline = true;
    // Muted so that autoplay is never blocked; the button below turns the sound on.
    video.muted = true;
    video.setAttribute('autoplay', '');
    video.setAttribute('playsinline', '');
    video.setAttribute('muted', '');
    const caption = document.createElement('figcaption');
    caption.textContent = this.label;
    const sound = document.createElement('button');
    sound.type = 'button';
    sound.className = 'sound';
    sound.textContent = 'Unmute';
    sound.setAttribute('aria-label', `Unmute ${this.label}`);
    sound.addEventListener('click', () => {
      video.muted = !video.muted;
      sound.textContent = video.muted ? 'Unmute' : 'Mute';
      sound.setAttribute('aria-label', `${video.muted ? 'Unmute' : 'Mute'} ${this.label}`);
      video.play().catch(() => {});
    });
    figure.append(video, caption, sound);
    ui.videos.append(figure);
    this.tile = { figure, video };
    return this.tile;
  }

  removeTile() {
    if (!this.tile) return;
    this.tile.video.srcObject = null;
    this.tile.figure.remove();
    this.tile = null;
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.stuckTimer);
    this.channelOpen = false;
    if (this.channel) this.channel.close();
    this.pc.close();
    this.removeTile();
  }
}

// ---------------------------------------------------------------------------------------------
// A session: one WebSocket to the relay, as host or guest, and its peers

let session = null;

class Session {
  constructor(role) {
    this.role = role; // 'host' or 'guest'
    this.code = null; // the host's join code (canonical)
    this.signal = null; // the library's room (host) or link (guest), once HELLO came
    this.relayHost = location.host;
    this.ready = false; // HELLO arrived
    this.over = false;
    this.relayLost = false;
    this.reconnecting = false; // the library is resuming a dropped relay connection
    this.usedPassphrase = false;
    this.needsPassphrase = false;
    this.iceServers = [];
    this.peers = new Map();
    this.members = null; // who the host last said is in the room
    this.stuckText = null; // set once a direct connection took too long
    this.hostPeer = null;
    this.guestsSoFar = 0;
    this.waiting = false; // a guest knocking, not let in yet
    this.name = ''; // the name a guest gave
    this.knockers = new Map(); // the host's: id → name of each guest asking to join
    this.admitting = new Set(); // the host's: knockers it let in, until they join (or the room is full)
    this.names = new Map(); // the host's: id → name of each guest it let in
    this.iceTimer = 0;
  }

  /** Opens the room or link: `opening` is Intercessor.host(…) or Intercessor.join(…). */
  async connect(opening) {
    this.relayHost = new URL('.', location.href).host;
    let signal;
    try {
      signal = await opening;
    } catch (error) {
      this.refused(error);
      return;
    }
    if (this.over) {
      signal.leave();
      return;
    }
    this.signal = signal;
    signal.on('peerjoined', ({ id }) => this.role === 'host' && this.addGuest(id));
    signal.on('peergone', ({ id, reason }) => {
      if (this.role === 'host') this.guestGone(id, reason === 'kicked' ? 'was removed' : 'left');
      else this.end('Session over: the host left.', 'warn');
    });
    signal.on('knock', ({ id, info }) => this.role === 'host' && this.addKnocker(id, info));
    signal.on('knockgone', ({ id, reason }) => this.knockerGone(id, reason));
    signal.on('room', (state) => showRoomState(state));
    signal.on('admitted', () => this.onAdmitted());
    signal.on('message', ({ from, type }) => {
      const peer = this.peers.get(from);
      if (type === 'BYE' && peer) this.peerSaidBye(peer);
    });
    signal.on('error', (error) => this.onRelayError(error));
    signal.on('reconnecting', () => this.onReconnecting(true));
    signal.on('reconnected', () => this.onReconnecting(false));
    signal.on('gap', () => this.onGap());
    signal.on('close', (close) => this.onClose(close));
    this.onHello(signal);
  }

  send(to, type, message) {
    if (!this.signal) return;
    if (this.role === 'host') this.signal.send(to, type, message);
    else this.signal.send(type, message);
  }

  onHello(signal) {
    this.ready = true;
    this.iceServers = signal.iceServers;
    if (typeof signal.serverInfo === 'string' && signal.serverInfo.trim()) {
      ui.serverInfo.textContent = ` (${signal.serverInfo.trim()})`;
      ui.serverInfo.hidden = false;
    }
    if (this.role === 'host') {
      this.code = signal.code;
      showHostSession(this);
    } else {
      showGuestSession(this);
      this.waiting = signal.waiting;
      if (this.waiting) addNote('The host of this room lets each guest in. Please wait a moment.');
      else this.connectToHost();
    }
    this.scheduleIceRefresh();
    this.showStatus();
  }

  connectToHost() {
    this.hostPeer = new Peer(this, this.signal.code, this.signal.peerConnection(), 'Host');
    this.peers.set(this.signal.code, this.hostPeer);
  }

  /** The host let this knocking guest in. */
  onAdmitted() {
    if (this.over || !this.waiting) return;
    this.waiting = false;
    addNote('The host let you in.');
    this.connectToHost();
    this.showStatus();
  }

  /** Fetches fresh TURN credentials before those in hand expire (none to fetch without TURN). */
  scheduleIceRefresh() {
    clearTimeout(this.iceTimer);
    // The TURN REST username is `<unix expiry>:<peer id>`.
    const turn = this.iceServers.find(({ username }) => /^\d+:/.test(username ?? ''));
    if (!turn || this.over) return;
    const left = Number(turn.username.split(':')[0]) * 1000 - Date.now();
    const delay = Math.min(MAX_TIMER_MS, Math.max(ICE_REFRESH_MIN_MS, left * ICE_REFRESH_AT));
    this.iceTimer = setTimeout(() => this.refreshIce(), delay);
  }

  async refreshIce() {
    if (this.over || !this.signal) return;
    try {
      this.iceServers = await this.signal.refreshIce();
    } catch {
      return; // the relay connection ended: there is nothing left to refresh for
    }
    for (const peer of this.peers.values()) peer.useIceServers(this.iceServers);
    this.scheduleIceRefresh();
  }

  /** A label nobody in the room has yet: `name`, or `name (2)`, … */
  uniqueLabel(name) {
    const taken = new Set(['Host', ...this.knockers.values()]);
    for (const peer of this.peers.values()) taken.add(peer.label);
    let label = name;
    for (let n = 2; taken.has(label); n += 1) label = `${name} (${n})`;
    return label;
  }

  /** A guest asks to join (the room knocks): show its name with Admit and Deny. */
  addKnocker(id, info) {
    const name = this.uniqueLabel(typeof info === 'string' && info.trim() ? info.trim() : 'Someone');
    this.knockers.set(id, name);
    addNote(`${name} is asking to join.`);
    showKnockers(this);
    this.showStatus();
  }

  /** The host's answer to a knock: let the guest in, or not. */
  answerKnock(id, admit) {
    const name = this.knockers.get(id);
    if (this.over || name === undefined || this.admitting.has(id)) return;
    if (admit) {
      // Listed until PEER_JOINED: a full room keeps the guest waiting (SERVER_FULL).
      this.admitting.add(id);
      this.names.set(id, name);
      this.signal.admit(id);
      addNote(`You let ${name} in.`);
    } else {
      this.knockers.delete(id);
      this.signal.deny(id);
      addNote(`You did not let ${name} in.`);
    }
    showKnockers(this);
    this.showStatus();
  }

  knockerGone(id, reason) {
    const name = this.knockers.get(id);
    if (name === undefined) return;
    this.knockers.delete(id);
    this.admitting.delete(id);
    if (reason === 'timeout') addNote(`${name} stopped waiting: nobody answered in time.`);
    else if (reason !== 'denied') addNote(`${name} stopped waiting.`);
    showKnockers(this);
    this.showStatus();
  }

  /** The host removes a guest: the relay closes its link (KICK); its connection here closes too. */
  removeGuest(peer) {
    if (this.over || !this.peers.has(peer.id)) return;
    this.signal.kick(peer.id);
    this.guestGone(peer.id, 'was removed');
  }

  /** The host changes who may join; the switches follow the relay's answer. */
  async changeRoom(settings) {
    if (this.over || !this.signal) return;
    ui.lockRoom.disabled = ui.askToJoin.disabled = true;
    try {
      showRoomState(await this.signal.setRoom(settings));
    } catch {
      // The relay connection ended (its close says so): the switch goes back.
      if (settings.locked !== undefined) ui.lockRoom.checked = !settings.locked;
      if (settings.knock !== undefined) ui.askToJoin.checked = !settings.knock;
    } finally {
      ui.lockRoom.disabled = ui.askToJoin.disabled = this.over || this.relayLost;
    }
  }

  /** The relay refused the room or link, or could not be reached: say why, back at the start. */
  refused(error) {
    const close = error.close ?? { code: 0, reason: 'closed' };
    let text;
    if (error.code === 'TIMEOUT') text = 'The relay did not answer in time. Check your connection and try again.';
    else if (error.code === 'CONNECT_FAILED') text = `Can’t open a connection to the relay: ${error.message}`;
    else if (['UNREACHABLE', 'CLOSED'].includes(error.code)) text = describeClose(this, close);
    else text = describeRelayError(this, error.code, error.message, error.detail.type);
    if (error.code === 'UNAUTHORIZED') {
      revealPassphrase();
      this.needsPassphrase = true;
    }
    this.end(text);
  }

  onRelayError(error) {
    if (error.code === 'WEBRTC') {
      const peer = this.peers.get(error.detail.peer);
      if (peer) peer.problem(error);
      return;
    }
    if (error.code === 'SERVER_FULL' && this.role === 'host') {
      // An ADMIT into a full room: whoever was being let in is still waiting.
      this.admitting.clear();
      showKnockers(this);
    }
    flashProblem(describeRelayError(this, error.code, error.message, error.detail.type), () => this.showStatus());
  }

  /** The library lost the relay connection and is resuming it (`away`), or has resumed it. */
  onReconnecting(away) {
    if (this.over) return;
    this.reconnecting = away;
    if (this.role === 'host') {
      if (away) showCodeReconnecting();
      else showCodeNote();
    }
    this.showStatus();
  }

  /** The relay resumed this page but could not replay all it had for it: some signaling is lost. */
  onGap() {
    if (this.over) return;
    addNote(
      'Some setup messages sent to this page while it was reconnecting were lost. ' +
        (this.role === 'host'
          ? 'If a guest does not appear, or a call does not start, they can leave and join again.'
          : 'If the call does not start, leave and join again.'),
    );
  }

  onClose(close) {
    if (this.over) return;
    this.reconnecting = false;
    const text = describeClose(this, close);
    if (close.code === 4410 || ['kicked', 'denied', 'knock-timeout'].includes(close.reason)) {
      this.end(text, 'warn');
      return;
    }
    // The relay is gone, but direct connections live on without it.
    this.relayLost = true;
    if (this.role === 'host') {
      showCodeExpired();
      ui.lockRoom.disabled = ui.askToJoin.disabled = true;
    }
    if (this.openPeers().length > 0) {
      this.showStatus();
    } else {
      this.end(text);
    }
  }

  addGuest(id) {
    if (this.peers.has(id)) return;
    if (this.knockers.delete(id)) {
      this.admitting.delete(id);
      showKnockers(this);
    }
    this.guestsSoFar += 1;
    const label = this.names.get(id) ?? this.uniqueLabel(`Guest ${this.guestsSoFar}`);
    const peer = new Peer(this, id, this.signal.peerConnection(id), label);
    this.peers.set(id, peer);
    // Creating the channel triggers negotiationneeded, which sends the first OFFER.
    peer.openChannel();
    showGuests(this);
    this.showStatus();
  }

  guestGone(id, how) {
    const peer = this.peers.get(id);
    if (!peer) return;
    const wasOpen = peer.channelOpen;
    peer.close();
    this.peers.delete(id);
    if (wasOpen) addNote(`${peer.label} ${how}.`);
    // Whether its channel closed first or its BYE came first, the others hear it left.
    this.announceMembers();
    if (this.relayLost && this.peers.size === 0) {
      this.end('Lost the connection to the relay, and no guests are left.');
      return;
    }
    this.showStatus();
    updateChatControls(this);
  }

  openPeers() {
    return [...this.peers.values()].filter((peer) => peer.channelOpen);
  }

  channelOpened(peer) {
    if (this.role === 'host') {
      addNote(`${peer.label} joined.`);
      this.announceMembers();
    } else {
      addNote('You’re in. Say hello!');
      peer.sendRoom({ kind: 'hello' });
    }
    this.showStatus();
    updateChatControls(this);
    if (ui.chatInput.disabled === false && document.activeElement === document.body) ui.chatInput.focus();
  }

  channelClosed(peer) {
    if (this.over) return;
    if (this.role === 'host') {
      // The guest's page went away without a BYE; PEER_GONE will follow from the relay.
      this.guestGone(peer.id, 'left');
    } else {
      updateChatControls(this);
      if (this.relayLost) this.end('Session over: the host left.', 'warn');
      else setStatus('The direct connection to the host closed.', 'warn');
    }
  }

  peerSaidBye(peer) {
    if (this.role === 'host') this.guestGone(peer.id, 'left');
    else this.end('Session over: the host left.', 'warn');
  }

  peerFailed(peer) {
    const hint = this.iceServers.length
      ? 'A firewall may be blocking it.'
      : 'A firewall or a different network may be blocking it; this relay offers no TURN server.';
    const text =
      this.role === 'host'
        ? `Could not connect directly to ${peer.label}. ${hint}`
        : `Could not connect directly to the host. ${hint}`;
    if (this.role === 'host') {
      addNote(text);
      flashProblem(text, () => this.showStatus());
    } else {
      setStatus(text, 'error');
    }
  }

  /** No direct connection after CONNECT_TIMEOUT_MS: say why it may be, and who can fix it. */
  peerStuck(peer) {
    if (this.over) return;
    const who = this.role === 'host' ? peer.label : 'the host';
    const seconds = Math.round(CONNECT_TIMEOUT_MS / 1000);
    const text =
      `No direct connection to ${who} after ${seconds} s: your two browsers found no network path ` +
      'to each other. On different networks, or where local addresses are hidden (mDNS) or blocked, ' +
      'a STUN or TURN server is needed: the relay’s operator adds one with --ice-server.';
    this.stuckText = text;
    if (this.role === 'host') addNote(text);
    setStatus(text, 'error');
  }

  /** A message from a peer over the room's data channel. */
  onRoomMessage(peer, message) {
    if (message.kind === 'chat' && typeof message.text === 'string') {
      if (this.role === 'host') {
        addChatLine(peer.label, message.text, 'theirs');
        // The host is the hub of the room: every guest hears every other.
        this.broadcast({ kind: 'chat', from: peer.label, text: message.text }, peer);
      } else {
        const from = typeof message.from === 'string' ? message.from : 'Host';
        addChatLine(from, message.text, 'theirs');
      }
    } else if (message.kind === 'hello' && this.role === 'host') {
      // A guest whose channel is open asks who is in: what was sent at the host's open may have
      // gone out before the guest's side could take it.
      this.announceMembers();
    } else if (message.kind === 'members' && this.role === 'guest' && Array.isArray(message.members)) {
      const members = message.members.filter((name) => typeof name === 'string');
      this.showMembers(members, typeof message.you === 'string' ? message.you : '');
    }
  }

  /** Sends `message` to every guest whose channel is open, except `skip`. */
  broadcast(message, skip = null) {
    for (const peer of this.openPeers()) if (peer !== skip) peer.sendRoom(message);
  }

  /** The host tells every guest who is in the room, and shows it too. */
  announceMembers() {
    const guests = this.openPeers().map((peer) => peer.label);
    const members = ['Host', ...guests];
    for (const peer of this.openPeers()) peer.sendRoom({ kind: 'members', members, you: peer.label });
    this.showMembers(members, 'Host');
    showGuests(this);
  }

  /** Shows the member list; a guest also hears who came and went since the last one. */
  showMembers(members, you) {
    if (this.role === 'guest' && this.members) {
      for (const name of members) if (!this.members.includes(name) && name !== you) addNote(`${name} joined.`);
      for (const name of this.members) if (!members.includes(name)) addNote(`${name} left.`);
    }
    this.members = members;
    ui.members.replaceChildren(
      ...members.map((name) => {
        const item = document.createElement('li');
        item.textContent = name === you ? `${name} (you)` : name;
        return item;
      }),
    );
  }

  peerProblem(peer, error) {
    if (this.over) return;
    flashProblem(`Something went wrong with the connection to ${peer.label}: ${error.message || error}`, () =>
      this.showStatus(),
    );
  }

  /** The status line for where the session is now. */
  showStatus() {
    if (this.over || session !== this) return;
    const [text, tone] = this.where();
    if (this.role === 'host') ui.peerCount.textContent = plural(this.openPeers().length, 'guest');
    else ui.peerCount.textContent = this.hostPeer && this.hostPeer.channelOpen ? 'with the host' : '';
    if (this.reconnecting) {
      // Direct connections do not need the relay, so only what needs it waits.
      const meanwhile = this.openPeers().length > 0 ? ' The chat goes on directly meanwhile.' : '';
      setStatus(`${text} Reconnecting to the relay…${meanwhile}`, 'warn');
    } else {
      setStatus(text, tone);
    }
  }

  /** Where the session is, in words, with the status tone for it. */
  where() {
    const room = groupCode(this.code || '');
    let lost = '';
    if (this.relayLost) {
      lost =
        this.role === 'host'
          ? ' The relay connection dropped, so nobody new can join.'
          : ' The relay connection dropped; the chat goes on directly.';
    }
    if (this.role === 'host') {
      const open = this.openPeers().length;
      const joining = this.peers.size - open;
      const asking = [...this.knockers].filter(([id]) => !this.admitting.has(id)).map(([, name]) => name);
      if (asking.length > 0) {
        const who = asking.length === 1 ? `${asking[0]} is` : `${asking.length} guests are`;
        return [`${who} asking to join: let them in or not, beside the code.`, 'warn'];
      }
      if (open > 0) {
        const more = joining > 0 ? ` (${joining} more joining…)` : '';
        return [`You’re connected with ${plural(open, 'guest')}${more}.${lost}`, 'ok'];
      }
      if (joining > 0) return [`Someone is joining room ${room}…`, 'info'];
      return [`Hosting room ${room}. Share the code; waiting for someone to join…`, 'info'];
    }
    if (this.waiting) return ['Waiting for the host to let you in…', 'info'];
    if (this.hostPeer && this.hostPeer.channelOpen) {
      return [`You’re connected to ${room}.${lost}`, 'ok'];
    }
    if (this.stuckText) return [this.stuckText, 'error'];
    return [`Found host ${room}; setting up a direct connection…`, 'info'];
  }

  /** Ends the session; `text` says why (null when the user left). */
  end(text, tone = 'error') {
    if (this.over) return;
    this.over = true;
    clearTimeout(this.iceTimer);
    for (const peer of this.peers.values()) peer.close();
    this.peers.clear();
    if (this.signal) this.signal.leave();
    if (session !== this) return;
    stopLocalMedia();
    if (this.role === 'host') showCodeExpired();
    if (this.ready && text) {
      addNote(text);
      showEnded();
    } else {
      session = null;
      showStart();
      if (this.needsPassphrase) ui.passphrase.focus();
    }
    if (text) setStatus(text, tone);
  }

  /** The user leaves: say BYE to every peer, then close everything. */
  leave() {
    if (!this.over) {
      for (const peer of this.peers.values()) this.send(peer.id, 'BYE', {});
      this.end(null);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Screens

function setBusy(busy) {
  for (const control of [ui.hostButton, ui.joinButton, ui.joinCode, ui.joinName, ui.passphrase]) {
    control.disabled = busy;
  }
}

function showStart() {
  setBusy(false);
  ui.session.hidden = true;
  ui.start.hidden = false;
  document.body.dataset.screen = 'start';
}

function resetRoom() {
  ui.chatLog.replaceChildren();
  ui.chatInput.value = '';
  for (const tile of ui.videos.querySelectorAll('.tile.remote')) tile.remove();
  ui.call.disabled = false;
  ui.call.hidden = false;
  ui.session.classList.remove('ended');
  ui.leave.textContent = 'Leave';
  ui.leave.classList.replace('primary', 'danger');
  ui.peerCount.textContent = '';
  ui.members.replaceChildren();
  ui.qr.replaceChildren();
  ui.knockers.replaceChildren();
  ui.guests.replaceChildren();
  ui.lockRoom.checked = ui.askToJoin.checked = false;
  ui.lockRoom.disabled = ui.askToJoin.disabled = false;
  updateChatControls(null);
}

/** The room's settings as the relay last said them. */
function showRoomState({ locked, knock }) {
  ui.lockRoom.checked = Boolean(locked);
  ui.askToJoin.checked = Boolean(knock);
}

/** The host's list of guests in the room, each with a Remove button. */
function showGuests(current) {
  ui.guests.replaceChildren(
    ...[...current.peers.values()].map((peer) => {
      const item = document.createElement('li');
      item.dataset.testid = 'guest';
      const who = document.createElement('span');
      who.className = 'who';
      who.textContent = peer.label;
      const remove = document.createElement('button');
      remove.type = 'button';
      remove.className = 'button danger';
      remove.dataset.testid = 'remove';
      remove.textContent = 'Remove';
      remove.setAttribute('aria-label', `Remove ${peer.label}`);
      remove.addEventListener('click', () => current.removeGuest(peer));
      item.append(who, remove);
      return item;
    }),
  );
}

/** The host's list of guests asking to join, each with Admit and Deny. */
function showKnockers(current) {
  ui.knockers.replaceChildren(
    ...[...current.knockers].map(([id, name]) => {
      const item = document.createElement('li');
      item.dataset.testid = 'knocker';
      const who = document.createElement('span');
      who.className = 'who';
      who.textContent = name;
      const button = (text, admit) => {
        const control = document.createElement('button');
        control.type = 'button';
        control.className = admit ? 'button primary' : 'button';
        control.dataset.testid = admit ? 'admit' : 'deny';
        control.textContent = text;
        control.setAttribute('aria-label', `${text} ${name}`);
        control.disabled = current.admitting.has(id);
        control.addEventListener('click', () => current.answerKnock(id, admit));
        return control;
      };
      item.append(who, button('Admit', true), button('Deny', false));
      return item;
    }),
  );
}

function showHostSession(current) {
  resetRoom();
  const link = `${location.origin}${location.pathname}?code=${encodeURIComponent(current.code)}`;
  ui.code.textContent = groupCode(current.code);
  ui.shareLink.value = link;
  ui.qr.replaceChildren(qrSvg(document, link, { label: `QR code of the join link ${link}` }));
  ui.shareNative.hidden = typeof navigator.share !== 'function';
  const loopback = /^(localhost|127(\.\d+){3}|\[::1\])$/.test(location.hostname);
  ui.localHint.hidden = !loopback;
  ui.localHost.textContent = location.hostname;
  ui.share.hidden = false;
  showCodeNote();
  ui.roomTitle.textContent = 'Your room';
  addNote(`Room ${groupCode(current.code)} is open. Guests appear here when they join.`);
  showSessionScreen();
}

/** What the host should know about its code while it works. */
function showCodeNote() {
  ui.share.classList.remove('expired');
  ui.codeNote.textContent =
    'The code lasts while this page stays open: reloading or leaving makes a new one, and links shared before stop working.';
}

/** While the page resumes, the relay keeps the room: a guest who joins now gets in once it is back. */
function showCodeReconnecting() {
  ui.share.classList.remove('expired');
  ui.codeNote.textContent =
    'Reconnecting to the relay… The code still works: whoever joins with it meanwhile is let in once this page is back.';
}

/** The host's code no longer reaches this page: say so where it is shown. */
function showCodeExpired() {
  ui.share.classList.add('expired');
  ui.codeNote.textContent =
    'This code no longer works: the connection to the relay was lost, so nobody new can join. Start a new room for a new code.';
}

function showGuestSession(current) {
  resetRoom();
  ui.share.hidden = true;
  ui.roomTitle.textContent = `Room ${groupCode(current.code)}`;
  showSessionScreen();
}

function showSessionScreen() {
  setBusy(false);
  ui.start.hidden = true;
  ui.session.hidden = false;
  document.body.dataset.screen = 'session';
}

/** The session is over but its chat stays readable until the user goes back. */
function showEnded() {
  updateChatControls(null);
  ui.session.classList.add('ended');
  ui.call.hidden = true;
  ui.leave.textContent = 'Back to start';
  ui.leave.classList.replace('danger', 'primary');
  ui.peerCount.textContent = 'ended';
}

function updateChatControls(current) {
  const canChat = Boolean(current && !current.over && current.openPeers().length > 0);
  ui.chatInput.disabled = !canChat;
  ui.chatSend.disabled = !canChat;
}

function revealPassphrase() {
  ui.passphraseRow.hidden = false;
}

function readyText() {
  return 'Host a room, or join one with a code.';
}

// ---------------------------------------------------------------------------------------------
// Actions

function startHosting() {
  if (session) return;
  const passphrase = ui.passphraseRow.hidden ? '' : ui.passphrase.value;
  const current = new Session('host');
  current.usedPassphrase = passphrase !== '';
  session = current;
  setBusy(true);
  setStatus('Connecting to the relay…');
  current.connect(Intercessor.host('.', { passphrase }));
}

/** The code in what the user typed or pasted: a code, or a whole join link. */
function typedCode() {
  const typed = ui.joinCode.value.trim();
  if (/^https?:\/\//i.test(typed)) {
    try {
      const code = new URL(typed).searchParams.get('code');
      if (code) return code.trim();
    } catch {
      // not a URL after all: use it as typed
    }
  }
  return typed;
}

function join() {
  if (session) return;
  const typed = typedCode();
  if (!typed) {
    setStatus('Type the code the host gave you, then press Join.', 'error');
    ui.joinCode.focus();
    return;
  }
  if (!CODE_PATTERN.test(Intercessor.normalizeCode(typed))) {
    setStatus(`“${typed}” is not a join code: a code is 4 to 16 letters and digits, like 7KQ-2MX.`, 'error');
    ui.joinCode.focus();
    return;
  }
  const current = new Session('guest');
  current.code = Intercessor.normalizeCode(typed);
  current.name = ui.joinName.value.trim();
  session = current;
  setBusy(true);
  setStatus(`Looking for the host with code ${groupCode(current.code)}…`);
  current.connect(Intercessor.join('.', typed, { name: current.name }));
}

function leave() {
  const current = session;
  if (!current) return;
  const wasOver = current.over;
  current.leave();
  session = null;
  stopLocalMedia();
  showStart();
  setStatus(wasOver ? readyText() : `You left the room. ${readyText()}`);
}

function sendChat() {
  const current = session;
  const text = ui.chatInput.value;
  if (!current || current.over || text.trim() === '') return;
  const open = current.openPeers();
  if (open.length === 0) return;
  const message = current.role === 'host' ? { kind: 'chat', from: 'Host', text } : { kind: 'chat', text };
  for (const peer of open) peer.sendRoom(message);
  addChatLine('You', text, 'mine');
  ui.chatInput.value = '';
  ui.chatInput.focus();
}

async function copyLink() {
  const link = ui.shareLink.value;
  let copied = false;
  try {
    await navigator.clipboard.writeText(link);
    copied = true;
  } catch {
    // No clipboard API (plain http on a LAN address): copy the selected text instead.
    ui.shareLink.select();
    try {
      copied = document.execCommand('copy');
    } catch {
      copied = false;
    }
  }
  ui.copyLink.textContent = copied ? 'Copied!' : 'Select & copy';
  setTimeout(() => {
    ui.copyLink.textContent = 'Copy';
  }, COPIED_SHOWN_MS);
}

// ---------------------------------------------------------------------------------------------
// Wiring

ui.hostForm.addEventListener('submit', (event) => {
  event.preventDefault();
  startHosting();
});
ui.joinForm.addEventListener('submit', (event) => {
  event.preventDefault();
  join();
});
ui.chatForm.addEventListener('submit', (event) => {
  event.preventDefault();
  sendChat();
});
ui.call.addEventListener('click', () => toggleCall());
ui.lockRoom.addEventListener('change', () => session?.changeRoom({ locked: ui.lockRoom.checked }));
ui.askToJoin.addEventListener('change', () => session?.changeRoom({ knock: ui.askToJoin.checked }));
ui.leave.addEventListener('click', () => leave());
ui.copyLink.addEventListener('click', () => copyLink());
ui.shareLink.addEventListener('focus', () => ui.shareLink.select());
ui.shareNative.addEventListener('click', () => {
  navigator.share({ title: 'Join my Intercessor room', url: ui.shareLink.value }).catch(() => {});
});

// Closing the tab says goodbye, so the other side learns at once.
window.addEventListener('pagehide', () => {
  if (session) session.leave();
});

(function init() {
  const code = new URLSearchParams(location.search).get('code');
  if (code && code.trim()) {
    ui.joinCode.value = code.trim();
    ui.joinButton.focus();
    setStatus(`Press Join to enter room ${groupCode(Intercessor.normalizeCode(code.trim()))}.`);
  } else {
    setStatus(readyText());
  }
  document.body.dataset.screen = 'start';
})();
