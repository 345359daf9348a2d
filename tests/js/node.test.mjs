// `ouroboros node` with real peerjs clients in headless Chromium: the relay protocol over `json` and
// `binary`, replay, history paging, presence, direct messages, every limit's error, the seed's legacy
// protocol, eviction under a small memory budget, dual registration on a reference `peer` server, and
// the /status page (DOM assertions + a screenshot in tests/artifacts/).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { cleanupAll } from './lib/cleanup.mjs';
import { openPeerHarness } from './lib/browser.mjs';
import { startReference, REPO_DIR } from './lib/servers.mjs';
import { installRelayClients, startNode, openClient, send, sendMany, take, closeClient } from './lib/relay-page.mjs';

const ARTIFACTS = path.join(REPO_DIR, 'tests', 'artifacts');
let h; // static site + browser + page with peerjs

before(async () => {
  h = await openPeerHarness();
  await installRelayClients(h.page);
});
after(cleanupAll);


for (const serialization of ['json', 'binary']) {
  test(`relay protocol over ${serialization}: join, publish, ack, fan-out, presence, replay, history, direct, ping`, async () => {
    const node = await startNode();
    const page = h.page;
    const a = `a-${serialization}`;
    const b = `b-${serialization}`;
    try {
      await openClient(page, a, node, { serialization });
      const welcome = await take(page, a, (m) => m.op === 'welcome');
      assert.equal(welcome.node, node.peerId);
      assert.equal(welcome.generation, 0);
      assert.equal(welcome.limits.max_message_bytes, 65536);

      await send(page, a, { op: 'join', room: 'r1' });
      assert.deepEqual(await take(page, a, (m) => m.op === 'joined'), { op: 'joined', room: 'r1', head: 0 });
      for (let i = 1; i <= 7; i++) {
        await send(page, a, { op: 'publish', room: 'r1', id: `m${i}`, body: { text: `hello ${i}`, n: i } });
        const ack = await take(page, a, (m) => m.op === 'ack');
        assert.deepEqual(ack, { op: 'ack', id: `m${i}`, room: 'r1', seq: i });
      }
      // A repeated id is acknowledged again with the same seq, not stored twice.
      await send(page, a, { op: 'publish', room: 'r1', id: 'm3', body: { text: 'dup' } });
      assert.equal((await take(page, a, (m) => m.op === 'ack')).seq, 3);

      // b joins with since=4: gets joined{head:7}, then 5..7 replayed, in order.
      await openClient(page, b, node, { serialization });
      await take(page, b, (m) => m.op === 'welcome');
      await send(page, b, { op: 'join', room: 'r1', since: 4 });
      assert.deepEqual(await take(page, b, (m) => m.op === 'joined'), { op: 'joined', room: 'r1', head: 7 });
      for (const seq of [5, 6, 7]) {
        const m = await take(page, b, (m) => m.op === 'msg');
        assert.equal(m.seq, seq);
        assert.equal(m.from, a);
        assert.equal(m.id, `m${seq}`);
        assert.deepEqual(m.body, { text: `hello ${seq}`, n: seq });
        assert.equal(typeof m.ts, 'number');
      }
      // a sees b arrive.
      const pres = await take(page, a, new Function('m', `return m.op === 'presence' && m.joined.includes(${JSON.stringify(b)})`));
      assert.deepEqual(pres, { op: 'presence', room: 'r1', joined: [b], left: [] });

      // Live fan-out: a publishes, b receives; the publisher gets its ack.
      await send(page, a, { op: 'publish', room: 'r1', id: 'live', body: 'live one' });
      assert.equal((await take(page, a, (m) => m.op === 'ack')).seq, 8);
      const live = await take(page, b, (m) => m.op === 'msg');
      assert.equal(live.seq, 8);
      assert.equal(live.body, 'live one');

      // History: newest first, paged with `before`.
      await send(page, b, { op: 'history', room: 'r1', limit: 3 });
      const p1 = await take(page, b, (m) => m.op === 'history');
      assert.deepEqual(p1.messages.map((m) => m.seq), [8, 7, 6]);
      await send(page, b, { op: 'history', room: 'r1', before: 6, limit: 3 });
      const p2 = await take(page, b, (m) => m.op === 'history');
      assert.deepEqual(p2.messages.map((m) => m.seq), [5, 4, 3]);
      await send(page, b, { op: 'history', room: 'r1', before: 3, limit: 10 });
      const p3 = await take(page, b, (m) => m.op === 'history');
      assert.deepEqual(p3.messages.map((m) => m.seq), [2, 1]);
      assert.equal(p3.evicted_before, undefined);

      // Direct, by client name.
      await send(page, b, { op: 'direct', to: a, body: { secret: 42 } });
      assert.deepEqual(await take(page, a, (m) => m.op === 'direct'), { op: 'direct', from: b, body: { secret: 42 } });

      // Ping.
      await send(page, a, { op: 'ping' });
      assert.deepEqual(await take(page, a, (m) => m.op === 'pong'), { op: 'pong' });

      // Leave: b's departure is announced to a.
      await send(page, b, { op: 'leave', room: 'r1' });
      const gone = await take(page, a, new Function('m', `return m.op === 'presence' && m.left.includes(${JSON.stringify(b)})`));
      assert.deepEqual(gone.left, [b]);
    } finally {
      await closeClient(page, a);
      await closeClient(page, b);
      await node.stop();
    }
  });
}

