// The web chat on a replicated ring (`ouroboros node --replicas 3 --launcher local`, issue 16
// point 3), in headless Chromium with the real peerjs client: three people chat, two of them on
// the node that served their page (one over WebRTC, one over the relay WebSocket), the third
// on another node. The first two's node is killed with kill -9 while everyone keeps sending.
// Checked: both move to a live node on their own (the page's own origin is dead: the chat
// reads the record of another node its last record listed), within a bounded pause; every
// message sent by anyone is on every screen exactly once, in the same order, at seqs 1..N with
// no gap; each person's messages keep the order they were sent in; nothing stays pending.
//
// Run: cd tests/js && node --test chat-replicated.test.mjs (about 20 s), after
// `cargo build --bin ouroboros` (OUROBOROS_BIN or CARGO_TARGET_DIR name the binary).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { cleanupAll, register } from './lib/cleanup.mjs';
import { launchBrowser } from './lib/browser.mjs';
import { startStaticServer } from './lib/static-server.mjs';
import { REPO_DIR, startOuroboros } from './lib/servers.mjs';
import { say, stored } from './lib/chat-page.mjs';

const ARTIFACTS = path.join(REPO_DIR, 'tests', 'artifacts');
const CONSOLE_NOISE = [
  /Failed to load resource/, // the dead node's record, id and signaling requests
  /Lost connection to server/,
  /Could not connect to peer/,
  /WebSocket connection to .* failed/,
];

let site; // serves node_modules/peerjs (what --peerjs-url points at)
let ring; // { first (the server handle), nodes: [{ id, url, pid }], dataDir }

/** Pids of the processes whose parent is `ppid`, with their argv. */
async function childrenOf(ppid) {
  const out = [];
  for (const pid of await readdir('/proc').catch(() => [])) {
    if (!/^\d+$/.test(pid)) continue;
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => null);
    // pid (comm) state ppid ...: comm may hold spaces, so read after its closing parenthesis.
    if (!stat || Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) !== ppid) continue;
    const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0');
    out.push({ pid: Number(pid), argv });
  }
  return out;
}

/**
 * Starts a 3-node ring with one command and resolves once it printed `replicated ring of 3
 * members up` and every node's record lists the three nodes. Members 2 and 3 are the first
 * node's children; all three are SIGKILLed at cleanup (a first node killed with -9 cannot
 * stop its children, so the test does, by the pids it read while they were its children).
 */
