// A cluster on loopback for a test: a redis-server of its own, relay instances sharing its join
// codes, and intercessor-fly-proxy (the integration tests' replaying proxy, as a binary) in front.
//
// The proxy is debug/intercessor-fly-proxy in the same target directory as the relay's default
// (../../target, or $CARGO_TARGET_DIR), built with cargo when missing or older than its sources.

import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { buildWhenStale, repoRoot, startRelay, stopChild, targetDir } from './relay.js';

const proxyPath = path.join(targetDir, 'debug', 'intercessor-fly-proxy');
const proxySources = ['tests/common/fly_proxy.rs', 'bench/src/bin/fly_proxy.rs', 'bench/Cargo.toml'].map(
  (file) => path.join(repoRoot, file),
);

const START_TIMEOUT_MS = 20000;
/** Attempts at a free port for redis-server: another process may take the one chosen first. */
const REDIS_ATTEMPTS = 5;

let proxyChecked = false;

/** The proxy binary, built first when needed. */
export function proxyBinary() {
  if (!proxyChecked) {
    const described = proxySources.map((file) => path.relative(repoRoot, file)).join(', ');
    const cargoArgs = ['build', '-p', 'intercessor-bench', '--bin', 'intercessor-fly-proxy'];
    buildWhenStale(proxyPath, proxySources, described, cargoArgs);
    proxyChecked = true;
  }
  return proxyPath;
}

/** A loopback port that was free a moment ago. */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/**
 * Spawns `bin args` and resolves once `ready(line)` (a line of its `stream`, stdout or stderr)
 * returns something other than undefined. Resolves to { value, lines, stop() }: `lines` keeps
 * every line of that stream, later ones included. Rejects, the child gone, if it exits first or
 * takes longer than START_TIMEOUT_MS.
 */
async function startChild(name, bin, args, stream, ready) {
  const stdio = ['ignore', 'ignore', 'ignore'];
  stdio[stream === 'stdout' ? 1 : 2] = 'pipe';
  const child = spawn(bin, args, { stdio });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const lines = [];
  const value = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(new Error(`${name} was not ready within ${START_TIMEOUT_MS} ms:\n${lines.join('\n')}`));
    }, START_TIMEOUT_MS);
    createInterface({ input: child[stream] }).on('line', (line) => {
      lines.push(line);
      const found = ready(line);
      if (found !== undefined) {
        clearTimeout(timer);
        resolve(found);
      }
    });
    child.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited (${code ?? signal}) before it was ready:\n${lines.join('\n')}`));
    });
  }).catch(async (error) => {
    await stopChild(child, exited);
    throw error;
  });
  return { value, lines, stop: () => stopChild(child, exited) };
}

/** A redis-server without persistence on a free loopback port: { url, stop() }. */
export async function startRedis() {
  for (let attempt = 1; ; attempt += 1) {
    const port = await freePort();
    const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'];
    try {
      const redis = await startChild('redis-server', 'redis-server', [...args, '--daemonize', 'no'], 'stdout', (line) =>
        line.includes('Ready to accept connections') ? true : undefined,
      );
      return { url: `redis://127.0.0.1:${port}`, stop: redis.stop };
    } catch (error) {
      if (error.code === 'ENOENT') {
        throw new Error('redis-server is not installed (apt-get install redis-server)', { cause: error });
      }
      if (attempt >= REDIS_ATTEMPTS) throw error;
    }
  }
}

/** Relay instance `id` in the cluster on `redis`, with `--cluster-routing routing`; see startRelay. */
export function startInstance(redis, id, routing, args = []) {
  const cluster = ['--cluster-redis-url', redis.url, '--cluster-routing', routing, '--instance-id', id];
  return startRelay({ args: [...cluster, ...args] });
}

/**
 * intercessor-fly-proxy on a free loopback port in front of `instances` ({ id: relay }), sending
 * every connection to instance `firstHop` first. Resolves to { origin, lines, stop() }; `lines`
 * holds what it printed, one line per connection (`GET /client/CODE -> b 307, replayed -> a 101`).
 */
export async function startProxy(instances, firstHop) {
  const args = ['--listen', '127.0.0.1:0', '--first-hop', firstHop];
  for (const [id, relay] of Object.entries(instances)) args.push('--instance', `${id}=${relay.listen}`);
  const proxy = await startChild('intercessor-fly-proxy', proxyBinary(), args, 'stdout', (line) =>
    line.match(/^fly proxy listening on (\S+):/)?.[1],
  );
  return { origin: `http://${proxy.value}`, lines: proxy.lines, stop: proxy.stop };
}

/**
 * The value of metric `series` (name and labels, exactly as exposed) on a relay started with
 * `--metrics-listen 127.0.0.1:0`, or null when it is not exposed.
 */
export async function metric(relay, series) {
  const listening = relay.logs
    .map((line) => {
      try {
        return JSON.parse(line).fields;
      } catch {
        return undefined;
      }
    })
    .find((fields) => fields?.message === 'metrics listening');
  if (!listening) throw new Error(`the relay logged no "metrics listening" line:\n${relay.logs.join('\n')}`);
  const response = await fetch(listening.url);
  const text = await response.text();
  const line = text.split('\n').find((entry) => entry.startsWith(`${series} `));
  return line === undefined ? null : Number(line.slice(series.length + 1));
}
