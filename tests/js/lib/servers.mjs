// Start and stop PeerJS signaling servers for tests: the reference `peer` npm server (1.0.2) and ours.
//
//   import { startServer, startReference, startOuroboros, SERVER_KINDS } from './lib/servers.mjs';
//   const srv = await startServer('ouroboros', { key: 'k', path: '/myapp', expireTimeout: 1000 });
//   srv.httpBase        // 'http://127.0.0.1:41234/myapp/'   (GET `${srv.httpBase}${srv.key}/id`)
//   srv.wsUrl({ id, token })   // 'ws://127.0.0.1:41234/myapp/peerjs?key=k&id=..&token=..'
//   srv.peerOptions()   // { host, port, path, key, secure: false, config: { iceServers: [] } } for `new Peer(..)`
//   srv.output()        // everything the server printed so far (stdout + stderr), for failure messages
//   await srv.stop();   // SIGTERM, then SIGKILL after a grace period; resolves with { code, signal }
//
// Options (both kinds, all optional): key, path, expireTimeout, aliveTimeout, concurrentLimit (numbers in
// ms / count), allowDiscovery (bool), cors (array of origins), extraArgs (array, appended verbatim),
// env (extra environment), startTimeoutMs (default 15000).
// Ours only: bin (default: $OUROBOROS_BIN, else $CARGO_TARGET_DIR/debug/ouroboros if present, else
// <repo>/target/debug/ouroboros), subcommand (default 'signal').
//
// Both bind 127.0.0.1 on an ephemeral port. The reference CLI refuses `--port 0` unless env PORT is
// also "0" (its `P.port || parseInt(process.env.PORT)`), so we pass both and read the bound port from its
// `Started PeerServer on 127.0.0.1, port: N, path: P` line. Ours prints `listening on http://ADDR/PATH`.
// Every started server is registered with ./cleanup.mjs (`cleanupAll()` stops it).

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { register, trackChild } from './cleanup.mjs';

/** Directory `tests/js` of this checkout. */
export const JS_DIR = fileURLToPath(new URL('..', import.meta.url));
/** Root of the repository. */
export const REPO_DIR = path.resolve(JS_DIR, '..', '..');
/** The two server implementations the differential and browser tests run against. */
export const SERVER_KINDS = ['reference', 'ouroboros'];

const REFERENCE_CLI = path.join(JS_DIR, 'node_modules', 'peer', 'dist', 'bin', 'peerjs.js');
const MAX_LOG = 256 * 1024;

/** Path of our binary (see the header comment for the lookup order). */
export function ouroborosBin() {
  if (process.env.OUROBOROS_BIN) return path.resolve(JS_DIR, process.env.OUROBOROS_BIN);
  if (process.env.CARGO_TARGET_DIR) {
    const p = path.resolve(REPO_DIR, process.env.CARGO_TARGET_DIR, 'debug', 'ouroboros');
    if (existsSync(p)) return p;
  }
  return path.join(REPO_DIR, 'target', 'debug', 'ouroboros');
}

/** Normalises a PeerJS mount path to a leading and trailing slash ('/myapp' -> '/myapp/'). */
export function normalisePath(p = '/') {
  let s = p.startsWith('/') ? p : `/${p}`;
  if (!s.endsWith('/')) s += '/';
  return s;
}

/** Starts a server of the given kind ('reference' or 'ouroboros'). */
export function startServer(kind, opts = {}) {
  if (kind === 'reference') return startReference(opts);
  if (kind === 'ouroboros') return startOuroboros(opts);
  throw new Error(`unknown server kind ${kind}`);
}

/** Starts the reference `peer` server (node_modules/peer/dist/bin/peerjs.js). */
export function startReference(opts = {}) {
  const args = [REFERENCE_CLI, '--port', '0', '--host', '127.0.0.1'];
  if (opts.key !== undefined) args.push('--key', opts.key);
  if (opts.path !== undefined) args.push('--path', opts.path);
  if (opts.expireTimeout !== undefined) args.push('--expire_timeout', String(opts.expireTimeout));
  if (opts.aliveTimeout !== undefined) args.push('--alive_timeout', String(opts.aliveTimeout));
  if (opts.concurrentLimit !== undefined) args.push('--concurrent_limit', String(opts.concurrentLimit));
  if (opts.allowDiscovery) args.push('--allow_discovery');
  for (const origin of opts.cors ?? []) args.push('--cors', origin);
  args.push(...(opts.extraArgs ?? []));
  return launch({
    kind: 'reference',
    command: process.execPath,
    args,
    env: { PORT: '0', ...opts.env },
    opts,
    parseReady(line) {
      const m = /^Started PeerServer on (\S+), port: (\d+), path: (.*)$/.exec(line);
      if (!m) return null;
      return { host: '127.0.0.1', port: Number(m[2]), path: normalisePath(opts.path ?? '/') };
    },
  });
}

