// Drives the NAT lab (scripts/natlab): brings it up and down, runs programs inside its hosts and
// Chromium in one of them.
//
//   const reason = labSkipReason();          // null when the lab can run here, else why not
//   const lab = await labUp();               // scripts/natlab up; lab.env: NATLAB_* facts; registered for cleanup
//   const p = lab.spawn('home', bin, args, env)   // a program in a host's namespace: { child, output(), waitFor(re, ms), stop() }
//   const node = await lab.startNode('runnerA', { ice, env, extraArgs })   // ouroboros node on :9000, tunnel-forwarded
//   const b = await lab.browser('home', origin)    // Chromium (lib/browser.mjs) inside the namespace
//   await lab.curl('pub', url)               // GET from inside a host, body as text
//   await lab.down();
//
// Hosts: pub (open, coturn), runnerA, runnerB (runner NATs, TCP :9000 forwarded: the tunnel), runnerC
// (the same, dropping all UDP), home, symmetric, udpblocked. Addresses: lab.env.NATLAB_WAN_A … (public side of each NAT).

import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { register, trackChild } from './cleanup.mjs';
import { launchBrowser, CHROMIUM } from './browser.mjs';
import { ouroborosBin, REPO_DIR } from './servers.mjs';

export const NATLAB = path.join(REPO_DIR, 'scripts', 'natlab');

// NATLAB_PREFIX (as scripts/natlab reads it) runs the tests in a second, independent lab.
const P = process.env.NATLAB_PREFIX || 'onl';
const NS = {
  pub: `${P}-pub`, runnerA: `${P}-hA`, runnerB: `${P}-hB`, runnerC: `${P}-hC`,
  home: `${P}-hH`, symmetric: `${P}-hS`, udpblocked: `${P}-hU`,
};
const TAG = { runnerA: 'A', runnerB: 'B', runnerC: 'C', home: 'H', symmetric: 'S', udpblocked: 'U' };

/** Why the lab cannot run here (`scripts/natlab check`), or null. */
export function labSkipReason() {
  if (!existsSync(NATLAB)) return `${NATLAB} missing`;
  const r = spawnSync(NATLAB, ['check'], { encoding: 'utf8' });
  if (r.status === 0) return null;
  return (r.stdout + r.stderr).trim().replace(/^SKIPPED: NAT lab: /, '') || `natlab check exited ${r.status}`;
}

/** The examples directory (OUROBOROS_EXAMPLES_DIR, else next to the binary). */
export function examplesDir() {
  return process.env.OUROBOROS_EXAMPLES_DIR
    ? path.resolve(process.env.OUROBOROS_EXAMPLES_DIR)
    : path.join(path.dirname(ouroborosBin()), 'examples');
}

function run(args) {
  const r = spawnSync(NATLAB, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`natlab ${args.join(' ')} failed (${r.status}):\n${r.stdout}${r.stderr}`);
  return r.stdout;
}

