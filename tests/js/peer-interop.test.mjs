// Interop of the native Rust PeerJS peer with the real peerjs 1.5.5 client in headless Chromium,
// against our signaling server and the reference `peer` server.
//
// Per server:
//   - browser → Rust: the browser connects to `examples/echo_peer` with every serialization
//     (binary, binary-utf8, json, raw, MsgPack through dist/serializer.msgpack.mjs), ordered and
//     unordered, and checks every echoed value (objects, strings, numbers, bytes; 1 MiB and 8 MiB
//     binary); a flushed close from the browser is honoured by Rust (the browser sees `close`).
//   - Rust → browser: `examples/send` connects to a browser echo peer with every serialization,
//     ordered and unordered (1 MiB and 8 MiB binary too), prints every reply as JSON, and its flushed
//     close closes the browser's connection.
//
// Run: cd tests/js && node --test peer-interop.test.mjs
// Env: PEER_TARGETS=ouroboros,reference (default both), OUROBOROS_EXAMPLES_DIR (else the examples
// are looked up next to OUROBOROS_BIN, in examples/), CHROMIUM.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import path from 'node:path';
import readline from 'node:readline';
import { startServer, ouroborosBin } from './lib/servers.mjs';
import { openPeerHarness } from './lib/browser.mjs';
import { cleanupAll, register, trackChild } from './lib/cleanup.mjs';

after(cleanupAll);

const TARGETS = (process.env.PEER_TARGETS ?? 'ouroboros,reference').split(',').filter(Boolean);
const EXAMPLES = process.env.OUROBOROS_EXAMPLES_DIR
  ? path.resolve(process.env.OUROBOROS_EXAMPLES_DIR)
  : path.join(path.dirname(ouroborosBin()), 'examples');
const MiB = 1024 * 1024;