/** Starts our binary: `ouroboros signal --port 0 ...` (or `opts.subcommand`). */
export function startOuroboros(opts = {}) {
  const bin = opts.bin ?? ouroborosBin();
  if (!existsSync(bin)) {
    return Promise.reject(
      new Error(`ouroboros binary not found at ${bin}: run \`cargo build --bins\` or set OUROBOROS_BIN`),
    );
  }
  const args = [opts.subcommand ?? 'signal', '--host', '127.0.0.1', '--port', '0'];
  if (opts.key !== undefined) args.push('--key', opts.key);
  if (opts.path !== undefined) args.push('--path', opts.path);
  if (opts.expireTimeout !== undefined) args.push('--expire-timeout', String(opts.expireTimeout));
  if (opts.aliveTimeout !== undefined) args.push('--alive-timeout', String(opts.aliveTimeout));
  if (opts.concurrentLimit !== undefined) args.push('--concurrent-limit', String(opts.concurrentLimit));
  if (opts.allowDiscovery) args.push('--allow-discovery');
  for (const origin of opts.cors ?? []) args.push('--cors', origin);
  args.push(...(opts.extraArgs ?? []));
  return launch({
    kind: 'ouroboros',
    command: bin,
    args,
    env: opts.env ?? {},
    opts,
    parseReady(line) {
      const m = /^listening on (https?:\/\/\S+)$/.exec(line.trim());
      if (!m) return null;
      const u = new URL(m[1]);
      return { host: u.hostname, port: Number(u.port), path: normalisePath(u.pathname), scheme: u.protocol };
    },
  });
}

function launch({ kind, command, args, env, opts, parseReady }) {
  const startTimeoutMs = opts.startTimeoutMs ?? 15000;
  const child = spawn(command, args, {
    cwd: JS_DIR,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  trackChild(child);
  let log = '';
  const append = (chunk) => {
    log += chunk;
    if (log.length > MAX_LOG) log = log.slice(-MAX_LOG);
  };
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', append);
  child.stdout.setEncoding('utf8');
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const describe = () => `${kind} server (${command} ${args.join(' ')})`;

  return new Promise((resolve, reject) => {
    let pending = '';
    let ready = false;
    const fail = (msg) => {
      if (ready) return;
      ready = true;
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new Error(`${describe()}: ${msg}\n--- output ---\n${log}`));
    };
    const timer = setTimeout(() => fail(`no ready line within ${startTimeoutMs} ms`), startTimeoutMs);
    child.once('error', (err) => fail(`spawn failed: ${err.message}`));
    exited.then(({ code, signal }) => fail(`exited before ready (code ${code}, signal ${signal})`));
    child.stdout.on('data', (chunk) => {
      append(chunk);
      if (ready) return;
      pending += chunk;
      let nl;
      while ((nl = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, nl).replace(/\r$/, '');
        pending = pending.slice(nl + 1);
        const addr = parseReady(line);
        if (!addr) continue;
        ready = true;
        clearTimeout(timer);
        resolve(makeHandle({ kind, child, exited, addr, opts, output: () => log, describe }));
        return;
      }
    });
  });
}

function makeHandle({ kind, child, exited, addr, opts, output, describe }) {
  const key = opts.key ?? 'peerjs';
  const { host, port } = addr;
  const mount = addr.path;
  const httpBase = `http://${host}:${port}${mount}`;
  let stopping = null;
  const stop = (graceMs = 3000) => {
    if (!stopping) {
      stopping = (async () => {
        unregister();
        if (child.exitCode === null && child.signalCode === null) {
          child.kill('SIGTERM');
          const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
          const res = await exited;
          clearTimeout(t);
          return res;
        }
        return exited;
      })();
    }
    return stopping;
  };
  const unregister = register(describe(), () => stop());
  return {
    kind,
    pid: child.pid,
    child,
    host,
    port,
    path: mount,
    key,
    httpBase,
    /** ws URL of the signaling socket; `query` entries that are undefined are left out. */
    wsUrl(query = {}) {
      const q = Object.entries(query)
        .filter(([, v]) => v !== undefined)
        .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`)
        .join('&');
      return `ws://${host}:${port}${mount}peerjs${q ? `?${q}` : ''}`;
    },
    /** Options for `new Peer(id, options)` in a browser (no STUN/TURN: loopback only). */
    peerOptions(extra = {}) {
      return { host, port, path: mount, key, secure: false, config: { iceServers: [] }, ...extra };
    },
    output,
    exited,
    stop,
  };
}
