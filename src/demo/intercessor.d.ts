// Types of intercessor.js, written by hand beside it; tests/client checks both with `tsc --noEmit`.

/** Where a room or link stands. */
export type State = 'connecting' | 'open' | 'reconnecting' | 'closed';

/** Why a room or link closed, from the relay's close code. */
export type CloseReason =
  | 'left' // leave() was called
  | 'relay-shutdown' // 1001
  | 'connection-lost' // 1006, and resume (if on) did not get it back in time
  | 'too-slow' // 1008: the send queue overflowed, or rate limited for too long (see `text`)
  | 'too-big' // 1009
  | 'unavailable' // 1013
  | 'unauthorized' // 4401: wrong or missing passphrase
  | 'unknown-code' // 4404: no host has that code
  | 'idle-timeout' // 4408
  | 'room-full' // 4409
  | 'host-left' // 4410
  | 'superseded' // 4412: another connection resumed this peer
  | 'rate-limited' // 4429
  | 'kicked' // 4403 after ERROR KICKED: the host removed this guest
  | 'denied' // 4403 after ERROR DENIED: the host did not let this knocker in
  | 'locked' // 4423: the room is locked (ERROR ROOM_LOCKED)
  | 'knock-timeout' // 4408 after ERROR KNOCK_TIMEOUT: nobody answered the knock in time
  | 'resume-failed' // the relay refused the resume token (RESUME_FAILED); `code` is the lost socket's
  | 'closed'; // any other code

/** A relay ERROR frame (`code` is the relay's: UNKNOWN_PEER, QUEUE_FULL, …) or a local error. */
export class IntercessorError extends Error {
  /** The relay's ERROR code, or BAD_CODE, TIMEOUT, UNREACHABLE, CONNECT_FAILED, CLOSED, QUEUE_OVERFLOW, WEBRTC. */
  code: string;
  /** The ERROR frame's other fields (id, type, path, retryAfterMs), or { peer } for WEBRTC. */
  detail: Record<string, unknown>;
  /** Set when host() or join() failed: how the relay closed the socket. */
  close?: { code: number; reason: CloseReason };
}

/** A frame from another peer. */
export interface Message {
  from: string;
  type: string;
  message: unknown;
}

/** The room's settings, as the relay's ROOM frame gives them. */
export interface RoomState {
  locked: boolean;
  knock: boolean;
  /** The ids of the knockers waiting for an answer. */
  waiting: string[];
}

export interface Events {
  message: Message;
  peerjoined: { id: string };
  /** `reason` is `'kicked'` when the host removed that guest. */
  peergone: { id: string; reason?: string };
  peeraway: { id: string };
  peerback: { id: string };
  error: IntercessorError;
  reconnecting: { code: number };
  reconnected: { replayed: number; gap: boolean };
  gap: { replayed: number };
  /** To a host with knocking on: a guest asks to join; `info` is its `name`, if it gave one. */
  knock: { id: string; info?: string };
  /** To a host: a knocker stopped waiting. */
  knockgone: { id: string; reason: 'left' | 'denied' | 'timeout' };
  /** To a knocking guest: the host let it in (`waiting` is now false). */
  admitted: Record<string, never>;
  /** To a host: the room's settings, after setRoom(). */
  room: RoomState;
  /** Fresh ICE servers from the relay, after refreshIce() (`iceServers` is updated first). */
  iceservers: { iceServers: RTCIceServer[] };
  /** `text` is the relay's close reason; `error` the ERROR frame right before the close, if any. */
  close: { code: number; reason: CloseReason; text: string; error: IntercessorError | null };
}

/** The WebSocket constructor to use: the global one, or the `ws` package's in Node. */
export type WebSocketClass = new (url: string) => {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number): void;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
};

export interface Options {
  WebSocket?: WebSocketClass;
  /** Frames send() may queue while reconnecting; 256 by default. */
  queueLimit?: number;
  /** How long to wait for HELLO; 15000 ms by default. */
  helloTimeoutMs?: number;
}

