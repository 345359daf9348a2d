// A local ring rotating at least ten times while four clients publish continuously into one room:
// three peerjs 1.5.5 browser clients in headless Chromium (protocol/relay.md's browser snippet, verbatim;
// one `json`, one `binary`, one that cannot do WebRTC and falls back to the relay WebSocket) and one
// Rust program (`examples/publish.rs`, stdin lines -> acks on stdout).
// At the end every client is on the newest generation (what its own welcome said), and a reader's
// paged history holds every acknowledged message of every client exactly once, at its acked seq, in
// order, with dense seqs; the browsers' delivered streams have no gap and no repeat.
//
// Then a crash without `moved`: the snippet client's node is killed with SIGKILL, a successor recovers
// from the newest backup, and the client finds it through its `discover` function (the discovery
// record), is welcomed with the gap notice and gets every later publish (and the ones pending at the
// crash) acknowledged.
//
// Run: cd tests/js && node --test ring.test.mjs (about 50 s), after `cargo build --bin ouroboros --example publish`.
// Env: OUROBOROS_BIN / CARGO_TARGET_DIR (the binary, see lib/servers.mjs), OUROBOROS_EXAMPLES_DIR (else the
// example is looked up next to the binary, in examples/), CHROMIUM.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { cleanupAll, register, trackChild } from './lib/cleanup.mjs';
import { launchBrowser } from './lib/browser.mjs';
import { startStaticServer } from './lib/static-server.mjs';
import { ouroborosBin, startOuroboros } from './lib/servers.mjs';
import { startNode, installRelayClients, openClient, send, take, closeClient } from './lib/relay-page.mjs';
import { snippetSource, startSnippetClient, stopSnippetClient, snippetState } from './lib/relay-snippet.mjs';

after(cleanupAll);

const ROTATIONS = 10;
const ROOM = 'ring';
const BROWSER_CLIENTS = [
  { name: 'web-json', serialization: 'json' },
  { name: 'web-binary', serialization: 'binary' },
  // WebRTC impossible (relay-only ICE and no TURN server: no candidate at all, as on a network
  // without UDP to the node): the snippet's `auto` falls back to the relay WebSocket.
  { name: 'web-ws', serialization: 'json', noUdp: true },
];
const RUST_CLIENT = 'rust-pipe';

const delay = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function publishBin() {
  const dir = process.env.OUROBOROS_EXAMPLES_DIR
    ? path.resolve(process.env.OUROBOROS_EXAMPLES_DIR)
    : path.join(path.dirname(ouroborosBin()), 'examples');
  return path.join(dir, 'publish');
}

/**
 * Runs `examples/publish` against the discovery file: writes line n+1 once line n is acknowledged
 * (20 ms later: a steady pace, not synchronisation) until stop(); records its JSON output.
 */
function startRustPublisher(discovery) {
  const bin = publishBin();
  if (!existsSync(bin)) throw new Error(`${bin} missing: run \`cargo build --example publish\``);
  const child = spawn(bin, ['--discovery', discovery, '--room', ROOM, '--name', RUST_CLIENT], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn,rtc=error,rtc_ice=error,webrtc=error' },
  });
  trackChild(child);
  const unregister = register('publish example', () => child.kill('SIGKILL'));
  const st = { acks: [], lives: [], refused: [], written: 0, stderr: '', stopped: false };
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d) => { st.stderr = (st.stderr + d).slice(-20000); });
  const writeNext = () => {
    if (st.stopped) return;
    st.written += 1;
    child.stdin.write(`rust ${st.written}\n`);
  };
  let buf = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (d) => {
    buf += d;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      const ev = JSON.parse(line);
      if (ev.event === 'live') st.lives.push(ev);
      else if (ev.event === 'refused') st.refused.push(ev);
      else if (ev.event === 'ack') {
        st.acks.push(ev);
        if (ev.line === st.written) setTimeout(writeNext, 20);
      }
    }
  });
  writeNext();
  return {
    child,
    st,
    exited,
    /** Stops writing; resolves once the last written line is acknowledged (or the program ended). */
    async stop(timeoutMs) {
      st.stopped = true;
      const deadline = Date.now() + timeoutMs;
      while (st.acks.at(-1)?.line !== st.written && child.exitCode === null) {
        if (Date.now() > deadline) throw new Error(`rust client: line ${st.written} not acknowledged within ${timeoutMs} ms\n${st.stderr}`);
        await delay(100);
      }
    },
    /** Closes stdin and waits for the program to exit. */
    async finish(timeoutMs) {
      child.stdin.end();
      let timer;
      const res = await Promise.race([exited, new Promise((resolve) => { timer = setTimeout(resolve, timeoutMs, null); })]);
      clearTimeout(timer);
      unregister();
      if (!res) {
        child.kill('SIGKILL');
        throw new Error(`rust client did not exit within ${timeoutMs} ms\n${st.stderr}`);
      }
      return res;
    },
  };
}