async function startRing() {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'ouroboros-replicated-chat-'));
  const unregisterDir = register(`rm ${dataDir}`, () => rm(dataDir, { recursive: true, force: true }));
  const first = await startOuroboros({
    subcommand: 'node',
    extraArgs: [
      '--data-dir', dataDir,
      '--replicas', '3', '--launcher', 'local',
      '--replica-heartbeat', '300ms', '--replica-election-timeout', '1200ms', '--replica-write-timeout', '3s',
      '--peerjs-url', site.url('/node_modules/peerjs/dist/peerjs.min.js'),
    ],
  });
  const members = []; // pids of members 2 and 3
  // A pid is killed only while its command line still names this ring's data dir (no reuse).
  const ours = async (pid) => (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).includes(dataDir);
  // Running: neither gone nor a zombie waiting for its reaper.
  const running = async (pid) => {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => null);
    return stat !== null && !stat.slice(stat.lastIndexOf(')')).startsWith(') Z') && (await ours(pid));
  };
  const killAll = async () => {
    // Members not yet known (the ring failed to come up): the first node's children now.
    for (const c of await childrenOf(first.pid)) {
      if (!members.includes(c.pid) && c.argv.some((a) => a.includes(dataDir))) members.push(c.pid);
    }
    for (const pid of members) {
      if (await ours(pid)) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }
    await first.stop(0);
    // Bounded wait until none of them runs any more.
    const until = Date.now() + 10000;
    for (const pid of members) {
      while (await running(pid)) {
        if (Date.now() > until) throw new Error(`member pid ${pid} still runs after SIGKILL`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
  };
  const unregisterProcs = register('replicated ring processes', killAll);
  const deadline = Date.now() + 120000;
  let up;
  while (!(up = /^replicated ring of 3 members up: (.*)$/m.exec(first.output()))) {
    if (Date.now() > deadline) throw new Error(`the ring did not come up within 120 s:\n${first.output()}`);
    if (first.child.exitCode !== null) throw new Error(`the first node exited:\n${first.output()}`);
    await new Promise((resolve) => {
      const t = setTimeout(resolve, 1000);
      first.child.stdout.once('data', () => { clearTimeout(t); resolve(); });
    });
  }
  const urls = Object.fromEntries(up[1].trim().split(' ').map((kv) => kv.split('=')).map(([id, url]) => [Number(id), url]));
  const nodes = [{ id: 1, url: urls[1], pid: first.pid }];
  for (const c of await childrenOf(first.pid)) {
    const i = c.argv.indexOf('--replica-id');
    if (i < 0 || !c.argv.includes(dataDir + `/member-${c.argv[i + 1]}`)) continue;
    const id = Number(c.argv[i + 1]);
    nodes.push({ id, url: urls[id], pid: c.pid });
    members.push(c.pid);
  }
  nodes.sort((a, b) => a.id - b.id);
  assert.deepEqual(nodes.map((n) => n.id), [1, 2, 3], `the first node's children: ${JSON.stringify(nodes)}`);
  // Every record lists the three nodes (the membership reaches the records shortly after the joins).
  for (const n of nodes) {
    for (;;) {
      const rec = await (await fetch(`${n.url}/ouroboros.json`)).json();
      if (Array.isArray(rec.replicas) && rec.replicas.length === 3) {
        n.peerId = rec.peer_id;
        n.relayWs = rec.relay_ws;
        break;
      }
      if (Date.now() > deadline) throw new Error(`${n.url}'s record never listed 3 nodes: ${JSON.stringify(rec)}`);
      await new Promise((resolve) => setTimeout(resolve, 100)); // bounded poll: no event to await
    }
  }
  return {
    first,
    nodes,
    dataDir,
    async stop() {
      await killAll();
      unregisterProcs();
      await rm(dataDir, { recursive: true, force: true });
      unregisterDir();
    },
  };
}

before(async () => {
  await mkdir(ARTIFACTS, { recursive: true });
  site = await startStaticServer({ pages: {} });
  ring = await startRing();
});
after(async () => {
  if (ring) await ring.stop();
  await cleanupAll();
});

/**
 * Records every change of the connection indicator (`body[data-conn]`) with its time, and
 * when the first stored message beyond the current ones shows.
 */
function watchConn(page) {
  return page.evaluate(() => {
    window.connLog = [{ conn: document.body.dataset.conn, t: Date.now() }];
    new MutationObserver(() => window.connLog.push({ conn: document.body.dataset.conn, t: Date.now() }))
      .observe(document.body, { attributes: true, attributeFilter: ['data-conn'] });
    const count = () => document.querySelectorAll('#message-list li[data-seq]:not(.pending)').length;
    const before = count();
    const list = new MutationObserver(() => {
      if (count() > before) { window.firstNewAt = Date.now(); list.disconnect(); }
    });
    list.observe(document.getElementById('message-list'), { childList: true, subtree: true, attributes: true });
  });
}

test('a node dies under two of three people: they move to a live node, every message once, in order, no gaps', async () => {
  // The first node dies (it bootstrapped the ring and, unless an election moved it, leads it:
  // Bea's publishes then wait for a new leader too); the third stays.
  const [lost, , other] = ring.nodes;
  const ab = await launchBrowser({ origin: lost.url });
  const bb = await launchBrowser({ origin: other.url });
  const open = async (browser, node, query) => {
    const page = await browser.newPage(`${node.url}/?ice=none&room=rr&${query}`, { waitReady: false });
    await page.waitForFunction(() => document.body.dataset.conn === 'live', null, { timeout: 20000 });
    return page;
  };
  // Ann (WebRTC) and Cem (relay WebSocket) on the node that will die, Bea on another node.
  const a = await open(ab, lost, 'name=ann&transport=webrtc');
  const c = await open(ab, lost, 'name=cem&transport=ws');
  const b = await open(bb, other, 'name=bea');
  assert.equal(await a.evaluate(() => document.body.dataset.transport), 'webrtc');
  assert.equal(await c.evaluate(() => document.body.dataset.transport), 'ws');
  for (const [p, n] of [[a, lost], [c, lost], [b, other]]) {
    assert.equal(await p.evaluate(() => window.ouroboros.record.peer_id), n.peerId, 'on the node that served the page');
  }
  const people = [[a, 'ann'], [b, 'bea'], [c, 'cem']];
  const sent = [];
  const talk = async (round) => {
    for (const [p, name] of people) {
      const text = `${name} ${round}`;
      await say(p, text);
      sent.push(text);
      await p.waitForTimeout(150); // the pace of people typing, not synchronisation
    }
  };
  for (let r = 1; r <= 3; r++) await talk(`before ${r}`);
  for (const p of [a, b, c]) {
    await p.waitForFunction((n) => document.querySelectorAll('#message-list li[data-seq]:not(.pending)').length === n, sent.length, { timeout: 15000 });
    await watchConn(p);
  }

  // kill -9 the node that served Ann's and Cem's pages; everyone keeps talking.
  const killedAt = Date.now();
  ring.first.child.kill('SIGKILL');
  for (let r = 1; r <= 4; r++) await talk(`after ${r}`);

  for (const p of [a, b, c]) {
    await p.waitForFunction(
      (n) => document.body.dataset.conn === 'live' && !document.querySelector('#message-list li.pending')
        && document.querySelectorAll('#message-list li[data-seq]').length >= n,
      sent.length,
      { timeout: 30000 },
    );
  }
  const settledMs = Date.now() - killedAt;

  // Ann and Cem moved to a live node, after a short "reconnecting"; Bea never noticed.
  const pauses = {};
  for (const [p, name] of [[a, 'ann'], [c, 'cem']]) {
    const { node, relayWs, log } = await p.evaluate(() => ({ node: window.ouroboros.node, relayWs: window.ouroboros.record.relay_ws, log: window.connLog }));
    assert.notEqual(node, lost.peerId, `${name} is on another node`);
    assert.ok(ring.nodes.slice(1).some((n) => n.peerId === node && n.relayWs === relayWs), `${name} is on a live node of the ring (${node})`);
    const down = log.find((e) => e.conn !== 'live');
    const back = down && log.find((e) => e.t >= down.t && e.conn === 'live');
    assert.ok(down && back, `${name} went through reconnecting and back to live: ${JSON.stringify(log)}`);
    assert.ok(log.every((e) => e.conn !== 'offline'), `${name} never showed "offline": ${JSON.stringify(log)}`);
    pauses[name] = { noticedMs: down.t - killedAt, liveAgainMs: back.t - killedAt, pauseMs: back.t - down.t };
    assert.ok(back.t - killedAt < 10000, `${name} live again within 10 s of the kill (${back.t - killedAt} ms)`);
  }
  assert.ok((await b.evaluate(() => window.connLog)).every((e) => e.conn === 'live'), 'Bea stayed live');
  // The ring itself needs a new leader before anything commits (election, then the publish
  // in flight at the kill answered `unavailable` after --replica-write-timeout and re-sent).
  const firstNew = {};
  for (const [p, name] of people) firstNew[name] = (await p.evaluate(() => window.firstNewAt)) - killedAt;
  console.log(`failover of the web chat: ${JSON.stringify(pauses)}; first message stored after the kill shown at (ms) ${JSON.stringify(firstNew)}; every page settled ${settledMs} ms after the kill`);

  const seen = { ann: await stored(a), bea: await stored(b), cem: await stored(c) };
  assert.deepEqual(seen.ann.map((m) => m.seq), sent.map((_, k) => k + 1), 'seqs 1..N, no gap, no duplicate');
  assert.deepEqual(seen.bea, seen.ann, 'Bea sees what Ann sees, in the same order');
  assert.deepEqual(seen.cem, seen.ann, 'Cem sees what Ann sees, in the same order');
  assert.deepEqual([...seen.ann.map((m) => m.body)].sort(), [...sent].sort(), 'every message sent, exactly once');
  for (const [, name] of people) {
    const mine = sent.filter((t) => t.startsWith(`${name} `));
    assert.deepEqual(seen.ann.filter((m) => m.from === name).map((m) => m.body), mine, `${name}'s messages in the order sent`);
  }
  await a.screenshot({ path: path.join(ARTIFACTS, 'chat-replicated-after-kill.png') });
  ab.assertNoConsoleErrors(CONSOLE_NOISE);
  bb.assertNoConsoleErrors(CONSOLE_NOISE);
  await ab.close();
  await bb.close();
});
