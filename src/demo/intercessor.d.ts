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

export interface Events {
  message: Message;
  peerjoined: { id: string };
  peergone: { id: string };
  peeraway: { id: string };
  peerback: { id: string };
  error: IntercessorError;
  reconnecting: { code: number };
  reconnected: { replayed: number; gap: boolean };
  gap: { replayed: number };
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
}

export class Link extends Signal {
  /** The host's code, normalised. */
  readonly code: string;
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
export function join(url: string, code: string, options?: Options): Promise<Link>;

export const Intercessor: {
  host: typeof host;
  join: typeof join;
  normalizeCode: typeof normalizeCode;
};