test('every limit answers its documented error and the connection stays usable', async () => {
  const node = await startNode({
    extraArgs: [
      '--max-message-size', '1024',
      '--client-rate', '1', '--client-burst', '40',
      '--max-rooms-per-client', '2',
      '--max-clients', '2',
    ],
  });
  const page = h.page;
  try {
    await openClient(page, 'lim', node);
    await take(page, 'lim', (m) => m.op === 'welcome');
    const expectError = async (msg, code) => {
      await send(page, 'lim', msg);
      const e = await take(page, 'lim', (m) => m.op === 'error' || m.op === 'ack' || m.op === 'joined' || m.op === 'history');
      assert.equal(e.op, 'error', `expected error ${code} for ${JSON.stringify(msg).slice(0, 80)}, got ${JSON.stringify(e).slice(0, 200)}`);
      assert.equal(e.code, code);
      assert.equal(typeof e.message, 'string');
      assert.ok(e.message.length > 0);
      assert.ok('ref' in e);
      return e;
    };
    await send(page, 'lim', { op: 'join', room: 'ok' });
    await take(page, 'lim', (m) => m.op === 'joined');

    const big = await expectError({ op: 'publish', room: 'ok', id: 'big', body: 'x'.repeat(2000) }, 'too_large');
    assert.equal(big.ref, 'big');
    await expectError({ op: 'join', room: 'bad room!' }, 'bad_room');
    await send(page, 'lim', { op: 'join', room: 'second' });
    await take(page, 'lim', (m) => m.op === 'joined');
    await expectError({ op: 'join', room: 'third' }, 'too_many_rooms');
    await expectError({ op: 'history', room: 'ok', limit: 100000 }, 'bad_limit');
    await expectError({ op: 'leave', room: 'never-joined' }, 'not_joined');
    await expectError({ op: 'direct', to: 'nobody-here', body: 1 }, 'unknown_peer');
    await expectError({ op: 'fly' }, 'unknown_op');
    await expectError({ op: 'publish', room: 'ok' }, 'bad_request');
    await expectError(['not', 'an', 'object'], 'bad_request');

    // Still usable after all that.
    await send(page, 'lim', { op: 'publish', room: 'ok', id: 'fine', body: 'small' });
    assert.equal((await take(page, 'lim', (m) => m.op === 'ack')).id, 'fine');

    // Rate: burst 40 at 1/s; 60 pings at once exceed it.
    await sendMany(page, 'lim', Array.from({ length: 60 }, () => ({ op: 'ping' })));
    const limited = await take(page, 'lim', (m) => m.op === 'error' && m.code === 'rate_limited');
    assert.equal(limited.code, 'rate_limited');

    // Total clients: the node takes 2; a third declared client gets server_full and is closed.
    await openClient(page, 'lim2', node);
    await take(page, 'lim2', (m) => m.op === 'welcome');
    await openClient(page, 'lim3', node);
    const full = await take(page, 'lim3', (m) => m.op === 'error' || m.__closed);
    assert.equal(full.code, 'server_full');
    const closed = await take(page, 'lim3', (m) => m.__closed === true, 15000);
    assert.equal(closed.__closed, true);
  } finally {
    for (const n of ['lim', 'lim2', 'lim3']) await closeClient(page, n);
    await node.stop();
  }
});