/** A program running in a lab host. */
function spawnIn(host, command, args, env = {}) {
  const ns = NS[host];
  if (!ns) throw new Error(`unknown lab host ${host}`);
  const child = spawn('ip', ['netns', 'exec', ns, command, ...args], {
    env: { ...process.env, ...env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  trackChild(child);
  let out = '';
  let err = '';
  const watchers = new Set();
  const check = () => {
    for (const w of watchers) {
      const text = w.stream === 'stderr' ? err : out;
      const m = typeof w.re === 'function' ? w.re(text) : w.re.exec(text);
      if (m) {
        watchers.delete(w);
        clearTimeout(w.timer);
        w.resolve(m);
      }
    }
  };
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stdout.on('data', (d) => { out += d; check(); });
  child.stderr.on('data', (d) => { err += d; if (err.length > 4_000_000) err = err.slice(-2_000_000); check(); });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => {
    for (const w of watchers) { clearTimeout(w.timer); w.reject(new Error(`${command} exited (${code ?? signal}) before ${w.re}\n--- stdout ---\n${out.slice(-3000)}\n--- stderr ---\n${err.slice(-3000)}`)); }
    watchers.clear();
    resolve({ code, signal });
  }));
  const handle = {
    child,
    stdout: () => out,
    stderr: () => err,
    exited,
    /**
     * Resolves with the match once `re` (a RegExp, or a function of the text returning a truthy
     * value) matches stdout (or stderr with stream 'stderr').
     */
    waitFor(re, ms = 30000, stream = 'stdout') {
      return new Promise((resolve, reject) => {
        const w = { re, stream, resolve, reject };
        w.timer = setTimeout(() => {
          watchers.delete(w);
          reject(new Error(`${command} in ${host}: no ${re} within ${ms} ms\n--- stdout ---\n${out.slice(-3000)}\n--- stderr ---\n${err.slice(-3000)}`));
        }, ms);
        watchers.add(w);
        check();
      });
    },
    async stop(graceMs = 3000) {
      if (child.exitCode !== null || child.signalCode !== null) return exited;
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
      const r = await exited;
      clearTimeout(t);
      return r;
    },
  };
  register(`${command} in ${host}`, () => handle.stop());
  return handle;
}

/** Brings the lab up (and registers its removal). */
export async function labUp() {
  run(['up']);
  let downed = false;
  const down = async () => { if (!downed) { downed = true; run(['down']); } };
  register('natlab', down);
  const env = Object.fromEntries(run(['env']).trim().split('\n').map((l) => l.split('=')));
  const secret = spawnSync('cat', [path.join(env.NATLAB_STATE, 'turn-secret')], { encoding: 'utf8' }).stdout;
  const stun = `stun:${env.NATLAB_PUB_IP}:3478`;
  const lab = {
    env,
    down,
    /** The lab coturn's static-auth-secret (for OUROBOROS_TURN_SECRET). */
    turnSecret: secret,
    stunUrl: stun,
    turnUrl: `turn:${env.NATLAB_PUB_IP}:3478?transport=udp`,
    turnTcpUrl: `turn:${env.NATLAB_PUB_IP}:3478?transport=tcp`,
    /** TURN over TLS; trust its certificate with `SSL_CERT_FILE: lab.env.NATLAB_TURN_CA`. */
    turnsUrl: `turns:${env.NATLAB_PUB_IP}:5349`,
    /** The public (WAN) address of a NATed host. */
    wan: (host) => env[`NATLAB_WAN_${TAG[host]}`],
    spawn: spawnIn,
    measure: () => run(['measure']),
    /** GET `url` from inside `host`. */
    curl(host, url) {
      const r = spawnSync('ip', ['netns', 'exec', NS[host], 'curl', '-sS', '--max-time', '10', url], { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`curl ${url} in ${host}: ${r.stderr}`);
      return r.stdout;
    },
    /**
     * `ouroboros node` in a runner NAT host on :9000 (forwarded by its NAT: the tunnel), advertising the
     * NAT's public address. Resolves once it printed its peer id.
     */
    async startNode(host, { ice = [], env: extraEnv = {}, extraArgs = [], dataDir } = {}) {
      const dir = dataDir ?? (await mkdtemp(path.join(os.tmpdir(), `natlab-${host}-`)));
      register(`rm ${dir}`, () => rm(dir, { recursive: true, force: true }));
      const args = ['node', '--host', '0.0.0.0', '--port', env.NATLAB_TUNNEL_PORT,
        '--public-host', lab.wan(host), '--public-port', env.NATLAB_TUNNEL_PORT,
        '--data-dir', dir, '--ice-servers', JSON.stringify(ice), ...extraArgs];
      const p = spawnIn(host, ouroborosBin(), args, {
        RUST_LOG: 'info,rtc=warn,rtc_ice=warn,webrtc=warn',
        OUROBOROS_SECRET: 'natlab-ring-secret-0123456789',
        ...extraEnv,
      });
      const m = await p.waitFor(/^node peer-id (\S+)$/m, 30000);
      return { ...p, peerId: m[1], dataDir: dir, url: `http://${lab.wan(host)}:${env.NATLAB_TUNNEL_PORT}` };
    },
    /**
     * Chromium (lib/browser.mjs, same flags) running inside `host`'s namespace. No media permission
     * is granted (the lab's origins are not secure contexts), so Chromium offers its default-route
     * address only, as a browser on a real network does.
     */
    async browser(host) {
      const dir = await mkdtemp(path.join(os.tmpdir(), 'natlab-chromium-'));
      register(`rm ${dir}`, () => rm(dir, { recursive: true, force: true }));
      const wrapper = path.join(dir, 'chromium');
      await writeFile(wrapper, `#!/bin/sh\nexec ip netns exec ${NS[host]} ${CHROMIUM} "$@"\n`);
      await chmod(wrapper, 0o755);
      return launchBrowser({ executablePath: wrapper });
    },
  };
  return lab;
}