/** Pids of the processes started with `--data-dir <dir>`: the nodes of this test's ring. */
async function ringPids(dir) {
  const pids = [];
  for (const pid of await readdir('/proc').catch(() => [])) {
    if (!/^\d+$/.test(pid)) continue;
    const raw = await readFile(`/proc/${pid}/cmdline`).catch(() => null);
    if (!raw) continue;
    const argv = raw.toString('utf8').split('\0');
    const k = argv.indexOf('--data-dir');
    if ((k >= 0 && argv[k + 1] === dir) || argv.includes(`--data-dir=${dir}`)) pids.push(Number(pid));
  }
  return pids;
}

/** `gens` (the generations of a client's welcomes, in order) start by `g0` and hold every one up to `newest`. */
function assertFollowedEveryRotation(name, gens, g0, newest) {
  assert.ok(gens.length > 0 && gens[0] <= g0, `${name} was on generation ${g0} or earlier when the rotations began (${gens})`);
  for (let g = gens[0]; g <= newest; g++) assert.ok(gens.includes(g), `${name} was welcomed by generation ${g} (${gens})`);
  for (let k = 1; k < gens.length; k++) assert.ok(gens[k] >= gens[k - 1], `${name}: welcomes never go back (${gens})`);
}

test(`a local ring rotates ${ROTATIONS} times while three browser clients (json, binary, one falling back to the WebSocket) and a Rust client publish: every acked message once, in order; everyone on the newest node`, { timeout: 240000 }, async () => {
  const site = await startStaticServer();
  const ring = await startNode({
    extraArgs: [
      '--launcher', 'local', '--lifetime', '6s', '--handoff-lead', '3s',
      '--deadline-margin', '500ms', '--drain-timeout', '1s',
    ],
    env: { RUST_LOG: 'info,rtc=error,rtc_ice=error,webrtc=error' },
  });
  const recordPath = path.join(ring.dataDir, 'ouroboros.json');
  const readRecord = async () => {
    try {
      return JSON.parse(await readFile(recordPath, 'utf8'));
    } catch {
      return null; // being replaced (atomic rename) or not there yet
    }
  };
  let lastGen = 0;
  const generation = async () => {
    const r = await readRecord();
    if (r && Number.isInteger(r.generation)) lastGen = Math.max(lastGen, r.generation);
    return lastGen;
  };
  const newestPid = async () => Number((await readFile(path.join(ring.dataDir, 'ouroboros.pid'), 'utf8').catch(() => '')).trim());
  const stopRing = async () => {
    // SIGINT on the newest generation (its pid is in the data dir) stops the ring; whatever of
    // this ring still runs after that is killed (the test's own processes, found by --data-dir).
    const pid = await newestPid();
    if (pid && pid !== ring.pid) {
      try {
        process.kill(pid, 'SIGINT');
      } catch {
        // already gone
      }
    }
    const gone = Date.now() + 15000;
    while ((await ringPids(ring.dataDir)).length && Date.now() < gone) await delay(100);
    for (const p of await ringPids(ring.dataDir)) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        // exited meanwhile
      }
    }
  };
  const unregisterRing = register('local ring', stopRing);
  const started = Date.now();
  const browser = await launchBrowser({ origin: site.origin });
  let rust;
  try {
    // --- clients -------------------------------------------------------------------------------
    const src = await snippetSource();
    const pages = {};
    for (const c of BROWSER_CLIENTS) {
      pages[c.name] = await browser.newPage(site.url('/'));
      const peerOptions = ring.peerOptions();
      if (c.noUdp) peerOptions.config = { iceServers: [], iceTransportPolicy: 'relay' };
      await startSnippetClient(pages[c.name], {
        src,
        name: c.name,
        serialization: c.serialization,
        peerOptions,
        nodeId: ring.peerId,
        room: ROOM,
        everyMs: 40,
        ...(c.noUdp ? { fallbackMs: 1000 } : {}),
      });
    }
    rust = startRustPublisher(recordPath);

    // --- every client publishing; then let the ring rotate ROTATIONS times ---------------------
    const publishing = async () => {
      for (const c of BROWSER_CLIENTS) {
        if (Object.keys((await snippetState(pages[c.name], c.name)).acks).length === 0) return false;
      }
      return rust.st.acks.length > 0;
    };
    const firstAckDeadline = Date.now() + 30000;
    while (!(await publishing())) {
      if (Date.now() >= firstAckDeadline) {
        const seen = {};
        for (const c of BROWSER_CLIENTS) {
          const st = await snippetState(pages[c.name], c.name);
          seen[c.name] = { acks: Object.keys(st.acks).length, welcomes: st.welcomes, errors: st.errors };
        }
        assert.fail(`every client got its first ack within 30 s: ${JSON.stringify(seen)}; rust: ${rust.st.acks.length} acks`);
      }
      await delay(100);
    }
    // Acks come from primaries only, and a primary is in the record before it acks anything.
    const g0 = await generation();
    const rotationsFrom = Date.now();
    const rotateDeadline = Date.now() + 180000;
    while ((await generation()) < g0 + ROTATIONS) {
      assert.ok(Date.now() < rotateDeadline, `ring stuck at generation ${lastGen}`);
      assert.deepEqual(rust.st.refused, [], 'rust client: no line refused');
      assert.equal(rust.child.exitCode, null, `rust client exited early\n${rust.st.stderr}`);
      await delay(200);
    }
    const rotatedAt = Date.now();

    // --- stop publishing; everything sent gets acknowledged -----------------------------------
    for (const c of BROWSER_CLIENTS) await stopSnippetClient(pages[c.name], c.name);
    await rust.stop(30000);
    for (const c of BROWSER_CLIENTS) {
      await pages[c.name].waitForFunction(
        (name) => {
          const o = window.snippetClients[name];
          return o.published.every((id) => id in o.acks);
        },
        c.name,
        { timeout: 30000, polling: 100 },
      ).catch(async (err) => {
        const s = await snippetState(pages[c.name], c.name);
        const unacked = s.published.filter((id) => !(id in s.acks));
        throw new Error(`${c.name}: ${unacked.length} of ${s.published.length} publishes never acknowledged ` +
          `(first: #${s.published.indexOf(unacked[0]) + 1}); welcomes ${JSON.stringify(s.welcomes.map((w) => w.generation))}; ${err.message}`);
      });
    }

    // --- every client on the newest generation (its own welcome says so) -------------------
    const browserGen = async (name) => (await snippetState(pages[name], name)).welcomes.at(-1)?.generation;
    const onNewest = async () => {
      const g = await generation();
      const gens = { [RUST_CLIENT]: rust.st.lives.at(-1)?.generation };
      for (const c of BROWSER_CLIENTS) gens[c.name] = await browserGen(c.name);
      const ok = Object.values(gens).every((x) => x === g) && (await generation()) === g;
      return { ok, g, gens };
    };
    let check;
    const newestDeadline = Date.now() + 30000;
    while (!(check = await onNewest()).ok) {
      assert.ok(Date.now() < newestDeadline, `clients not on the newest generation ${check.g}: ${JSON.stringify(check.gens)}`);
      await delay(100);
    }
    const newest = check.g;

    // --- the Rust program ends cleanly -------------------------------------------------------
    const rustExit = await rust.finish(30000);
    assert.deepEqual(rustExit, { code: 0, signal: null }, `publish example exit\n${rust.st.stderr}`);

    // --- a reader pages through the room on the newest node -----------------------------------
    // Read right after a rotation (a node serves ~3 s before its own handoff starts); if the node
    // moves mid-read anyway, read again from the next one.
    const readerPage = await browser.newPage(site.url('/'));
    await installRelayClients(readerPage);
    let history;
    for (let attempt = 0; attempt < 4 && !history; attempt++) {
      const g0 = await generation();
      const freshDeadline = Date.now() + 20000;
      while ((await generation()) === g0) {
        assert.ok(Date.now() < freshDeadline, `no rotation after generation ${g0}`);
        await delay(50);
      }
      const rec = await readRecord();
      const ep = rec.signaling[0];
      const name = `reader-${attempt}`;
      await openClient(readerPage, name, null, {
        nodeId: rec.peer_id,
        peerOptions: { host: ep.host, port: ep.port, path: ep.path, key: ep.key, secure: ep.secure, config: { iceServers: [] } },
      });
      const welcome = await take(readerPage, name, (m) => m.op === 'welcome', 10000);
      assert.equal(welcome.generation, rec.generation);
      const messages = [];
      let before;
      let moved = false;
      for (;;) {
        await send(readerPage, name, before === undefined ? { op: 'history', room: 'ring', limit: 500 } : { op: 'history', room: 'ring', limit: 500, before });
        const page = await take(readerPage, name, (m) => m.op === 'history' || m.op === 'moved' || m.__closed, 10000);
        if (page.op !== 'history') {
          moved = true;
          break;
        }
        assert.equal(page.evicted_before, undefined, 'nothing evicted');
        if (page.messages.length === 0) break;
        messages.push(...page.messages);
        before = page.messages.at(-1).seq;
      }
      await closeClient(readerPage, name);
      if (!moved) history = messages;
    }
    assert.ok(history, 'the reader got the whole history from one node');

    // --- assertions --------------------------------------------------------------------------
    const acked = []; // [seq, from, id]
    const perClient = {};
    for (const c of BROWSER_CLIENTS) {
      const s = await snippetState(pages[c.name], c.name);
      perClient[c.name] = s;
      assert.deepEqual(s.ackConflicts, [], `${c.name}: an id acknowledged under two seqs`);
      assert.ok(s.published.length >= 100, `${c.name} published through the rotations (${s.published.length})`);
      const seqs = s.published.map((id) => s.acks[id]);
      for (const id of s.published) acked.push([s.acks[id], c.name, id]);
      for (let k = 1; k < seqs.length; k++) assert.ok(seqs[k] > seqs[k - 1], `${c.name}: publish ${k} acked at ${seqs[k]} after ${seqs[k - 1]}`);
      assertFollowedEveryRotation(c.name, s.welcomes.map((w) => w.generation), g0, newest);
      assert.ok(s.moved.length >= ROTATIONS, `${c.name} followed ${s.moved.length} moves`);
      const paths = [...new Set(s.welcomes.map((w) => w.transport))];
      assert.deepEqual(paths, [c.noUdp ? 'ws' : 'webrtc'], `${c.name}: every welcome came over ${c.noUdp ? 'the WebSocket' : 'WebRTC'}`);
    }
    const rs = rust.st;
    assert.deepEqual(rs.refused, []);
    assert.ok(rs.acks.length >= 50, `rust client published through the rotations (${rs.acks.length})`);
    assert.deepEqual(rs.acks.map((a) => a.line), rs.acks.map((_, k) => k + 1), 'rust: every line acknowledged once, in order');
    for (let k = 1; k < rs.acks.length; k++) assert.ok(rs.acks[k].seq > rs.acks[k - 1].seq, `rust: line ${k + 1} acked at ${rs.acks[k].seq}`);
    for (const a of rs.acks) acked.push([a.seq, RUST_CLIENT, a.id]);
    assertFollowedEveryRotation(RUST_CLIENT, rs.lives.map((l) => l.generation), g0, newest);

    const stored = history.map((m) => [m.seq, m.from, m.id]).reverse(); // history is newest first
    acked.sort((a, b) => a[0] - b[0]);
    assert.deepEqual(stored.map((m) => m[0]), stored.map((_, k) => k + 1), `dense seqs 1..n across ${newest} generations`);
    assert.equal(stored.length, acked.length, 'the room holds exactly the acknowledged messages');
    assert.deepEqual(stored, acked, 'every acknowledged message once, at its acked seq, in order');
    for (const m of history) {
      const want = m.from === RUST_CLIENT ? `rust ${m.id.split('-').at(-1)}` : `${m.from} ${perClient[m.from].published.indexOf(m.id) + 1}`;
      assert.equal(m.body, want, `body of seq ${m.seq}`);
    }

    // The browsers' own delivered streams: from their first message on, every seq once, no gap.
    const head = stored.length;
    for (const c of BROWSER_CLIENTS) {
      await pages[c.name].waitForFunction(
        ([name, head]) => window.snippetClients[name].msgs.at(-1)?.seq === head,
        [c.name, head],
        { timeout: 15000, polling: 100 },
      );
      const { msgs } = await snippetState(pages[c.name], c.name);
      const first = msgs[0].seq;
      const ownFirst = Math.min(...Object.values(perClient[c.name].acks));
      assert.ok(first <= ownFirst, `${c.name} joined before its first publish (first delivered ${first}, first own ${ownFirst})`);
      assert.deepEqual(msgs.map((m) => m.seq), Array.from({ length: head - first + 1 }, (_, k) => first + k), `${c.name}: every message delivered once, no gap`);
      assert.deepEqual(msgs.map((m) => m.id), stored.slice(first - 1).map((m) => m[2]), `${c.name}: delivered the stored messages`);
    }
    console.log(`ring: generations ${g0}..${newest}, ${ROTATIONS} rotations in ${((rotatedAt - rotationsFrom) / 1000).toFixed(1)} s; ` +
      `${stored.length} messages (${BROWSER_CLIENTS.map((c) => `${c.name} ${perClient[c.name].published.length}`).join(', ')}, ${RUST_CLIENT} ${rs.acks.length}); ` +
      `read_only answers to browsers: ${BROWSER_CLIENTS.map((c) => perClient[c.name].errors.filter((e) => e === 'read_only').length).join(', ')}; ` +
      `total ${((Date.now() - started) / 1000).toFixed(1)} s`);
    browser.assertNoConsoleErrors([/Failed to load resource/, /Lost connection to server/, /Could not connect to peer/]);

    // --- Ctrl-C on the newest generation stops the ring, even while its successor starts --------
    // (a successor left running would give up on its predecessor after a while, recover and publish
    // itself as the next generation).
    let stopped;
    const stopDeadline = Date.now() + 20000;
    while (!stopped) {
      assert.ok(Date.now() < stopDeadline, 'saw no node launching its successor');
      const rec = await readRecord();
      const ep = rec?.signaling?.[0];
      const st = ep && (await fetch(`http://${ep.host}:${ep.port}/status.json`).then((r) => r.json()).catch(() => null));
      const pid = await newestPid();
      if (st && st.generation === rec.generation && ['launching', 'awaiting-successor'].includes(st.lifecycle) && pid) {
        process.kill(pid, 'SIGINT');
        stopped = { rec, lifecycle: st.lifecycle };
      } else {
        await delay(50);
      }
    }
    const goneDeadline = Date.now() + 20000;
    let left;
    while ((left = await ringPids(ring.dataDir)).length) {
      assert.ok(Date.now() < goneDeadline, `ring processes still running after Ctrl-C (${stopped.lifecycle}): ${left}`);
      await delay(100);
    }
    const last = await readRecord();
    assert.deepEqual([last.generation, last.peer_id], [stopped.rec.generation, stopped.rec.peer_id], 'no successor took over after the stop');
  } finally {
    await browser.close();
    await stopRing();
    unregisterRing();
    await ring.stop();
    await site.close();
  }
});