/** The default harness page plus the MsgPack serializer bundle (an ES module). */
const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>peer interop</title>
<script src="/node_modules/peerjs/dist/peerjs.min.js"></script>
<script src="/lib/browser/peer-harness.js"></script>
<script type="module">
import { MsgPack } from '/node_modules/peerjs/dist/serializer.msgpack.mjs';
window.MsgPack = MsgPack;
window.harnessReady = typeof window.peerjs === 'object' && typeof window.H === 'object';
</script>
</head><body></body></html>`;

/** FNV-1a of the harness byte pattern `(i*31+7)&255` (as H.describe computes it in the page). */
function patternFnv(n) {
  let h = 0x811c9dc5;
  for (let i = 0; i < n; i++) {
    h ^= (i * 31 + 7) & 255;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h.toString(16);
}

/** SHA-256 of the `send --binary-size` pattern `i % 251`. */
function sendPatternSha(n) {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = i % 251;
  return createHash('sha256').update(b).digest('hex');
}

function serverArgs(srv) {
  const o = srv.peerOptions();
  return ['--host', o.host, '--port', String(o.port), '--path', o.path, '--key', o.key];
}

/** Starts examples/echo_peer and waits for `ready ID`. */
async function startEchoPeer(srv, id) {
  const child = spawn(path.join(EXAMPLES, 'echo_peer'), [...serverArgs(srv), '--id', id], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  trackChild(child);
  let stderr = '';
  child.stderr.on('data', (d) => {
    stderr = (stderr + d).slice(-65536);
  });
  const unregister = register(`echo_peer ${id}`, () => stop());
  const stop = async () => {
    unregister();
    if (child.exitCode === null) {
      child.kill('SIGTERM');
      await new Promise((res) => child.once('exit', res));
    }
  };
  const rl = readline.createInterface({ input: child.stdout });
  await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`echo_peer not ready in 20 s: ${stderr}`)), 20000);
    child.once('exit', (code) => reject(new Error(`echo_peer exited ${code}: ${stderr}`)));
    rl.on('line', (line) => {
      if (line === `ready ${id}`) {
        clearTimeout(t);
        resolve();
      }
    });
  });
  return { child, stop, stderr: () => stderr };
}

/** Runs examples/send; resolves with { code, lines, stderr, ms }. */
function runSend(srv, to, serialization, { message, count, binarySize, reliable = true } = {}) {
  const args = [...serverArgs(srv), '--to', to, '--serialization', serialization];
  if (message !== undefined) args.push('--message', JSON.stringify(message));
  if (count !== undefined) args.push('--count', String(count));
  if (binarySize !== undefined) args.push('--binary-size', String(binarySize));
  args.push('--reliable', String(reliable), '--timeout', '60');
  const t0 = Date.now();
  return new Promise((resolve) => {
    const child = spawn(path.join(EXAMPLES, 'send'), args, { stdio: ['ignore', 'pipe', 'pipe'] });
    trackChild(child);
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err = (err + d).slice(-65536)));
    child.once('exit', (code) =>
      resolve({ code, lines: out.split('\n').filter(Boolean).map((l) => JSON.parse(l)), stderr: err, ms: Date.now() - t0 }),
    );
  });
}

/**
 * Values per serialization for the browser → Rust echo, with the expected H.describe of the echo.
 * peerjs itself hands a reassembled (chunked, > 16300 bytes packed) BinaryPack binary to the app as a
 * Uint8Array and a single-frame one as an ArrayBuffer; MsgPack always gives Uint8Array.
 */
const json = (v) => ({ json: JSON.stringify(v) });
const bytes = (n, kind = 'ArrayBuffer') => ({ bytes: kind, byteLength: n, fnv: patternFnv(n) });
const OBJ = { a: 1, s: 'héllo ☃ 𝄞', list: [1, 2, 3], nested: { t: true, f: null }, neg: -33, big: 2 ** 40, pi: 3.25 };
const BROWSER_CASES = {
  binary: [[OBJ, json(OBJ)], ['x'.repeat(40000), json('x'.repeat(40000))], [42, json(42)], [{ $bytes: 4 }, bytes(4)], [{ $bytes: MiB }, bytes(MiB, 'Uint8Array')]],
  'binary-utf8': [[OBJ, json(OBJ)], ['ünïcödé', json('ünïcödé')], [{ $bytes: 70000 }, bytes(70000, 'Uint8Array')]],
  json: [[OBJ, json(OBJ)], ['plain', json('plain')], [[1, 'two', null], json([1, 'two', null])]],
  raw: [['text frame', json('text frame')], [{ $bytes: 1000 }, bytes(1000)], [{ $bytes: 262144 }, bytes(262144)]],
  MsgPack: [[OBJ, json(OBJ)], ['msgpack ☃', json('msgpack ☃')], [{ $bytes: 100000 }, bytes(100000, 'Uint8Array')], [{ $bytes: MiB }, bytes(MiB, 'Uint8Array')]],
};

for (const kind of TARGETS) {
  describe(`native Rust peer ↔ peerjs 1.5.5 in Chromium over the ${kind} server`, { timeout: 300000 }, () => {
    let srv;
    let h;
    let echo;
    const ECHO_ID = `rust-echo-${kind}`;
    const call = (fn, ...args) => h.page.evaluate(fn, args);

    before(async () => {
      srv = await startServer(kind, { path: '/interop', key: 'interopkey' });
      echo = await startEchoPeer(srv, ECHO_ID);
      h = await openPeerHarness({ pages: { '/': PAGE } });
      const opts = srv.peerOptions();
      const opened = await call(([o]) => H.open('B', null, { ...o, serializers: { MsgPack: window.MsgPack } }), opts);
      assert.ok(opened.ok, `browser peer open: ${JSON.stringify(opened)}`);
    });

    after(async () => {
      await h?.close();
      await echo?.stop();
      await srv?.stop();
    });

    for (const [serialization, cases] of Object.entries(BROWSER_CASES)) {
      for (const reliable of serialization === 'MsgPack' ? [true] : [true, false]) {
        test(`browser → Rust: ${serialization}, ${reliable ? 'ordered' : 'unordered'}`, { timeout: 60000 }, async () => {
          const label = `${serialization}-${reliable}`;
          const c = await call(([to, o]) => H.connect('B', to, o), ECHO_ID, { label, serialization, reliable });
          assert.ok(c.ok, `connect: ${JSON.stringify(c)}`);
          for (const [value, expected] of cases) {
            const r = await call(([l, v]) => H.roundTrip('B', l, v, 30000), label, value);
            assert.ok(r.ok, `round trip of ${JSON.stringify(value).slice(0, 60)}: ${JSON.stringify(r)}`);
            assert.deepEqual(r.value, expected);
          }
        });
      }
    }

    test('browser → Rust: 8 MiB binary (BinaryPack chunks) and 8 MiB MsgPack', { timeout: 120000 }, async () => {
      for (const serialization of ['binary', 'MsgPack']) {
        const label = `big-${serialization}`;
        const c = await call(([to, o]) => H.connect('B', to, o), ECHO_ID, { label, serialization, reliable: true });
        assert.ok(c.ok, `connect: ${JSON.stringify(c)}`);
        const r = await call(([l, v]) => H.roundTrip('B', l, v, 90000), label, { $bytes: 8 * MiB });
        assert.ok(r.ok, `8 MiB round trip: ${JSON.stringify(r)}`);
        assert.deepEqual(r.value, bytes(8 * MiB, 'Uint8Array'));
      }
    });

    test('browser → Rust: flushed close is honoured after the data', { timeout: 60000 }, async () => {
      for (const serialization of ['binary', 'json', 'MsgPack']) {
        const label = `flush-${serialization}`;
        const c = await call(([to, o]) => H.connect('B', to, o), ECHO_ID, { label, serialization, reliable: true });
        assert.ok(c.ok, `connect: ${JSON.stringify(c)}`);
        const r = await call(
          ([l]) =>
            new Promise((resolve) => {
              const conn = H.conns.get(`B:${l}`);
              let echoed = 0;
              conn.on('data', () => echoed++);
              const t = setTimeout(() => resolve({ closed: false, echoed }), 15000);
              conn.once('close', () => {
                clearTimeout(t);
                resolve({ closed: true, echoed, open: conn.open });
              });
              for (let i = 0; i < 20; i++) conn.send({ i, pad: 'p'.repeat(1000) });
              conn.close({ flush: true });
            }),
          label,
        );
        assert.equal(r.closed, true, `${serialization}: the browser saw no close (${JSON.stringify(r)})`);
        assert.equal(r.open, false);
      }
      // The Rust peer still accepts connections afterwards.
      const c = await call(([to, o]) => H.connect('B', to, o), ECHO_ID, { label: 'after-flush', serialization: 'json', reliable: true });
      assert.ok(c.ok);
      const r = await call(([l, v]) => H.roundTrip('B', l, v), 'after-flush', 'still here');
      assert.deepEqual(r.value, json('still here'));
    });

    test('Rust → browser: every serialization, ordered and unordered, and a flushed close', { timeout: 120000 }, async () => {
      await call(() => {
        H.echo('B');
        window.closedConns = [];
        H.peers.get('B').on('connection', (c) => c.on('close', () => window.closedConns.push(c.peer + ':' + c.label)));
        return true;
      });
      const message = { hello: 'wörld ☃', n: [1, 2.5, -3], ok: true, none: null };
      const runs = [
        ['binary', true], ['binary', false], ['binary-utf8', true], ['json', true], ['json', false],
        ['raw', true], ['raw', false], ['msgpack', true],
      ];
      for (const [serialization, reliable] of runs) {
        const r = await runSend(srv, await call(() => H.peers.get("B").id), serialization, { message, count: 3, reliable });
        assert.equal(r.code, 0, `send ${serialization}: ${r.stderr}`);
        // raw carries the JSON text as a string frame; the others carry the value itself.
        const got = serialization === 'raw' ? r.lines.map((l) => JSON.parse(l)) : r.lines;
        assert.deepEqual(got, [message, message, message], `${serialization} reliable=${reliable}`);
        assert.ok(r.ms < 15000, `send ${serialization} took ${r.ms} ms (the flushed close must not wait for its timeout)`);
      }
      const closed = await call(() => window.closedConns.length);
      assert.equal(closed, runs.length, 'every flushed close from Rust closed the browser connection');
    });

    test('Rust → browser: 1 MiB and 8 MiB binary', { timeout: 120000 }, async () => {
      const to = await call(() => H.peers.get('B').id);
      for (const [serialization, size] of [['binary', MiB], ['binary', 8 * MiB], ['msgpack', 8 * MiB], ['raw', 65536]]) {
        const r = await runSend(srv, to, serialization, { binarySize: size });
        assert.equal(r.code, 0, `send ${serialization} ${size}: ${r.stderr}`);
        assert.deepEqual(r.lines, [{ $bin_len: size, $sha256: sendPatternSha(size) }]);
      }
    });

    test('the echo peer stayed healthy', () => {
      assert.equal(echo.child.exitCode, null, echo.stderr());
    });
  });
}
