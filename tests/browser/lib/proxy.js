// A TCP proxy on loopback in front of the relay that a test can cut, as a network loss would.
//
// A cut resets every connection it carries (RST both ways, so neither end gets a WebSocket close
// frame: the page and the relay both see 1006) and resets new ones for a while, as an unplugged
// cable or a phone between networks would, then lets them through again. Before a cut, the proxy
// can go deaf: what the relay writes is dropped, as frames dying in a lost network's buffers.

import { connect, createServer } from 'node:net';

/**
 * Listens on 127.0.0.1 (an ephemeral port) and carries each connection to `target` (host:port).
 * Resolves to { origin, refused, dropped, deafen(), cut(ms), stop() }: `refused` counts
 * connections reset during cuts; `dropped` the bytes from the relay that `deafen()` threw away on
 * the connections carried then; `cut(ms)` resolves once new connections get through again.
 */
export async function startCutProxy(target) {
  const colon = target.lastIndexOf(':');
  const [host, port] = [target.slice(0, colon), Number(target.slice(colon + 1))];
  const carried = new Set();
  let cutUntil = 0;
  const proxy = { refused: 0, dropped: 0 };

  const server = createServer((down) => {
    // Errors are expected here (resets are the point); each one just ends the pair.
    down.on('error', () => {});
    if (Date.now() < cutUntil) {
      proxy.refused += 1;
      down.resetAndDestroy();
      return;
    }
    const up = connect({ host, port });
    up.on('error', () => {});
    const pair = [down, up];
    carried.add(pair);
    down.pipe(up);
    up.pipe(down);
    for (const socket of pair) {
      socket.on('close', () => {
        carried.delete(pair);
        for (const other of pair) if (!other.destroyed) other.destroy();
      });
    }
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port: listenPort } = server.address();

  proxy.origin = `http://127.0.0.1:${listenPort}`;
  proxy.deafen = () => {
    for (const [down, up] of carried) {
      up.unpipe(down);
      up.on('data', (chunk) => {
        proxy.dropped += chunk.length;
      });
      // unpipe() paused it, and a 'data' listener does not undo that.
      up.resume();
    }
  };
  proxy.cut = (ms) => {
    cutUntil = Date.now() + ms;
    for (const pair of [...carried]) for (const socket of pair) socket.resetAndDestroy();
    return new Promise((resolve) => setTimeout(resolve, ms));
  };
  proxy.stop = () =>
    new Promise((resolve) => {
      for (const pair of [...carried]) for (const socket of pair) socket.destroy();
      server.close(() => resolve());
    });
  return proxy;
}