test('a browser client whose node dies without `moved` looks it up again in discovery and resumes on the recovered successor', { timeout: 120000 }, async () => {
  const env = { OUROBOROS_SECRET: 'a ring secret for the crash test', RUST_LOG: 'info,rtc=error,rtc_ice=error,webrtc=error' };
  const backups = await mkdtemp(path.join(os.tmpdir(), 'ouroboros-backups-'));
  const unregisterBackups = register(`rm ${backups}`, () => rm(backups, { recursive: true, force: true }));
  const old = await startNode({ extraArgs: ['--backup-dir', backups, '--backup-interval', '200ms'], env });
  const recordPath = path.join(old.dataDir, 'ouroboros.json');
  const site = await startStaticServer();
  const browser = await launchBrowser({ origin: site.origin });
  const name = 'web-crash';
  let successor;
  try {
    const page = await browser.newPage(site.url('/'));
    await startSnippetClient(page, {
      src: await snippetSource(),
      name,
      peerOptions: old.peerOptions(),
      nodeId: old.peerId,
      room: ROOM,
      everyMs: 40,
      discover: async () => JSON.parse(await readFile(recordPath, 'utf8')),
    });
    await page.waitForFunction((name) => Object.keys(window.snippetClients[name].acks).length >= 10, name, { timeout: 30000, polling: 100 });

    // kill -9: no `moved`, the client only sees its connection die.
    process.kill(old.pid, 'SIGKILL');
    const killedAt = (await snippetState(page, name)).published.length;
    successor = await startOuroboros({
      subcommand: 'node',
      extraArgs: [
        '--data-dir', old.dataDir, '--backup-dir', backups, '--backup-interval', '200ms',
        '--generation', '1', '--predecessor-peer-id', old.peerId,
        '--predecessor-endpoints', JSON.stringify(old.record.signaling),
        '--handoff-give-up-after', '2s',
      ],
      env,
    });

    // The client finds generation 1 through the record, is welcomed with the gap notice, and
    // everything it publishes from then on is acknowledged — including what was pending at the crash.
    await page.waitForFunction((name) => window.snippetClients[name].welcomes.some((w) => w.generation === 1), name, { timeout: 60000, polling: 100 })
      .catch(async (err) => {
        throw new Error(`no welcome from the successor: ${JSON.stringify((await snippetState(page, name)).welcomes)}; ${err.message}\n${successor.output()}`);
      });
    const ackedAtWelcome = Object.keys((await snippetState(page, name)).acks).length;
    await page.waitForFunction(([name, n]) => Object.keys(window.snippetClients[name].acks).length >= n + 10, [name, ackedAtWelcome], { timeout: 30000, polling: 100 });
    await stopSnippetClient(page, name);
    await page.waitForFunction(
      (name) => {
        const o = window.snippetClients[name];
        return o.published.every((id) => id in o.acks);
      },
      name,
      { timeout: 30000, polling: 100 },
    ).catch(async (err) => {
      const s = await snippetState(page, name);
      throw new Error(`${s.published.filter((id) => !(id in s.acks)).length} of ${s.published.length} publishes never acknowledged; ${err.message}`);
    });
    const s = await snippetState(page, name);
    const welcome = s.welcomes.at(-1);
    assert.equal(welcome.generation, 1, 'the client ends on the successor');
    assert.equal(welcome.gap?.reason, 'predecessor_lost', `the successor announces the gap: ${JSON.stringify(welcome.gap)}`);
    assert.deepEqual(s.ackConflicts, [], 'no publish acknowledged under two seqs');
    assert.ok(s.published.length > killedAt, 'it kept publishing after the crash');
    // Its own messages after the reconnection reach it from the successor, in order.
    const seqs = s.msgs.map((m) => m.seq);
    assert.deepEqual(seqs, [...seqs].sort((x, y) => x - y), 'delivered in seq order');
    const lastAcked = Math.max(...Object.values(s.acks));
    assert.equal(seqs.at(-1), lastAcked, 'the newest delivered message is its own last publish');
    console.log(`crash: ${killedAt} published before kill -9, ${s.published.length} in all; reconnected to generation 1 ` +
      `(welcomes ${JSON.stringify(s.welcomes.map((w) => w.generation))}), gap ${JSON.stringify(welcome.gap.skipped ?? welcome.gap.rooms ?? {})}`);
  } finally {
    await browser.close();
    await successor?.stop();
    await old.stop();
    await site.close();
    await rm(backups, { recursive: true, force: true });
    unregisterBackups();
  }
});
