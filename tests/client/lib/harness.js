// What the client tests share: the library, `ws` sockets a test can cut, and bounded waits for
// events. The relay itself is started with the browser tests' tests/browser/lib/relay.js.

import WebSocket from 'ws';

export { Intercessor, IntercessorError } from '../../../src/demo/intercessor.js';
export { startRelay } from '../../browser/lib/relay.js';

export const WAIT_MS = 5000;

/**
 * A `ws` WebSocket class that keeps every socket it opens, so a test can cut one, or make one
 * `deaf`: frames still arrive but never reach the library, as if lost on the way.
 */
export function recordingWebSocket() {
  const sockets = [];
  class Recorded extends WebSocket {
    constructor(...args) {
      super(...args);
      this.deaf = false;
      sockets.push(this);
    }

    get onmessage() {
      return super.onmessage;
    }

    set onmessage(handler) {
      super.onmessage = (event) => this.deaf || handler(event);
    }
  }
  return { WebSocket: Recorded, sockets };
}

/** Resolves with the next `type` event of `signal` for which `where(detail)` holds. */
export function next(signal, type, where = () => true) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      stop();
      reject(new Error(`no ${type} event within ${WAIT_MS} ms`));
    }, WAIT_MS);
    const stop = signal.on(type, (detail) => {
      if (!where(detail)) return;
      clearTimeout(timer);
      stop();
      resolve(detail);
    });
  });
}

/** An array that fills with every `type` event of `signal` from now on. */
export function collect(signal, type) {
  const seen = [];
  signal.on(type, (detail) => seen.push(detail));
  return seen;
}

/** Resolves once `check()` holds, polling; fails after WAIT_MS saying `what`. */
export async function until(check, what) {
  const deadline = Date.now() + WAIT_MS;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Resolves with the rejection of `promise` (and fails if it resolves). */
export async function rejection(promise) {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error('expected a rejection');
}
