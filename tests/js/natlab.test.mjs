// The NAT lab matrix (scripts/natlab): real NATs in network namespaces, Debian's coturn, the node on a
// "runner" NAT reached through its TCP port forward (the tunnel) for signaling and through STUN/TURN for
// WebRTC. Each test is one row of the matrix; the candidate types used are asserted from Chromium's
// getStats() and from the node's "ICE candidate pair selected" log line.
//
// Needs root (or sudo -n) and `ip netns`; otherwise every test is reported as SKIPPED with the reason
// (never a silent pass). Run: cd tests/js && node --test natlab.test.mjs (or scripts/natlab test), after
// `cargo build --bins --examples`.
//
// Adding a row: a new test() below that starts its programs with lab.startNode(host, …) / lab.spawn(host,
// …) / lab.browser(host, origin) (lib/natlab.mjs), and asserts what arrived and which candidate types
// carried it (pairFromLog / selectedPair). A new network is a line in scripts/natlab's ROWS.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { cleanupAll } from './lib/cleanup.mjs';
import { labSkipReason, labUp, examplesDir } from './lib/natlab.mjs';
import { ouroborosBin } from './lib/servers.mjs';

const SKIP = labSkipReason();
if (SKIP) console.log(`SKIPPED: NAT lab tests: ${SKIP}`);
const opts = (timeout) => (SKIP ? { skip: `SKIPPED: ${SKIP}` } : { timeout });

let lab;
before(async () => {
  if (!SKIP) lab = await labUp();
});
after(cleanupAll);