test("the seed's legacy protocol over a default (binary, unordered) DataConnection", async () => {
  const node = await startNode();
  const page = h.page;
  try {
    // Like the seed's client: default options, no metadata.
    await openClient(page, 'old1', node, { serialization: 'binary', reliable: false, metadata: null });
    await openClient(page, 'old2', node, { serialization: 'binary', reliable: false, metadata: null });
    await send(page, 'old1', '0');
    const empty = await take(page, 'old1', (m) => typeof m === 'string');
    assert.deepEqual(JSON.parse(empty), []);
    await send(page, 'old2', '0'); // marks old2 as legacy too
    assert.deepEqual(JSON.parse(await take(page, 'old2', (m) => typeof m === 'string')), []);

    for (let i = 1; i <= 7; i++) {
      await send(page, 'old1', JSON.stringify({ userName: 'ann', message: `m${i}` }));
      // Every legacy client (the sender too) gets the stamped message as a JSON string.
      for (const who of ['old1', 'old2']) {
        const s = await take(page, who, (m) => typeof m === 'string');
        const o = JSON.parse(s);
        assert.equal(o.userName, 'ann');
        assert.equal(o.message, `m${i}`);
        assert.ok(o.date, 'stamped with a date');
      }
    }
    // Pages of 5, newest first, skipping the newest n.
    await send(page, 'old2', '0');
    const p0 = JSON.parse(await take(page, 'old2', (m) => typeof m === 'string'));
    assert.deepEqual(p0.map((o) => o.message), ['m7', 'm6', 'm5', 'm4', 'm3']);
    await send(page, 'old2', '5');
    const p1 = JSON.parse(await take(page, 'old2', (m) => typeof m === 'string'));
    assert.deepEqual(p1.map((o) => o.message), ['m2', 'm1']);
    // The seed answered "ping" with "pong".
    await send(page, 'old2', 'ping');
    assert.equal(await take(page, 'old2', (m) => typeof m === 'string'), 'pong');
    // The legacy room is a room of the same store: a relay client sees the messages.
    await openClient(page, 'modern', node);
    await take(page, 'modern', (m) => m.op === 'welcome');
    await send(page, 'modern', { op: 'history', room: 'global', limit: 10 });
    const hist = await take(page, 'modern', (m) => m.op === 'history');
    assert.equal(hist.messages.length, 7);
  } finally {
    for (const n of ['old1', 'old2', 'modern']) await closeClient(page, n);
    await node.stop();
  }
});

test('eviction under a small memory budget: oldest first, reported, seqs never reused', async () => {
  const node = await startNode({ extraArgs: ['--memory-budget', '32KiB', '--client-burst', '1000', '--client-rate', '1000'] });
  const page = h.page;
  try {
    await openClient(page, 'ev', node);
    await take(page, 'ev', (m) => m.op === 'welcome');
    const body = 'y'.repeat(600);
    for (let i = 1; i <= 120; i++) {
      await send(page, 'ev', { op: 'publish', room: i % 2 ? 'odd' : 'even', id: `e${i}`, body });
    }
    const acks = [];
    for (let i = 1; i <= 120; i++) acks.push(await take(page, 'ev', (m) => m.op === 'ack'));
    assert.equal(acks.filter((a) => a.room === 'odd').map((a) => a.seq).join(','), Array.from({ length: 60 }, (_, i) => i + 1).join(','));
    await send(page, 'ev', { op: 'history', room: 'odd', limit: 500 });
    const h1 = await take(page, 'ev', (m) => m.op === 'history');
    assert.ok(h1.evicted_before > 1, `evicted_before ${h1.evicted_before}`);
    assert.ok(h1.messages.length < 60);
    assert.equal(h1.messages[0].seq, 60, 'newest kept');
    assert.ok(h1.messages.every((m) => m.seq >= h1.evicted_before));
    // Sequence numbers continue after eviction.
    await send(page, 'ev', { op: 'publish', room: 'odd', id: 'after', body: 'z' });
    assert.equal((await take(page, 'ev', (m) => m.op === 'ack')).seq, 61);
    const metrics = await (await fetch(`${node.httpBase}metrics`)).text();
    const evicted = Number(/^ouroboros_relay_messages_evicted_total (\d+)/m.exec(metrics)[1]);
    assert.ok(evicted > 0, metrics);
    const stored = Number(/^ouroboros_relay_bytes_stored (\d+)/m.exec(metrics)[1]);
    assert.ok(stored <= 32 * 1024, `stored ${stored}`);
  } finally {
    await closeClient(page, 'ev');
    await node.stop();
  }
});