export interface HostOptions extends Options {
  /** The relay's --passphrase, if it has one. */
  passphrase?: string;
  /** Open the room locked: nobody can join until setRoom({ locked: false }). */
  locked?: boolean;
  /** Open the room knocking: each guest waits until admit() (or deny()). */
  knock?: boolean;
}

export interface JoinOptions extends Options {
  /** A name for the host to see when the room knocks (`knock` event `info`; at most 64 bytes). */
  name?: string;
}

export interface PeerConnectionOptions {
  /** ICE servers; the relay's HELLO iceServers by default. */
  iceServers?: RTCIceServer[];
  RTCPeerConnection?: typeof RTCPeerConnection;
}

declare class Signal {
  /** This peer's id: the join code for a host, a client id for a guest. */
  readonly id: string;
  /** The relay's --ice-server list from HELLO. */
  readonly iceServers: RTCIceServer[];
  readonly serverInfo: string | null;
  readonly state: State;
  /** Whether the relay offered resume (HELLO had a resumeToken). */
  readonly resumable: boolean;
  /** Calls `listener` on each `type` event; returns a function that stops it. */
  on<K extends keyof Events>(type: K, listener: (detail: Events[K]) => void): () => void;
  /**
   * Asks the relay for fresh ICE servers (new TURN credentials, for a call that outlives the
   * relay's --turn-ttl); resolves with them, once `iceServers` holds them. Rejects with CLOSED if
   * the connection ends first.
   */
  refreshIce(): Promise<RTCIceServer[]>;

  /** Leaves for good: no resume after it. */
  leave(): void;
}

export class Room extends Signal {
  /** The join code, to be shared with guests. */
  readonly code: string;
  /** Sends to guest `to`, or queues it while resuming; false when it can be neither. */
  send(to: string, type: string, message?: unknown): boolean;
  /** One RTCPeerConnection to guest `peerId`, negotiated over the room (host impolite). */
  peerConnection(peerId: string, options?: PeerConnectionOptions): RTCPeerConnection;
  /**
   * Removes guest `id`: it gets ERROR KICKED (with `reason`, at most 123 bytes) and close 4403;
   * `peergone` follows with reason 'kicked'. Not a ban: lock the room or make it knock for that.
   * False when it could be neither sent nor queued.
   */
  kick(id: string, reason?: string): boolean;
  /**
   * Changes the room's settings (those given; none just asks) and resolves with the whole state,
   * which is also a `room` event. Rejects with CLOSED if the connection ends first. Locked: new
   * guests are refused (close reason 'locked'). Knock: each new guest waits for admit() or deny().
   */
  setRoom(settings?: { locked?: boolean; knock?: boolean }): Promise<RoomState>;
  /** Lets knocker `id` in: it gets `admitted`, and this room `peerjoined` as for any guest. */
  admit(id: string): boolean;
  /** Turns knocker `id` away: ERROR DENIED (with `reason`) and close 4403; then `knockgone`. */
  deny(id: string, reason?: string): boolean;
}

export class Link extends Signal {
  /** The host's code, normalised. */
  readonly code: string;
  /** True while this guest knocks: until `admitted`, its messages go nowhere (NOT_ADMITTED). */
  readonly waiting: boolean;
  /** Sends to the host, or queues it while resuming; false when it can be neither. */
  send(type: string, message?: unknown): boolean;
  /** One RTCPeerConnection to the host, negotiated over the link (guest polite). */
  peerConnection(options?: PeerConnectionOptions): RTCPeerConnection;
}

/** `7kq-2mx` → `7KQ2MX`: a code as the relay reads it. */
export function normalizeCode(typed: string): string;
/** Opens a room; `url` is the relay (ws:, wss:, http:, https:, or relative to the page). */
export function host(url: string, options?: HostOptions): Promise<Room>;
/** Joins the room with `code`, typed in any of the relay's forgiving spellings. */
export function join(url: string, code: string, options?: JoinOptions): Promise<Link>;

export const Intercessor: {
  host: typeof host;
  join: typeof join;
  normalizeCode: typeof normalizeCode;
};