/** The node's "ICE candidate pair selected" lines: [{ peer, local, remote }] (types and addresses). */
function pairsFromLog(text) {
  const plain = text.replace(/\x1b\[[0-9;]*m/g, '');
  const out = [];
  for (const line of plain.split('\n')) {
    if (!line.includes('ICE candidate pair selected')) continue;
    const get = (k) => (new RegExp(`${k}=(\\S+(?: \\S+)?)`).exec(line) || [])[1];
    const peer = (/peer=(\S+)/.exec(line) || [])[1];
    const local = /local=(\w+) (\S+)/.exec(line);
    const remote = /remote=(\w+) (\S+)/.exec(line);
    out.push({ peer, local: local && { type: local[1], addr: local[2] }, remote: remote && { type: remote[1], addr: remote[2] }, raw: get('connection_id') });
  }
  return out;
}

/** Waits until the node logged a selected pair for `peer` (a client id, or any when null). */
async function nodePair(node, peer = null, ms = 10000) {
  const until = Date.now() + ms;
  for (;;) {
    const p = pairsFromLog(node.stderr()).filter((x) => !peer || x.peer === peer);
    if (p.length) return p[p.length - 1];
    if (Date.now() > until) throw new Error(`no "ICE candidate pair selected" for ${peer ?? 'any peer'} in the node's log`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * In a page that has peerjs loaded: opens a Peer on the node's signaling server with `iceServers`,
 * connects to the node, joins `room`, publishes `text`, and returns the time to open, the ack, and the
 * selected candidate pair from getStats().
 */
async function peerjsRound(page, { host, port, nodeId, iceServers, room, text }) {
  return page.evaluate(async ({ host, port, nodeId, iceServers, room, text }) => {
    const t0 = performance.now();
    const peer = new window.peerjs.Peer({ host, port, path: '/', key: 'peerjs', secure: false, debug: 0, config: { iceServers } });
    const myId = await new Promise((resolve, reject) => { peer.once('open', resolve); peer.once('error', (e) => reject(new Error(`peer: ${e.type}`))); });
    const conn = peer.connect(nodeId, { serialization: 'json', reliable: true, metadata: { protocol: 'ouroboros/1', client: 'lab-probe' } });
    await new Promise((resolve, reject) => {
      conn.once('open', resolve);
      conn.once('error', (e) => reject(new Error(`conn: ${e.type ?? e}`)));
      setTimeout(() => reject(new Error('DataConnection did not open in 20 s')), 20000);
    });
    const openMs = performance.now() - t0;
    const got = [];
    const waitFor = (pred) => new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no matching message; got ${JSON.stringify(got)}`)), 10000);
      const check = () => { const m = got.find(pred); if (m) { clearTimeout(t); resolve(m); } };
      conn.on('data', (d) => { got.push(d); check(); });
      check();
    });
    conn.send({ op: 'join', room });
    const id = `probe-${Math.random().toString(36).slice(2)}`; // crypto.randomUUID needs a secure context
    conn.send({ op: 'publish', room, id, body: { text } });
    const ack = await waitFor((m) => m.op === 'ack' && m.id === id);
    const msg = await waitFor((m) => m.op === 'msg' && m.id === id);
    const firstMessageMs = performance.now() - t0;
    const stats = await conn.peerConnection.getStats();
    let pair;
    for (const s of stats.values()) if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
    if (!pair) for (const s of stats.values()) if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s;
    const l = pair && stats.get(pair.localCandidateId);
    const r = pair && stats.get(pair.remoteCandidateId);
    conn.close();
    peer.destroy();
    return {
      myId, openMs, firstMessageMs, ack, body: msg.body,
      local: l && { type: l.candidateType, addr: `${l.address}:${l.port}`, relayProtocol: l.relayProtocol },
      remote: r && { type: r.candidateType, addr: `${r.address}:${r.port}` },
    };
  }, { host, port, nodeId, iceServers, room, text });
}

test('the lab NATs behave as modelled (turnutils_natdiscovery, RFC 5780)', opts(60000), async () => {
  const rows = Object.fromEntries(lab.measure().trim().split('\n').map((l) => { const [k, wan, m, f] = l.split('\t'); return [k, { wan, m, f }]; }));
  for (const k of ['runnerA', 'runnerB', 'homeH']) {
    assert.equal(rows[k].m, 'NAT with Endpoint Independent Mapping', `${k}: ${JSON.stringify(rows[k])}`);
    assert.equal(rows[k].f, 'NAT with Address and Port Dependent Filtering', `${k}: ${JSON.stringify(rows[k])}`);
  }
  assert.equal(rows.symmetricS.m, 'NAT with Address and Port Dependent Mapping', JSON.stringify(rows.symmetricS));
  assert.match(rows.udpblockedU.m, /UDP blocked/);
});

test('Chromium + peerjs and the web chat on a home NAT reach a node on a runner NAT via STUN', opts(120000), async (t) => {
  const node = await lab.startNode('runnerA', { ice: [{ urls: lab.stunUrl }] });
  t.after(() => node.stop());
  const browser = await lab.browser('home');
  t.after(() => browser.close());
  // The web chat: served by the node (its own peerjs copy, ICE servers from /ouroboros.json).
  const page = await browser.newPage(`${node.url}/chat?room=lab&name=alice`, { waitReady: false });
  await page.waitForFunction(() => document.body.dataset.conn === 'live', null, { timeout: 30000 });
  await page.focus('#composer-input');
  await page.keyboard.insertText('hello through two NATs');
  await page.keyboard.press('Enter');
  await page.waitForFunction(
    () => [...document.querySelectorAll('#message-list li[data-seq]:not(.pending) .body')].some((b) => b.textContent === 'hello through two NATs'),
    null, { timeout: 15000 },
  );
  // Unmodified peerjs on the same page, with the record's ICE servers.
  const record = JSON.parse(lab.curl('home', `${node.url}/ouroboros.json`));
  assert.deepEqual(record.ice_servers, [{ urls: [lab.stunUrl] }]);
  const r = await peerjsRound(page, { host: lab.wan('runnerA'), port: 9000, nodeId: node.peerId, iceServers: record.ice_servers, room: 'lab', text: 'peerjs probe' });
  assert.equal(r.body.text, 'peerjs probe');
  // The node is reached at its NAT's public address (no host path exists between the two NATs).
  assert.equal(r.remote.addr.split(':')[0], lab.wan('runnerA'), JSON.stringify(r));
  assert.ok(['srflx', 'prflx'].includes(r.remote.type), JSON.stringify(r));
  const np = await nodePair(node, r.myId);
  assert.equal(np.remote.addr.split(':')[0], lab.wan('home'), JSON.stringify(np));
  assert.ok(['srflx', 'prflx'].includes(np.remote.type), JSON.stringify(np));
  console.log(`# home NAT -> runner NAT (srflx): Chromium peerjs open ${r.openMs.toFixed(0)} ms, first message ${r.firstMessageMs.toFixed(0)} ms`);
  assert.doesNotMatch(node.stderr(), /Failed to write packet/);
  await browser.close();
  await node.stop();
});

test('Chromium on a symmetric NAT reaches the node via TURN with credentials minted by the node', opts(120000), async (t) => {
  const node = await lab.startNode('runnerA', {
    ice: [{ urls: lab.stunUrl }, { urls: lab.turnUrl }],
    env: { OUROBOROS_TURN_SECRET: lab.turnSecret },
  });
  t.after(() => node.stop());
  // The published record has no TURN credentials; the node's own /ouroboros.json has fresh ones.
  const { readFile } = await import('node:fs/promises');
  const recordFile = path.join(node.dataDir, 'ouroboros.json');
  let published;
  for (let i = 0; i < 100 && !published; i++) {
    published = await readFile(recordFile, 'utf8').then(JSON.parse, () => null);
    if (!published) await new Promise((r) => setTimeout(r, 100));
  }
  assert.ok(published, `${recordFile} was not written`);
  assert.deepEqual(published.ice_servers, [{ urls: [lab.stunUrl] }]);
  assert.doesNotMatch(node.stderr(), new RegExp(lab.turnSecret));
  const record = JSON.parse(lab.curl('symmetric', `${node.url}/ouroboros.json`));
  const turn = record.ice_servers.find((s) => s.urls[0].startsWith('turn:'));
  assert.match(turn.username, /^\d+:ouroboros-client$/);
  assert.ok(Number(turn.username.split(':')[0]) > Date.now() / 1000);
  const browser = await lab.browser('symmetric');
  t.after(() => browser.close());
  const page = await browser.newPage(`${node.url}/chat?room=lab&name=sym`, { waitReady: false });
  await page.waitForFunction(() => document.body.dataset.conn === 'live', null, { timeout: 30000 });
  const r = await peerjsRound(page, { host: lab.wan('runnerA'), port: 9000, nodeId: node.peerId, iceServers: record.ice_servers, room: 'lab', text: 'via turn' });
  assert.equal(r.body.text, 'via turn');
  assert.equal(r.local.type, 'relay', JSON.stringify(r));
  console.log(`# symmetric NAT -> runner NAT (relay): Chromium peerjs open ${r.openMs.toFixed(0)} ms, first message ${r.firstMessageMs.toFixed(0)} ms`);
  await browser.close();
  await node.stop();
});

test('examples/send and the Rust client (examples/publish) on a home NAT reach the node via STUN', opts(120000), async (t) => {
  const node = await lab.startNode('runnerA', { ice: [{ urls: lab.stunUrl }] });
  t.after(() => node.stop());
  const t0 = Date.now();
  const send = lab.spawn('home', path.join(examplesDir(), 'send'), [
    '--host', lab.wan('runnerA'), '--port', '9000', '--to', node.peerId, '--serialization', 'json',
    '--message', '{"op":"ping"}', '--count', '1', '--timeout', '20', '--ice-servers', JSON.stringify([{ urls: lab.stunUrl }]),
  ], { RUST_BACKTRACE: '0' });
  await send.waitFor(/"op":"welcome"/, 30000);
  const sendMs = Date.now() - t0;
  assert.equal((await send.exited).code, 0, send.stderr());
  const np = await nodePair(node);
  assert.equal(np.remote.addr.split(':')[0], lab.wan('home'), JSON.stringify(np));
  assert.ok(['srflx', 'prflx'].includes(np.remote.type), JSON.stringify(np));
  // The Rust client library, ICE servers from the discovery record.
  const t1 = Date.now();
  const pub = lab.spawn('home', path.join(examplesDir(), 'publish'), ['--discovery', `${node.url}/ouroboros.json`, '--room', 'lab', '--name', 'rust-home'], { RUST_BACKTRACE: '0' });
  pub.child.stdin.write('from the home NAT\n');
  await pub.waitFor(/"event":"ack"/, 30000);
  const pubMs = Date.now() - t1;
  pub.child.stdin.end();
  assert.equal((await pub.exited).code, 0, pub.stderr());
  console.log(`# home NAT -> runner NAT (srflx): examples/send first reply ${sendMs} ms (process start to reply), publish first ack ${pubMs} ms`);
  assert.doesNotMatch(node.stderr(), /Failed to write packet/);
  await node.stop();
});

test('examples/send on a symmetric NAT reaches the node via TURN (a relay candidate in the selected pair)', opts(120000), async (t) => {
  const node = await lab.startNode('runnerA', {
    ice: [{ urls: lab.stunUrl }, { urls: lab.turnUrl }],
    env: { OUROBOROS_TURN_SECRET: lab.turnSecret },
  });
  t.after(() => node.stop());
  // The node's own /ice hands out freshly minted TURN credentials, as a client reading it would get.
  const ice = JSON.parse(lab.curl('symmetric', `${node.url}/ice`));
  assert.ok(ice.some((s) => s.urls[0].startsWith('turn:') && s.credential), JSON.stringify(ice));
  const t0 = Date.now();
  const send = lab.spawn('symmetric', path.join(examplesDir(), 'send'), [
    '--host', lab.wan('runnerA'), '--port', '9000', '--to', node.peerId, '--serialization', 'json',
    '--message', '{"op":"ping"}', '--count', '1', '--timeout', '20', '--ice-servers', JSON.stringify(ice),
  ], { RUST_BACKTRACE: '0', RUST_LOG: 'info' });
  await send.waitFor(/"op":"welcome"/, 30000);
  const sendMs = Date.now() - t0;
  assert.equal((await send.exited).code, 0, send.stderr());
  // The client's own selected pair goes through the lab's coturn: usually the client's relay
  // candidate to the node's srflx, sometimes the client's host (through its NAT) to the node's relay
  // candidate (both ends have TURN; the first pair to succeed is nominated).
  const mine = pairsFromLog(send.stderr());
  assert.equal(mine.length, 1, send.stderr());
  const [p] = mine;
  const relayed = p.local.type === 'relay' ? p.local : p.remote;
  assert.equal(relayed.type, 'relay', JSON.stringify(p));
  assert.equal(relayed.addr.split(':')[0], lab.env.NATLAB_PUB_IP, JSON.stringify(p));
  // The node agrees: one end of its pair is the relay too.
  const np = await nodePair(node);
  assert.ok([np.local.type, np.remote.type].includes('relay'), JSON.stringify(np));
  const which = p.local.type === 'relay' ? "client's relay -> node srflx" : "client host -> node's relay";
  console.log(`# symmetric NAT -> runner NAT (relay, ${which}): examples/send first reply ${sendMs} ms (process start to reply; goal 500 ms)`);
  // Measured 150-460 ms; without the driver wake-ups (webrtc 0.21.1 holds packets sent from a relay
  // candidate until its next timer, see BENCHMARKS.md) it was 2.2-2.8 s. The bound leaves room for a
  // loaded machine and still catches that regression.
  assert.ok(sendMs < 1500, `first reply through TURN took ${sendMs} ms`);
  await node.stop();
});

test('a node on a runner NAT without UDP gets a relay candidate over TURN/TCP; examples/send on a home NAT reaches it', opts(120000), async (t) => {
  // webrtc 0.21 has no TURN over TCP; the peer bridges it (src/peer/turn_bridge.rs).
  const node = await lab.startNode('runnerC', {
    ice: [{ urls: lab.stunUrl }, { urls: lab.turnTcpUrl }],
    env: { OUROBOROS_TURN_SECRET: lab.turnSecret },
  });
  t.after(() => node.stop());
  const t0 = Date.now();
  const send = lab.spawn('home', path.join(examplesDir(), 'send'), [
    '--host', lab.wan('runnerC'), '--port', '9000', '--to', node.peerId, '--serialization', 'json',
    '--message', '{"op":"ping"}', '--count', '1', '--timeout', '20', '--ice-servers', JSON.stringify([{ urls: lab.stunUrl }]),
  ], { RUST_BACKTRACE: '0', RUST_LOG: 'info' });
  await send.waitFor(/"op":"welcome"/, 30000);
  const sendMs = Date.now() - t0;
  assert.equal((await send.exited).code, 0, send.stderr());
  // The node can only be reached through its relay candidate (its NAT drops every UDP packet).
  const np = await nodePair(node);
  assert.equal(np.local.type, 'relay', JSON.stringify(np));
  assert.equal(np.local.addr.split(':')[0], lab.env.NATLAB_PUB_IP, JSON.stringify(np));
  assert.equal(np.remote.addr.split(':')[0], lab.wan('home'), JSON.stringify(np));
  console.log(`# home NAT -> runner NAT without UDP (node relay over TURN/TCP): examples/send first reply ${sendMs} ms`);
  assert.ok(sendMs < 3000, `first reply through TURN/TCP took ${sendMs} ms`);
  assert.doesNotMatch(node.stderr(), /Skipping unsupported/);
  await node.stop();
});

test('examples/send with all UDP blocked reaches the node through TURN over TLS (turns:)', opts(120000), async (t) => {
  const tlsEnv = { SSL_CERT_FILE: lab.env.NATLAB_TURN_CA };
  const node = await lab.startNode('runnerA', {
    ice: [{ urls: lab.stunUrl }, { urls: lab.turnsUrl }],
    env: { OUROBOROS_TURN_SECRET: lab.turnSecret, ...tlsEnv },
  });
  t.after(() => node.stop());
  const ice = JSON.parse(lab.curl('udpblocked', `${node.url}/ice`));
  assert.ok(ice.some((s) => s.urls.includes(lab.turnsUrl) && s.credential), JSON.stringify(ice));
  const t0 = Date.now();
  const send = lab.spawn('udpblocked', path.join(examplesDir(), 'send'), [
    '--host', lab.wan('runnerA'), '--port', '9000', '--to', node.peerId, '--serialization', 'json',
    '--message', '{"op":"ping"}', '--count', '1', '--timeout', '20', '--ice-servers', JSON.stringify(ice),
  ], { RUST_BACKTRACE: '0', RUST_LOG: 'info', ...tlsEnv });
  await send.waitFor(/"op":"welcome"/, 30000);
  const sendMs = Date.now() - t0;
  assert.equal((await send.exited).code, 0, send.stderr());
  const [p] = pairsFromLog(send.stderr());
  assert.ok(p, send.stderr());
  assert.equal(p.local.type, 'relay', JSON.stringify(p));
  assert.equal(p.local.addr.split(':')[0], lab.env.NATLAB_PUB_IP, JSON.stringify(p));
  console.log(`# UDP blocked -> runner NAT (client relay over TURN/TLS): examples/send first reply ${sendMs} ms`);
  assert.ok(sendMs < 3000, `first reply through TURN/TLS took ${sendMs} ms`);
  await node.stop();
});

test('rotation from runner NAT A to runner NAT B via STUN under client load: nothing acknowledged is lost', opts(180000), async (t) => {
  const ice = [{ urls: lab.stunUrl }];
  const pred = await lab.startNode('runnerA', { ice });
  t.after(() => pred.stop());
  const discovery = `${pred.url}/ouroboros.json`;
  const room = 'rotation';
  const reader = lab.spawn('home', path.join(examplesDir(), 'chat'), ['--discovery', discovery, '--room', room, '--name', 'reader', '--history', '0'], { RUST_BACKTRACE: '0' });
  await reader.waitFor(/joined rotation/, 30000, 'stderr');
  const writers = ['w1', 'w2'].map((name) => {
    const p = lab.spawn('home', path.join(examplesDir(), 'publish'), ['--discovery', discovery, '--room', room, '--name', name], { RUST_BACKTRACE: '0' });
    let n = 0;
    let stopped = false;
    // One line after each ack (a steady load that never outruns the node; not synchronisation).
    const next = () => { if (!stopped) p.child.stdin.write(`${name} line ${++n}\n`); };
    p.child.stdout.on('data', (d) => { for (const _ of String(d).matchAll(/"event":"ack"/g)) setTimeout(next, 10); });
    next();
    return { name, p, stop: () => { stopped = true; p.child.stdin.end(); } };
  });
  const acksAfter = (marker, n) => (text) => {
    const i = marker ? text.search(marker) : 0;
    return i >= 0 && (text.slice(i).match(/"event":"ack"/g) || []).length >= n;
  };
  await Promise.all(writers.map((w) => w.p.waitFor(acksAfter(null, 20), 30000)));
  const succ = await lab.startNode('runnerB', {
    ice,
    extraArgs: ['--generation', '1', '--predecessor-peer-id', pred.peerId, '--predecessor-endpoints',
      JSON.stringify([{ host: lab.wan('runnerA'), port: 9000, path: '/', key: 'peerjs', secure: false }])],
  });
  t.after(() => succ.stop());
  // Every writer ends on the successor, then writes some more there.
  await Promise.all(writers.map((w) => w.p.waitFor(/"event":"live","generation":1|"generation":1[,}]/, 60000)));
  await Promise.all(writers.map((w) => w.p.waitFor(acksAfter(/"generation":1[,}]/, 10), 30000)));
  for (const w of writers) w.stop();
  for (const w of writers) assert.equal((await w.p.exited).code, 0, w.p.stderr());
  const acks = writers.flatMap((w) => [...w.p.stdout().matchAll(/\{"event":"ack".*\}/g)].map((m) => JSON.parse(m[0])));
  assert.ok(acks.length >= 60, `${acks.length} acks`);
  // The reader (which followed the rotation too) saw every acknowledged message once, at its seq.
  const maxSeq = Math.max(...acks.map((a) => a.seq));
  await reader.waitFor(new RegExp(`#${maxSeq} `), 30000);
  const seen = new Map();
  for (const m of reader.stdout().matchAll(/#(\d+) (\S+): (.*)/g)) {
    const seq = Number(m[1]);
    assert.ok(!seen.has(seq), `seq ${seq} delivered twice`);
    seen.set(seq, m[3]);
  }
  for (const a of acks) assert.ok(seen.has(a.seq), `acknowledged seq ${a.seq} (${a.id}) lost`);
  // The handoff crossed both NATs by their public addresses.
  const hp = await nodePair(succ, pred.peerId);
  assert.equal(hp.remote.addr.split(':')[0], lab.wan('runnerA'), JSON.stringify(hp));
  assert.ok(['srflx', 'prflx'].includes(hp.remote.type), JSON.stringify(hp));
  const status = JSON.parse(lab.curl('home', `${succ.url}/status.json`));
  assert.equal(status.generation, 1);
  console.log(`# rotation runner A -> runner B: ${acks.length} acks, 0 lost; handoff pair ${hp.local.type} -> ${hp.remote.type}`);
  reader.child.stdin.end();
  await reader.stop();
  await succ.stop();
  await pred.stop();
});

test('with all UDP blocked, the web chat and the Rust client reach the node over the relay WebSocket', opts(120000), async (t) => {
  const node = await lab.startNode('runnerA', { ice: [{ urls: lab.stunUrl }] });
  t.after(() => node.stop());
  const record = JSON.parse(lab.curl('udpblocked', `${node.url}/ouroboros.json`));
  assert.equal(record.relay_ws, `ws://${lab.wan('runnerA')}:9000/relay`, JSON.stringify(record));
  // The web chat (auto: WebRTC first, then the WebSocket): no candidate pair can work from here.
  const browser = await lab.browser('udpblocked');
  t.after(() => browser.close());
  const t0 = Date.now();
  const page = await browser.newPage(`${node.url}/chat?room=lab&name=noudp`, { waitReady: false });
  await page.waitForFunction(() => document.body.dataset.conn === 'live', null, { timeout: 30000 });
  const chatLiveMs = Date.now() - t0;
  assert.equal(await page.evaluate(() => document.body.dataset.transport), 'ws');
  await page.focus('#composer-input');
  await page.keyboard.insertText('hello without UDP');
  await page.keyboard.press('Enter');
  await page.waitForFunction(
    () => [...document.querySelectorAll('#message-list li[data-seq]:not(.pending) .body')].some((b) => b.textContent === 'hello without UDP'),
    null, { timeout: 15000 },
  );
  // The Rust client library (examples/publish, --transport auto by default).
  const t1 = Date.now();
  const pub = lab.spawn('udpblocked', path.join(examplesDir(), 'publish'), ['--discovery', `${node.url}/ouroboros.json`, '--room', 'lab', '--name', 'rust-noudp'], { RUST_BACKTRACE: '0' });
  pub.child.stdin.write('from behind a UDP block\n');
  await pub.waitFor(/"event":"ack"/, 30000);
  const pubMs = Date.now() - t1;
  pub.child.stdin.end();
  assert.equal((await pub.exited).code, 0, pub.stderr());
  assert.match(pub.stdout(), /"event":"live"[^\n]*"transport":"ws"/);
  const status = JSON.parse(lab.curl('home', `${node.url}/status.json`));
  assert.ok(JSON.stringify(status).includes('"transport":"ws"'), JSON.stringify(status));
  console.log(`# UDP blocked -> runner NAT (relay WebSocket): web chat live ${chatLiveMs} ms (WebRTC attempt + fallback), Rust publish first ack ${pubMs} ms`);
  await browser.close();
  await node.stop();
});

test('rotation from runner NAT A to a runner NAT without UDP: handoff and clients over WebSockets, nothing acknowledged is lost', opts(180000), async (t) => {
  const ice = [{ urls: lab.stunUrl }];
  const pred = await lab.startNode('runnerA', { ice });
  t.after(() => pred.stop());
  const discovery = `${pred.url}/ouroboros.json`;
  const room = 'rotation-noudp';
  const reader = lab.spawn('home', path.join(examplesDir(), 'chat'), ['--discovery', discovery, '--room', room, '--name', 'reader', '--history', '0'], { RUST_BACKTRACE: '0' });
  await reader.waitFor(/joined rotation-noudp/, 30000, 'stderr');
  const writers = ['u1', 'u2'].map((name) => {
    const p = lab.spawn('home', path.join(examplesDir(), 'publish'), ['--discovery', discovery, '--room', room, '--name', name], { RUST_BACKTRACE: '0' });
    let n = 0;
    let stopped = false;
    const next = () => { if (!stopped) p.child.stdin.write(`${name} line ${++n}\n`); };
    p.child.stdout.on('data', (d) => { for (const _ of String(d).matchAll(/"event":"ack"/g)) setTimeout(next, 10); });
    next();
    return { name, p, stop: () => { stopped = true; p.child.stdin.end(); } };
  });
  const acksAfter = (marker, n) => (text) => {
    const i = marker ? text.search(marker) : 0;
    return i >= 0 && (text.slice(i).match(/"event":"ack"/g) || []).length >= n;
  };
  await Promise.all(writers.map((w) => w.p.waitFor(acksAfter(null, 20), 30000)));
  const succ = await lab.startNode('runnerC', {
    ice,
    extraArgs: ['--generation', '1', '--predecessor-peer-id', pred.peerId, '--predecessor-endpoints',
      JSON.stringify([{ host: lab.wan('runnerA'), port: 9000, path: '/', key: 'peerjs', secure: false }])],
  });
  t.after(() => succ.stop());
  // Every writer ends on the successor (over its relay WebSocket: no UDP reaches it), then writes more.
  await Promise.all(writers.map((w) => w.p.waitFor(/"event":"live","generation":1,"node":"[^"]+","transport":"ws"/, 90000)));
  await Promise.all(writers.map((w) => w.p.waitFor(acksAfter(/"generation":1[,}]/, 10), 30000)));
  for (const w of writers) w.stop();
  for (const w of writers) assert.equal((await w.p.exited).code, 0, w.p.stderr());
  const acks = writers.flatMap((w) => [...w.p.stdout().matchAll(/\{"event":"ack".*\}/g)].map((m) => JSON.parse(m[0])));
  assert.ok(acks.length >= 60, `${acks.length} acks`);
  // The reader (which followed the rotation too) saw every acknowledged message once, at its seq.
  const maxSeq = Math.max(...acks.map((a) => a.seq));
  await reader.waitFor(new RegExp(`#${maxSeq} `), 30000);
  const seen = new Map();
  for (const m of reader.stdout().matchAll(/#(\d+) (\S+): (.*)/g)) {
    const seq = Number(m[1]);
    assert.ok(!seen.has(seq), `seq ${seq} delivered twice`);
    seen.set(seq, m[3]);
  }
  for (const a of acks) assert.ok(seen.has(a.seq), `acknowledged seq ${a.seq} (${a.id}) lost`);
  const status = JSON.parse(lab.curl('home', `${succ.url}/status.json`));
  assert.equal(status.generation, 1);
  assert.equal(status.handoff_transport, 'ws', JSON.stringify(status));
  console.log(`# rotation runner A -> runner C (no UDP): ${acks.length} acks, 0 lost; handoff over ${status.handoff_transport}`);
  reader.child.stdin.end();
  await reader.stop();
  await succ.stop();
  await pred.stop();
});

/** A signaling server on the open host (the stand-in for the PeerJS cloud); resolves to its URL. */
async function sharedSignaling(t) {
  const sig = lab.spawn('pub', ouroborosBin(), ['signal', '--host', '0.0.0.0', '--port', '9100']);
  t.after(() => sig.stop());
  await sig.waitFor(/listening on/, 15000);
  return `ws://${lab.env.NATLAB_PUB_IP}:9100/?key=peerjs`;
}

/** examples/publish on the home network writes `total` lines to `room` through `node`, one after each ack; returns the acks. */
async function publishThrough(node, room, total) {
  const pub = lab.spawn('home', path.join(examplesDir(), 'publish'), ['--discovery', `${node.url}/ouroboros.json`, '--room', room, '--name', 'w'], { RUST_BACKTRACE: '0' });
  let n = 0;
  const next = () => { if (n < total) pub.child.stdin.write(`line ${++n}\n`); else pub.child.stdin.end(); };
  pub.child.stdout.on('data', (d) => { for (const _ of String(d).matchAll(/"event":"ack"/g)) next(); });
  next();
  assert.equal((await pub.exited).code, 0, pub.stderr());
  const acks = [...pub.stdout().matchAll(/\{"event":"ack".*\}/g)].map((m) => JSON.parse(m[0]));
  assert.equal(acks.length, total);
  return acks;
}

/** A node's /status.json, read inside its host. */
const statusOf = (host) => JSON.parse(lab.curl(host, 'http://127.0.0.1:9000/status.json'));

/** Waits (20 s at most) until `room`'s head on the node in each of `hosts` is `seq`. */
async function headsReach(hosts, room, seq) {
  for (const host of hosts) {
    const until = Date.now() + 20000;
    let head = 0;
    for (;;) {
      head = statusOf(host).rooms.find((r) => r.name === room)?.head ?? 0;
      if (head >= seq || Date.now() > until) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.equal(head, seq, `${host}: room head ${head}, acknowledged up to ${seq}`);
  }
}

test('a replicated ring on three NATs (two runners, a home router without a port forward) replicates over WebRTC via STUN; no member call goes over HTTP', opts(180000), async (t) => {
  const ice = [{ urls: lab.stunUrl }];
  // Every member also registers on the shared server.
  const shared = await sharedSignaling(t);
  const common = ['--also-register', shared, '--replica-transport', 'webrtc'];
  const n1 = await lab.startNode('runnerA', { ice, extraArgs: [...common, '--replicas', '3'] });
  t.after(() => n1.stop());
  await n1.waitFor(/replica member 1 bootstrapped a new ring/, 30000);
  // Members 2 and 3 know member 1 by its peer id on the shared server only.
  const join = `1=peerjs:${n1.peerId}@${shared}`;
  const n2 = await lab.startNode('runnerB', { ice, extraArgs: [...common, '--replica-id', '2', '--replica-join', join] });
  t.after(() => n2.stop());
  const n3 = await lab.startNode('home', { ice, extraArgs: [...common, '--replica-id', '3', '--replica-join', join] });
  t.after(() => n3.stop());
  await n2.waitFor(/replica member 2 joined as a voter/, 90000);
  await n3.waitFor(/replica member 3 joined as a voter/, 90000);
  // A client on the home network publishes through member 1 (its tunnel-forwarded port).
  const room = 'ring-over-nats';
  const acks = await publishThrough(n1, room, 20);
  const maxSeq = Math.max(...acks.map((a) => a.seq));
  // Every member holds every acknowledged message: the home member, reached over WebRTC only, too.
  await headsReach(['runnerA', 'runnerB', 'home'], room, maxSeq);
  for (const host of ['runnerA', 'runnerB', 'home']) {
    const calls = statusOf(host).replica_calls;
    assert.ok(calls && calls.webrtc > 0, `${host}: ${JSON.stringify(calls)}`);
    assert.equal(calls.http + calls.websocket, 0, `${host}: ${JSON.stringify(calls)}`);
  }
  // The home member's links crossed the NATs by their public addresses (STUN: srflx or prflx).
  const linkPairs = pairsFromLog(n3.stderr()).filter((p) => /^m[12]-/.test(p.peer ?? ''));
  assert.ok(linkPairs.length >= 1, n3.stderr().slice(-3000));
  for (const p of linkPairs) {
    assert.ok([lab.wan('runnerA'), lab.wan('runnerB')].includes(p.remote.addr.split(':')[0]), JSON.stringify(p));
    assert.ok(['srflx', 'prflx'].includes(p.remote.type), JSON.stringify(p));
  }
  console.log(`# replicated ring over NATs: ${acks.length} acks, head ${maxSeq} on all three; home member's link pairs: ${linkPairs.map((p) => `${p.local.type}->${p.remote.type}`).join(', ')}`);
});

test('a replicated ring with a member on a runner NAT without UDP: its calls fall back to a WebSocket through the tunnel, the others stay on WebRTC', opts(180000), async (t) => {
  const ice = [{ urls: lab.stunUrl }];
  const shared = await sharedSignaling(t);
  // `--replica-transport auto` (the default): WebRTC where it opens, a WebSocket to the tunnel URL otherwise.
  const common = ['--also-register', shared];
  const n1 = await lab.startNode('runnerA', { ice, extraArgs: [...common, '--replicas', '3'] });
  t.after(() => n1.stop());
  await n1.waitFor(/replica member 1 bootstrapped a new ring/, 30000);
  const join = `1=${n1.url},1=peerjs:${n1.peerId}@${shared}`;
  const n2 = await lab.startNode('runnerB', { ice, extraArgs: [...common, '--replica-id', '2', '--replica-join', join] });
  t.after(() => n2.stop());
  await n2.waitFor(/replica member 2 joined as a voter/, 90000);
  const n3 = await lab.startNode('runnerC', { ice, extraArgs: [...common, '--replica-id', '3', '--replica-join', join] });
  t.after(() => n3.stop());
  await n3.waitFor(/replica member 3 joined as a voter/, 90000);
  const room = 'fallback';
  const acks = await publishThrough(n1, room, 20);
  const maxSeq = Math.max(...acks.map((a) => a.seq));
  await headsReach(['runnerA', 'runnerB', 'runnerC'], room, maxSeq);
  const calls = Object.fromEntries(['runnerA', 'runnerB', 'runnerC'].map((h) => [h, statusOf(h).replica_calls]));
  // Member 3 has no UDP: every call it made went over the WebSocket link. The leader (member 1)
  // replicated to member 2 over a WebRTC link and to member 3 over a WebSocket; no plain HTTP.
  assert.equal(calls.runnerC.webrtc, 0, JSON.stringify(calls));
  assert.ok(calls.runnerC.websocket > 0, JSON.stringify(calls));
  assert.ok(calls.runnerA.webrtc > 0 && calls.runnerA.websocket > 0, JSON.stringify(calls));
  for (const h of Object.keys(calls)) assert.equal(calls[h].http, 0, JSON.stringify(calls));
  const opened = (node) => [...node.stderr().replace(/\x1b\[[0-9;]*m/g, '').matchAll(/member link open over WebRTC .*?\bto=(\d+)/g)].map((m) => Number(m[1]));
  assert.ok(opened(n1).includes(2), `member 1 opened links to ${opened(n1)}`);
  assert.ok(!opened(n1).includes(3), `member 1 opened links to ${opened(n1)}`);
  console.log(`# replicated ring with a member without UDP: ${acks.length} acks, head ${maxSeq} on all three; calls ${JSON.stringify(calls)}`);
});
