// Starts the Intercessor relay for a test and stops it again.
//
// The binary is ../../target/debug/intercessor, or debug/intercessor under $CARGO_TARGET_DIR when
// that is set (or $INTERCESSOR_BIN). When that default binary is missing, or older than the demo
// files it compiles in, it is built with `cargo build`. lib/cluster.js builds its proxy the same way.

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, '..', '..', '..');
// Where `cargo build` puts it: cargo reads a relative CARGO_TARGET_DIR from where it runs, repoRoot.
export const targetDir = process.env.CARGO_TARGET_DIR
  ? path.resolve(repoRoot, process.env.CARGO_TARGET_DIR)
  : path.join(repoRoot, 'target');
const defaultBinary = path.join(targetDir, 'debug', 'intercessor');
const demoDir = path.join(repoRoot, 'src', 'demo');

const START_TIMEOUT_MS = 20000;
const STOP_TIMEOUT_MS = 5000;

let binaryChecked = null;

/**
 * Runs `cargo ARGS` in the repository when `binary` is missing or older than any of `sources`
 * (`described` names them in the message), then checks that `binary` is there.
 */
export function buildWhenStale(binary, sources, described, cargoArgs) {
  let why = null;
  if (!existsSync(binary)) why = 'is missing';
  else if (statSync(binary).mtimeMs < Math.max(...sources.map((file) => statSync(file).mtimeMs))) {
    why = `is older than ${described}`;
  }
  if (why) {
    const command = `cargo ${cargoArgs.join(' ')}`;
    console.log(`# ${path.relative(repoRoot, binary)} ${why}: running ${command} in ${repoRoot}`);
    const build = spawnSync('cargo', cargoArgs, { cwd: repoRoot, stdio: ['ignore', 'inherit', 'inherit'] });
    if (build.error) throw new Error(`${command} could not start: ${build.error.message}`);
    if (build.status !== 0) throw new Error(`${command} failed with status ${build.status}`);
  }
  if (!existsSync(binary)) throw new Error(`${binary} is still missing after cargo build`);
}

/** The relay binary to run, built first when needed. */
export function relayBinary() {
  if (binaryChecked) return binaryChecked;
  if (process.env.INTERCESSOR_BIN) {
    const bin = path.resolve(process.env.INTERCESSOR_BIN);
    if (!existsSync(bin)) throw new Error(`INTERCESSOR_BIN=${bin} does not exist`);
    binaryChecked = bin;
    return bin;
  }
  const demoFiles = readdirSync(demoDir).map((name) => path.join(demoDir, name));
  buildWhenStale(defaultBinary, demoFiles, 'src/demo/*, which it compiles in', ['build']);
  binaryChecked = defaultBinary;
  return defaultBinary;
}

// The relay reads INTERCESSOR_* variables as options: a developer's own settings (a passphrase,
// say) must not leak into the tests.
function cleanEnvironment() {
  const env = { ...process.env, RUST_LOG: 'info' };
  for (const key of Object.keys(env)) if (key.startsWith('INTERCESSOR_')) delete env[key];
  return env;
}

/**
 * Starts the relay on 127.0.0.1 with an ephemeral port and waits for its "relay listening" log line.
 * Resolves to { origin, listen, logs, stop() }; `origin` is http:// or, with `tls`, https://.
 */
export async function startRelay({ args = [], tls = null } = {}) {
  const bin = relayBinary();
  const fullArgs = ['--listen', '127.0.0.1:0', '--log-format', 'json', ...args];
  if (tls) fullArgs.push('--tls-cert', tls.cert, '--tls-key', tls.key);
  const child = spawn(bin, fullArgs, { stdio: ['ignore', 'ignore', 'pipe'], env: cleanEnvironment() });
  const logs = [];
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));

  const listen = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(new Error(`the relay did not log "relay listening" within ${START_TIMEOUT_MS} ms:\n${logs.join('\n')}`));
    }, START_TIMEOUT_MS);
    createInterface({ input: child.stderr }).on('line', (line) => {
      logs.push(line);
      let entry;
      try {
        entry = JSON.parse(line);
      } catch {
        return;
      }
      if (entry.fields && entry.fields.message === 'relay listening') {
        clearTimeout(timer);
        resolve(entry.fields.listen);
      }
    });
    child.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`the relay exited (${code ?? signal}) before listening:\n${logs.join('\n')}`));
    });
  }).catch((error) => {
    if (child.exitCode === null) child.kill('SIGKILL');
    throw error;
  });

  return {
    origin: `${tls ? 'https' : 'http'}://${listen}`,
    listen,
    logs,
    stop: () => stopChild(child, exited),
  };
}

/**
 * Stops `child` (SIGTERM, then SIGKILL after STOP_TIMEOUT_MS) and resolves once it has exited
 * (`exited`, a promise of its 'exit' event). Only this child, by its own PID.
 */
export async function stopChild(child, exited) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  process.kill(child.pid, 'SIGTERM');
  const timer = setTimeout(() => {
    if (child.exitCode === null) process.kill(child.pid, 'SIGKILL');
  }, STOP_TIMEOUT_MS);
  await exited;
  clearTimeout(timer);
}

/** Development certificates from `intercessor gen-certs` in a fresh temporary directory. */
export function generateCertificates() {
  const dir = mkdtempSync(path.join(tmpdir(), 'intercessor-certs-'));
  const result = spawnSync(relayBinary(), ['gen-certs', '--dir', dir], {
    env: cleanEnvironment(),
    encoding: 'utf8',
  });
  if (result.status !== 0) {
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`intercessor gen-certs failed (${result.status}): ${result.stderr || result.stdout}`);
  }
  return {
    dir,
    ca: path.join(dir, 'dev-ca.pem'),
    cert: path.join(dir, 'dev-cert.pem'),
    key: path.join(dir, 'dev-key.pem'),
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}