test('dual registration: clients of another PeerJS server (the reference `peer`) reach the node', async () => {
  const ref = await startReference({});
  const node = await startNode({ extraArgs: ['--also-register', `ws://127.0.0.1:${ref.port}/?key=peerjs`] });
  const page = h.page;
  try {
    // Listed in the discovery record.
    assert.deepEqual(node.record.signaling[1], { host: '127.0.0.1', port: ref.port, path: '/', key: 'peerjs', secure: false });
    // A client on the reference server and one on the node's own server share a room.
    await openClient(page, 'cloud', node, { peerOptions: ref.peerOptions() });
    await take(page, 'cloud', (m) => m.op === 'welcome');
    await openClient(page, 'local', node);
    await take(page, 'local', (m) => m.op === 'welcome');
    await send(page, 'local', { op: 'join', room: 'both' });
    await take(page, 'local', (m) => m.op === 'joined');
    await send(page, 'cloud', { op: 'join', room: 'both' });
    await take(page, 'cloud', (m) => m.op === 'joined');
    await send(page, 'cloud', { op: 'publish', room: 'both', id: 'c1', body: 'from the cloud' });
    assert.equal((await take(page, 'cloud', (m) => m.op === 'ack')).seq, 1);
    assert.equal((await take(page, 'local', (m) => m.op === 'msg')).body, 'from the cloud');
    const status = await (await fetch(`${node.httpBase}status.json`)).json();
    assert.deepEqual(status.endpoints.map((e) => [e.kind, e.state]), [['own', 'registered'], ['extra', 'registered']]);

    // The reference server goes away and comes back on the same port: the node re-registers.
    await closeClient(page, 'cloud');
    await ref.stop();
    // The reference CLI takes env PORT when --port is 0 (what startReference passes).
    const ref2 = await startReference({ env: { PORT: String(ref.port) } });
    assert.equal(ref2.port, ref.port);
    let up = false;
    for (let i = 0; i < 100 && !up; i++) {
      const s = await (await fetch(`${node.httpBase}status.json`)).json();
      up = s.endpoints[1].state === 'registered' && s.endpoints[1].registrations >= 2;
      if (!up) await new Promise((r) => setTimeout(r, 200)); // polling the node's own report, not a sync sleep
    }
    assert.ok(up, 'extra registration came back');
    await openClient(page, 'cloud2', node, { peerOptions: ref2.peerOptions() });
    await take(page, 'cloud2', (m) => m.op === 'welcome');
  } finally {
    for (const n of ['cloud', 'local', 'cloud2']) await closeClient(page, n);
    await node.stop();
  }
});

test('/status page in Chromium: the figures a person wants, escaped, screenshot', async () => {
  const node = await startNode({ extraArgs: ['--peer-id', 'status-node-1'] });
  const page = h.page;
  try {
    await openClient(page, 'st', node);
    await take(page, 'st', (m) => m.op === 'welcome');
    await send(page, 'st', { op: 'join', room: 'blobby' });
    await take(page, 'st', (m) => m.op === 'joined' || m.op === 'error');
    await send(page, 'st', { op: 'publish', room: 'blobby', id: 's1', body: '<script>alert(1)</script>' });
    await take(page, 'st', (m) => m.op === 'ack' || m.op === 'error');

    const sp = await h.browser.newPage(`${node.httpBase}status`, { waitReady: false });
    assert.equal(await sp.title(), 'Ouroboros node status-node-1 · generation 0');
    assert.equal(await sp.textContent('#peer-id'), 'status-node-1');
    assert.equal(await sp.textContent('#generation'), 'generation 0');
    assert.match(await sp.textContent('#clients .big'), /^1$/);
    assert.match(await sp.textContent('#uptime .big'), /^\d+s$/);
    assert.match(await sp.textContent('#next-rotation .big'), /none planned/);
    const endpoints = await sp.$$eval('#endpoints tbody tr', (rows) => rows.map((r) => r.textContent));
    assert.equal(endpoints.length, 1);
    assert.match(endpoints[0], new RegExp(`ws://127\\.0\\.0\\.1:${node.port}/`));
    assert.match(endpoints[0], /registered/);
    const rooms = await sp.$$eval('#rooms tbody tr td:first-child', (tds) => tds.map((t) => t.textContent));
    assert.ok(rooms.includes('blobby'), rooms.join(','));
    assert.equal(await sp.$$eval('script', (s) => s.length), 0, 'no scripts on the status page');
    assert.ok(await sp.$('#memory [role=meter]'));
    // No external assets.
    const external = await sp.$$eval('link[href], img[src], script[src]', (els) => els.length);
    assert.equal(external, 0);
    await sp.setViewportSize({ width: 1200, height: 800 });
    await mkdir(ARTIFACTS, { recursive: true });
    await sp.screenshot({ path: path.join(ARTIFACTS, 'status.png'), fullPage: true });
    await sp.setViewportSize({ width: 360, height: 740 });
    await sp.screenshot({ path: path.join(ARTIFACTS, 'status-360.png'), fullPage: true });
    // Programs get JSON at the root; browsers navigating get HTML.
    const info = await fetch(node.httpBase, { headers: { accept: 'application/json' } });
    assert.equal((await info.json()).name, 'PeerJS Server');
    await sp.close();
  } finally {
    await closeClient(page, 'st');
    await node.stop();
  }
});
