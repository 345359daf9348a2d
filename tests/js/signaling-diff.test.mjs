// Differential test of the PeerJS signaling protocol: every scenario below is run, with raw `ws` and HTTP
// clients, against the reference `peer` 1.0.2 server and against the target server (ours by default), and
// the two transcripts (frames exactly as sent on the wire, close codes, HTTP status and the relevant
// headers) must be equal. Ids and tokens are chosen by the scripts; server-made ids (`/id`) are
// normalised to `<uuid-v4>`, timings are recorded as "within [lo, hi]". Each scenario also pins a few
// facts of the reference transcript so the test cannot pass with two equally broken servers.
// Deliberate differences (documented in protocol/signaling.md) are asserted explicitly per server.
//
// Run: cd tests/js && node --test signaling-diff.test.mjs
// Env: SIGNALING_TARGET=ouroboros|reference (default ouroboros; `reference` self-checks the harness),
//      OUROBOROS_BIN (see lib/servers.mjs), SIGNALING_DIFF_DUMP=dir (write both transcripts of every
//      scenario there, e.g. ../artifacts/signaling-diff).

import { test, after } from 'node:test';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import assert from 'node:assert/strict';
import { startServer } from './lib/servers.mjs';
import { connectWs, httpRequest } from './lib/net.mjs';
import { cleanupAll } from './lib/cleanup.mjs';

after(cleanupAll);

const TARGET = process.env.SIGNALING_TARGET ?? 'ouroboros';
const DUMP_DIR = process.env.SIGNALING_DIFF_DUMP;
let dumpCount = 0;
const RECV_MS = 3000;
const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

/** HTTP response headers that are part of the compared transcript. */
const COMPARED_HEADERS = [
  'content-type',
  'access-control-allow-origin',
  'access-control-allow-credentials',
  'access-control-allow-methods',
  'access-control-allow-headers',
  'access-control-expose-headers',
  'access-control-max-age',
  'vary',
];

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** One scripted run against one server; every step appends a line to `log`. */
class Session {
  constructor(srv) {
    this.srv = srv;
    this.log = [];
    this.clients = new Map();
    this.syncs = 0;
  }

  note(line) {
    this.log.push(line);
  }

  client(name) {
    const c = this.clients.get(name);
    if (!c) throw new Error(`no client ${name}`);
    return c;
  }

  /** Opens a socket with the given query (key defaults to the server's; pass key: undefined to omit). */
  async connect(name, query) {
    const q = { key: this.srv.key, ...query };
    const shown = Object.entries(q)
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => `${k}=${v}`)
      .join('&');
    try {
      const c = await connectWs(this.srv.wsUrl(q));
      this.clients.set(name, c);
      this.note(`${name} connect ?${shown}: upgraded`);
      return c;
    } catch (err) {
      if (err.status === undefined) throw err;
      this.note(`${name} connect ?${shown}: HTTP ${err.status}`);
      return null;
    }
  }

  /** Connects and expects OPEN as the first frame (recorded either way). */
  async join(name, id = name, token = `tok-${name}`) {
    const c = await this.connect(name, { id, token });
    if (c) await this.recv(name);
    return c;
  }

  send(name, msg) {
    const text = typeof msg === 'string' ? msg : JSON.stringify(msg);
    this.client(name).send(text);
    this.note(`${name} -> ${text}`);
  }

  async recv(name, ms = RECV_MS) {
    const c = this.client(name);
    const f = await c.nextTextOrNull(ms);
    if (f !== null) this.note(`${name} <- ${f}`);
    else if (c.isClosed) this.note(`${name} <- (closed ${(await c.closed).code})`);
    else this.note(`${name} <- (nothing within ${ms} ms)`);
    return f;
  }

  /** Receives `n` frames and records them sorted (for frames whose mutual order is unspecified). */
  async recvSet(name, n, ms = RECV_MS) {
    const c = this.client(name);
    const got = [];
    for (let i = 0; i < n; i++) {
      const f = await c.nextTextOrNull(ms);
      if (f === null) break;
      got.push(f);
    }
    got.sort();
    this.note(`${name} <- set ${JSON.stringify(got)}`);
  }

  /** Records that nothing arrives on `name` for `ms` (a bounded wait is the only way to observe absence). */
  async quiet(name, ms = 300) {
    const c = this.client(name);
    const f = await c.nextTextOrNull(ms);
    if (f !== null) this.note(`${name} <- ${f} (expected nothing)`);
    else if (c.isClosed) this.note(`${name} closed ${(await c.closed).code} (expected open)`);
    else this.note(`${name} quiet`);
  }

  /** Records how the server closed the socket (or that it did not). */
  async closed(name, ms = RECV_MS) {
    const c = this.client(name);
    const res = await Promise.race([c.closed, sleep(ms).then(() => null)]);
    if (res) this.note(`${name} closed ${res.code}`);
    else this.note(`${name} still open after ${ms} ms`);
  }

  async close(name) {
    await this.client(name).close();
    this.note(`${name} closes`);
  }

  /**
   * Makes sure the server has processed everything `name` sent so far: a self-addressed OFFER comes
   * back only after the earlier frames of the same socket were handled.
   */
  async sync(name) {
    const payload = { sync: ++this.syncs };
    this.send(name, { type: 'OFFER', dst: name, payload });
    await this.recv(name);
  }

  timing(label, elapsed, lo, hi) {
    this.note(elapsed >= lo && elapsed <= hi ? `${label} within [${lo}, ${hi}] ms` : `${label} took ${elapsed} ms, outside [${lo}, ${hi}]`);
  }

  /** Records an HTTP exchange: status, compared headers, and (normalised) body. */
  async http(label, pathAfterBase, { method = 'GET', headers = {}, body = true, compare = COMPARED_HEADERS } = {}) {
    const r = await httpRequest(this.srv.httpBase + pathAfterBase, { method, headers });
    const hs = {};
    for (const h of compare) {
      if (r.headers[h] === undefined) continue;
      hs[h] = h === 'vary' || h.startsWith('access-control-allow-') ? normaliseList(r.headers[h]) : r.headers[h];
    }
    let shownBody = '';
    if (body === true) shownBody = UUID_V4.test(r.body) ? '<uuid-v4>' : r.body;
    else if (typeof body === 'function') shownBody = body(r.body);
    this.note(`${label}: ${method} ${this.srv.path}${pathAfterBase} -> ${r.status} ${JSON.stringify(hs)} ${shownBody}`);
    return r;
  }
}

function normaliseList(v) {
  return String(v)
    .split(',')
    .map((s) => s.trim().toLowerCase())
    .join(',');
}

async function runOn(kind, serverOpts, script) {
  const srv = await startServer(kind, serverOpts);
  const s = new Session(srv);
  try {
    await script(s);
  } catch (err) {
    err.message += `\n--- ${kind} transcript so far ---\n${s.log.join('\n')}\n--- ${kind} output ---\n${srv.output()}`;
    throw err;
  } finally {
    for (const c of s.clients.values()) await c.close().catch(() => {});
    await srv.stop();
  }
  return s.log;
}

/** Runs `script` on the reference and on the target in parallel; returns both transcripts. */
async function both(serverOpts, script, name = script.name) {
  const [ref, target] = await Promise.all([runOn('reference', serverOpts, script), runOn(TARGET, serverOpts, script)]);
  if (DUMP_DIR) {
    mkdirSync(DUMP_DIR, { recursive: true });
    const base = path.join(DUMP_DIR, String(++dumpCount).padStart(2, '0') + '-' + name.replace(/[^A-Za-z0-9]+/g, '-').slice(0, 60));
    writeFileSync(`${base}.reference.txt`, ref.join('\n') + '\n');
    writeFileSync(`${base}.${TARGET}.txt`, target.join('\n') + '\n');
  }
  return { ref, target };
}

/** Differential scenario: transcripts equal, plus facts pinned on the reference transcript. */
function scenario(name, serverOpts, script, pinned = []) {
  test(name, { timeout: 60000 }, async () => {
    const { ref, target } = await both(serverOpts, script, name);
    for (const line of pinned) {
      assert.ok(ref.includes(line), `reference transcript lacks pinned line ${line}\n${ref.join('\n')}`);
    }
    assert.deepEqual(target, ref, `${TARGET} transcript differs from the reference`);
  });
}

const OPEN = '{"type":"OPEN"}';
const ERR_PARAMS = '{"type":"ERROR","payload":{"msg":"No id, token, or key supplied to websocket server"}}';
const ERR_KEY = '{"type":"ERROR","payload":{"msg":"Invalid key provided"}}';
const ERR_LIMIT = '{"type":"ERROR","payload":{"msg":"Server has reached its concurrent user limit"}}';
const ID_TAKEN = '{"type":"ID-TAKEN","payload":{"msg":"ID is taken"}}';

// ---------------------------------------------------------------- admission

scenario(
  'admission: missing or empty key, id or token',
  { path: '/myapp', key: 'k1' },
  async (s) => {
    const cases = [
      { key: undefined, id: undefined, token: undefined },
      { key: undefined, id: 'a', token: 't' },
      { id: undefined, token: 't' },
      { id: 'a', token: undefined },
      { key: '', id: 'a', token: 't' },
      { id: '', token: 't' },
      { id: 'a', token: '' },
      { key: 'wrong', id: 'a' }, // missing params are checked before the key
    ];
    for (const [i, q] of cases.entries()) {
      const name = `C${i}`;
      if (!(await s.connect(name, q))) continue;
      await s.recv(name);
      await s.closed(name);
    }
  },
  [`C1 <- ${ERR_PARAMS}`, `C7 <- ${ERR_PARAMS}`, 'C7 closed 1005'],
);

scenario(
  'admission: wrong key, also before id-taken',
  { key: 'k1' },
  async (s) => {
    await s.join('A');
    await s.connect('W', { key: 'k2', id: 'other', token: 't' });
    await s.recv('W');
    await s.closed('W');
    await s.connect('W2', { key: 'K1', id: 'A', token: 'not-A-token' });
    await s.recv('W2');
    await s.closed('W2');
    await s.quiet('A', 100);
  },
  [`A <- ${OPEN}`, `W <- ${ERR_KEY}`, `W2 <- ${ERR_KEY}`, 'W2 closed 1005'],
);

scenario(
  'admission: id taken by another token; the holder is unaffected',
  {},
  async (s) => {
    await s.join('A', 'alice', 'tok-1');
    await s.join('B', 'bob', 'tok-2');
    await s.connect('T', { id: 'alice', token: 'tok-other' });
    await s.recv('T');
    await s.closed('T');
    s.send('B', { type: 'OFFER', dst: 'alice', payload: { still: 'there' } });
    await s.recv('A');
  },
  [`T <- ${ID_TAKEN}`, 'T closed 1005', 'A <- {"type":"OFFER","src":"bob","dst":"alice","payload":{"still":"there"}}'],
);

scenario(
  'admission: concurrent limit, checked after key and id-taken; freed on close',
  { concurrentLimit: 2 },
  async (s) => {
    await s.join('A');
    await s.join('B');
    await s.connect('L', { id: 'C', token: 'c' });
    await s.recv('L');
    await s.closed('L');
    await s.connect('T', { id: 'A', token: 'not-A' });
    await s.recv('T');
    await s.closed('T');
    await s.connect('K', { key: 'nope', id: 'D', token: 'd' });
    await s.recv('K');
    await s.closed('K');
    await s.close('B');
    // The server frees the slot when it sees the close; no event tells us when, so retry (bounded).
    const deadline = Date.now() + 5000;
    for (;;) {
      const c = await connectWs(s.srv.wsUrl({ key: s.srv.key, id: 'D', token: 'd' }));
      const first = await c.nextTextOrNull(RECV_MS);
      if (first === ERR_LIMIT && Date.now() < deadline) {
        await c.close();
        await sleep(50);
        continue;
      }
      s.clients.set('D', c);
      s.note(`D (after B closed) <- ${first}`);
      break;
    }
  },
  [`L <- ${ERR_LIMIT}`, 'L closed 1005', `T <- ${ID_TAKEN}`, `K <- ${ERR_KEY}`, `D (after B closed) <- ${OPEN}`],
);

// ---------------------------------------------------------------- relay

const SDP = 'v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n';

scenario(
  'relay: OFFER, ANSWER, CANDIDATE, LEAVE, EXPIRE rebuilt as {type,src,dst,payload} with src stamped',
  {},
  async (s) => {
    await s.join('A');
    await s.join('B');
    const offer = {
      sdp: { sdp: SDP, type: 'offer' },
      type: 'data',
      connectionId: 'dc_abc123',
      metadata: { probe: 'café ☃', n: [1, 2.5, -3, null, true] },
      label: 'dc-binary',
      reliable: true,
      serialization: 'binary',
    };
    s.send('A', { type: 'OFFER', payload: offer, dst: 'B' });
    await s.recv('B');
    s.send('B', { dst: 'A', type: 'ANSWER', payload: { sdp: { sdp: SDP, type: 'answer' }, type: 'data', connectionId: 'dc_abc123' } });
    await s.recv('A');
    const cand = { candidate: 'candidate:1 1 udp 2122194687 127.0.0.1 52972 typ host', sdpMid: '0', sdpMLineIndex: 0 };
    s.send('A', { type: 'CANDIDATE', src: 'mallory', dst: 'B', payload: { candidate: cand, type: 'data', connectionId: 'dc_abc123' }, extra: 1 });
    await s.recv('B');
    s.send('A', { type: 'CANDIDATE', dst: 'B' }); // no payload: omitted on relay
    await s.recv('B');
    s.send('A', { type: 'ANSWER', dst: 'B', payload: 'a string payload' });
    await s.recv('B');
    s.send('A', { type: 'OFFER', dst: 'B', payload: 42 });
    await s.recv('B');
    s.send('A', { type: 'OFFER', dst: 'B', payload: null });
    await s.recv('B');
    s.send('A', { type: 'ANSWER', dst: 'B', payload: [1, { k: 'v' }, 'x'] });
    await s.recv('B');
    s.send('A', { type: 'LEAVE', dst: 'B' });
    await s.recv('B');
    s.send('B', { type: 'EXPIRE', dst: 'A', payload: { x: 1 } });
    await s.recv('A');
    s.send('A', { type: 'OFFER', dst: 'A', payload: { to: 'self' } });
    await s.recv('A');
    // order of many frames between one pair is kept
    for (let i = 0; i < 20; i++) s.send('A', { type: 'CANDIDATE', dst: 'B', payload: { i } });
    for (let i = 0; i < 20; i++) await s.recv('B');
    await s.quiet('A', 100);
  },
  [
    `B <- {"type":"CANDIDATE","src":"A","dst":"B","payload":{"candidate":{"candidate":"candidate:1 1 udp 2122194687 127.0.0.1 52972 typ host","sdpMid":"0","sdpMLineIndex":0},"type":"data","connectionId":"dc_abc123"}}`,
    'B <- {"type":"CANDIDATE","src":"A","dst":"B"}',
    'B <- {"type":"LEAVE","src":"A","dst":"B"}',
    'A <- {"type":"EXPIRE","src":"B","dst":"A","payload":{"x":1}}',
    'A <- {"type":"OFFER","src":"A","dst":"A","payload":{"to":"self"}}',
  ],
);

scenario(
  'relay: other types are dropped, the socket stays usable',
  {},
  async (s) => {
    await s.join('A');
    await s.join('B');
    for (const type of ['HEARTBEAT', 'OPEN', 'ID-TAKEN', 'ERROR', 'INVALID-KEY', 'FOO', 'offer', '']) {
      s.send('A', { type, dst: 'B', payload: { dropped: type } });
    }
    s.send('A', { dst: 'B', payload: 'no type' });
    s.send('A', '[1,2]');
    s.send('A', '{}');
    // (frames that are not a JSON object break the reference: see the documented difference below)
    s.send('A', { type: 'OFFER', dst: 'B', payload: 'marker' });
    await s.recv('B');
    s.send('B', { type: 'ANSWER', dst: 'A', payload: 'A still open' });
    await s.recv('A');
    await s.quiet('B', 100);
  },
  ['B <- {"type":"OFFER","src":"A","dst":"B","payload":"marker"}', 'A <- {"type":"ANSWER","src":"B","dst":"A","payload":"A still open"}'],
);

// ---------------------------------------------------------------- queue and expiry

scenario(
  'queue: messages for an absent peer are delivered in order when it connects; LEAVE/EXPIRE are not queued',
  { expireTimeout: 1500 },
  async (s) => {
    await s.join('A');
    s.send('A', { type: 'OFFER', dst: 'B', payload: { n: 1 } });
    s.send('A', { type: 'LEAVE', dst: 'B' });
    s.send('A', { type: 'EXPIRE', dst: 'B' });
    s.send('A', { type: 'CANDIDATE', dst: 'B', payload: { n: 2 } });
    s.send('A', { type: 'ANSWER', dst: 'B', payload: { n: 3 } });
    await s.sync('A');
    await s.join('B');
    await s.recv('B');
    await s.recv('B');
    await s.recv('B');
    await s.quiet('B', 200);
    // delivered queues never expire: no EXPIRE for A (expire 1500 ms + 1000 ms reference sweep + margin)
    await s.quiet('A', 3000);
  },
  [
    `B <- ${OPEN}`,
    'B <- {"type":"OFFER","src":"A","dst":"B","payload":{"n":1}}',
    'B <- {"type":"CANDIDATE","src":"A","dst":"B","payload":{"n":2}}',
    'B <- {"type":"ANSWER","src":"A","dst":"B","payload":{"n":3}}',
    'B quiet',
    'A quiet',
  ],
);

scenario(
  'queue: after expire-timeout the sender gets one EXPIRE per destination and the queue is dropped',
  { expireTimeout: 1000 },
  async (s) => {
    await s.join('A');
    const t0 = Date.now();
    s.send('A', { type: 'OFFER', dst: 'C', payload: { n: 1 } });
    s.send('A', { type: 'CANDIDATE', dst: 'C', payload: { n: 2 } });
    s.send('A', { type: 'OFFER', dst: 'D', payload: { n: 3 } });
    await s.sync('A');
    await s.recvSet('A', 2, 5000);
    // reference: expiry sweep every 1000 ms, so EXPIRE comes 1000..2000 ms after the first queued message
    s.timing('EXPIRE', Date.now() - t0, 900, 3000);
    await s.quiet('A', 200);
    await s.join('C');
    await s.quiet('C', 300);
  },
  [
    'A <- set ["{\\"type\\":\\"EXPIRE\\",\\"src\\":\\"C\\",\\"dst\\":\\"A\\"}","{\\"type\\":\\"EXPIRE\\",\\"src\\":\\"D\\",\\"dst\\":\\"A\\"}"]',
    'EXPIRE within [900, 3000] ms',
    `C <- ${OPEN}`,
    'C quiet',
  ],
);

// ---------------------------------------------------------------- LEAVE

scenario(
  'LEAVE: with dst relayed, to an absent dst dropped, without dst unregisters the sender',
  {},
  async (s) => {
    await s.join('A');
    await s.join('B');
    s.send('A', { type: 'LEAVE', dst: 'B', payload: { bye: true } });
    await s.recv('B');
    s.send('A', { type: 'LEAVE', dst: 'Z' });
    await s.sync('A');
    await s.join('Z');
    await s.quiet('Z', 200);
    s.send('A', { type: 'LEAVE' });
    // The id is free again: another token may take it now.
    const deadline = Date.now() + 5000;
    for (;;) {
      const c = await connectWs(s.srv.wsUrl({ key: s.srv.key, id: 'A', token: 'new-token' }));
      const first = await c.nextTextOrNull(RECV_MS);
      if (first === ID_TAKEN && Date.now() < deadline) {
        await c.close();
        await sleep(50);
        continue;
      }
      s.clients.set('A2', c);
      s.note(`A2 (same id, new token) <- ${first}`);
      break;
    }
    s.send('B', { type: 'OFFER', dst: 'A', payload: 'for the new A' });
    await s.recv('A2');
    await s.quiet('A', 100);
  },
  [
    'B <- {"type":"LEAVE","src":"A","dst":"B","payload":{"bye":true}}',
    'Z quiet',
    `A2 (same id, new token) <- ${OPEN}`,
    'A2 <- {"type":"OFFER","src":"B","dst":"A","payload":"for the new A"}',
  ],
);

// ---------------------------------------------------------------- liveness

scenario(
  'liveness: a client without HEARTBEAT is closed after alive-timeout; HEARTBEAT keeps one alive',
  { aliveTimeout: 1000 },
  async (s) => {
    await s.join('A');
    await s.join('B');
    const t0 = Date.now();
    const beat = setInterval(() => s.clients.get('B')?.send('{"type":"HEARTBEAT"}'), 200);
    try {
      await s.closed('A', 5000);
      // reference: liveness check every 300 ms
      s.timing('A kicked', Date.now() - t0, 900, 2500);
      await s.quiet('B', 300);
      // A's id is free again
      await s.join('A3', 'A', 'another-token');
    } finally {
      clearInterval(beat);
    }
  },
  ['A closed 1005', 'A kicked within [900, 2500] ms', 'B quiet', `A3 <- ${OPEN}`],
);

// ---------------------------------------------------------------- HTTP API and CORS

const ORIGIN = 'http://app.example:8080';

scenario(
  'HTTP: info, /id (any key), /peers 401 without discovery, CORS reflected',
  { path: '/myapp', key: 'k1' },
  async (s) => {
    await s.http('info', '', { headers: { origin: ORIGIN } });
    await s.http('info, no Origin', '');
    await s.http('id', 'k1/id?ts=17954444209730.66&version=1.5.5', { headers: { origin: ORIGIN } });
    await s.http('id, other key', 'whatever/id', { headers: { origin: 'http://other.example' } });
    await s.http('id, no Origin', 'k1/id');
    await s.http('peers', 'k1/peers', { headers: { origin: ORIGIN } });
    // error pages: only the status and CORS matter (the reference sends an Express HTML page)
    const cors = ['access-control-allow-origin', 'vary'];
    await s.http('unknown', 'k1/nothing', { headers: { origin: ORIGIN }, body: false, compare: cors });
    await s.http('preflight', 'k1/id', {
      method: 'OPTIONS',
      headers: { origin: ORIGIN, 'access-control-request-method': 'GET', 'access-control-request-headers': 'x-requested-with' },
    });
    await s.http('preflight, no request headers', 'k1/peers', {
      method: 'OPTIONS',
      headers: { origin: ORIGIN, 'access-control-request-method': 'GET' },
    });
  },
  [
    `info: GET /myapp/ -> 200 {"content-type":"application/json; charset=utf-8","access-control-allow-origin":"${ORIGIN}","vary":"origin"} {"name":"PeerJS Server","description":"A server side element to broker connections between PeerJS clients.","website":"https://peerjs.com/"}`,
    `id: GET /myapp/k1/id?ts=17954444209730.66&version=1.5.5 -> 200 {"content-type":"text/html; charset=utf-8","access-control-allow-origin":"${ORIGIN}","vary":"origin"} <uuid-v4>`,
    `peers: GET /myapp/k1/peers -> 401 {"content-type":"text/plain; charset=utf-8","access-control-allow-origin":"${ORIGIN}","vary":"origin"} Unauthorized`,
  ],
);

scenario(
  'HTTP: /peers lists connected ids with --allow-discovery',
  { allowDiscovery: true },
  async (s) => {
    await s.http('peers, empty', 'peerjs/peers', { headers: { origin: ORIGIN } });
    await s.join('A', 'alice');
    await s.join('B', 'bob');
    await s.http('peers, two', 'peerjs/peers', { headers: { origin: ORIGIN }, body: (b) => JSON.stringify(JSON.parse(b).sort()) });
    await s.close('A');
    // the server drops alice when it sees the close; poll the HTTP view (bounded)
    const deadline = Date.now() + 5000;
    let ids;
    do {
      ids = JSON.parse((await httpRequest(`${s.srv.httpBase}peerjs/peers`)).body);
      if (ids.length === 1) break;
      await sleep(50);
    } while (Date.now() < deadline);
    s.note(`peers after alice closed: ${JSON.stringify(ids)}`);
  },
  [
    `peers, empty: GET /peerjs/peers -> 200 {"content-type":"application/json; charset=utf-8","access-control-allow-origin":"${ORIGIN}","vary":"origin"} []`,
    'peers after alice closed: ["bob"]',
  ],
);

scenario(
  'CORS: --cors allow-list echoes listed origins only; preflight',
  { cors: ['http://a.example', 'http://b.example:3000'] },
  async (s) => {
    await s.http('id, listed a', 'peerjs/id', { headers: { origin: 'http://a.example' } });
    await s.http('id, listed b', 'peerjs/id', { headers: { origin: 'http://b.example:3000' } });
    await s.http('id, not listed', 'peerjs/id', { headers: { origin: 'http://c.example' } });
    await s.http('info, not listed', '', { headers: { origin: 'http://c.example' } });
    await s.http('preflight, listed', 'peerjs/id', {
      method: 'OPTIONS',
      headers: { origin: 'http://a.example', 'access-control-request-method': 'GET', 'access-control-request-headers': 'x-foo' },
    });
    await s.http('preflight, not listed', 'peerjs/id', {
      method: 'OPTIONS',
      headers: { origin: 'http://c.example', 'access-control-request-method': 'GET' },
    });
  },
  [
    'id, not listed: GET /peerjs/id -> 200 {"content-type":"text/html; charset=utf-8","vary":"origin"} <uuid-v4>',
    'preflight, listed: OPTIONS /peerjs/id -> 204 {"access-control-allow-origin":"http://a.example","access-control-allow-methods":"get,head,put,patch,post,delete","access-control-allow-headers":"x-foo","vary":"origin,access-control-request-headers"} ',
  ],
);

// ---------------------------------------------------------------- deliberate differences

test('documented fix: same id and token reconnecting gets OPEN and replaces the old socket (peerjs#1289)', { timeout: 60000 }, async () => {
  const script = async (s) => {
    await s.join('A', 'alice', 'tok');
    await s.join('B', 'bob', 'tok-b');
    await s.connect('A2', { id: 'alice', token: 'tok' });
    await s.recv('A2', 1000);
    await s.closed('A', 1000);
    s.send('B', { type: 'OFFER', dst: 'alice', payload: 'to the new socket' });
    await s.recv('A2');
  };
  const { ref, target } = await both({}, script, 'documented-difference');
  const common = [`A <- ${OPEN}`, `B <- ${OPEN}`];
  const relayed = 'A2 <- {"type":"OFFER","src":"bob","dst":"alice","payload":"to the new socket"}';
  // Reference: no OPEN on the new socket, the old one stays open.
  for (const line of [...common, 'A2 <- (nothing within 1000 ms)', 'A still open after 1000 ms', relayed]) {
    assert.ok(ref.includes(line), `reference: expected ${line}\n${ref.join('\n')}`);
  }
  if (TARGET === 'reference') return;
  // Ours: OPEN on the new socket, the old one closed.
  const oursExpected = [...common, `A2 <- ${OPEN}`, relayed];
  for (const line of oursExpected) {
    assert.ok(target.includes(line), `${TARGET}: expected ${line}\n${target.join('\n')}`);
  }
  assert.ok(target.some((l) => /^A closed \d+$/.test(l)), `${TARGET}: old socket must be closed\n${target.join('\n')}`);
});

scenario(
  'relay: a JSON array is not a message, even one that lists type, dst and payload in order',
  {},
  async (s) => {
    await s.join('A');
    await s.join('B');
    s.send('A', '["OFFER","B",{"sdp":"from an array"}]');
    s.send('A', '[]');
    s.send('A', { type: 'OFFER', dst: 'B', payload: 'from an object' });
    await s.recv('B');
    await s.quiet('B', 200);
  },
  ['B <- {"type":"OFFER","src":"A","dst":"B","payload":"from an object"}'],
);

test('documented difference: payload bytes are relayed verbatim (the reference re-serialises them)', { timeout: 60000 }, async () => {
  const frame = '{ "type" : "OFFER", "dst":"B",  "payload" : { "n" : 1.50, "s" : "\\u0041" } }';
  const script = async (s) => {
    await s.join('A');
    await s.join('B');
    s.send('A', frame);
    await s.recv('B');
  };
  const { ref, target } = await both({}, script, 'documented-difference');
  const last = (log) => log.at(-1).replace(/^B <- /, '');
  assert.equal(last(ref), '{"type":"OFFER","src":"A","dst":"B","payload":{"n":1.5,"s":"A"}}');
  // Same meaning either way; only the payload's spelling may differ.
  assert.deepEqual(JSON.parse(last(target)), JSON.parse(last(ref)));
  assert.match(last(target), /^\{"type":"OFFER","src":"A","dst":"B","payload":/);
});

test('documented fix: a frame that is not a JSON object is ignored; the reference stops reading that socket', { timeout: 60000 }, async () => {
  const script = async (s) => {
    await s.join('A');
    await s.join('B');
    for (const bad of ['{not json', 'null', '"just a string"']) {
      s.send('A', bad);
      s.send('A', { type: 'OFFER', dst: 'B', payload: `after ${bad}` });
      await s.recv('B', 1000);
    }
    s.send('B', { type: 'ANSWER', dst: 'A', payload: 'A can still receive' });
    await s.recv('A');
  };
  const { ref, target } = await both({}, script, 'documented-difference');
  // Reference: the parse error is re-thrown from an EventEmitter 'error' without listener inside ws's
  // receiver, so nothing A sends afterwards is read (it can still receive).
  const stalled = ['B <- (nothing within 1000 ms)', 'A <- {"type":"ANSWER","src":"B","dst":"A","payload":"A can still receive"}'];
  for (const line of stalled) assert.ok(ref.includes(line), `reference: expected ${line}\n${ref.join('\n')}`);
  if (TARGET === 'reference') return;
  for (const bad of ['{not json', 'null', '"just a string"']) {
    const line = `B <- ${JSON.stringify({ type: 'OFFER', src: 'A', dst: 'B', payload: `after ${bad}` })}`;
    assert.ok(target.includes(line), `${TARGET}: expected ${line}\n${target.join('\n')}`);
  }
});

test('documented fixes: oversized frames, bad ids and floods get ERROR and close on ours; the reference accepts them', { timeout: 60000 }, async () => {
  const big = 'x'.repeat(300 * 1024);
  const script = async (s) => {
    await s.join('A');
    await s.join('B');
    // a 300 KiB frame (ours: max frame 256 KiB by default)
    s.client('A').send(JSON.stringify({ type: 'OFFER', dst: 'B', payload: big }));
    s.note('A -> OFFER with a 300 KiB payload');
    const f = await s.client('B').nextTextOrNull(3000);
    s.note(`B got the big OFFER: ${f !== null && f.length > big.length}`);
    const a = await s.client('A').nextTextOrNull(1000);
    s.note(`A <- ${a}`);
    await s.closed('A', 1000);
    // ids longer than 256 bytes or with control characters
    await s.connect('L', { id: 'i'.repeat(300), token: 't' });
    await s.recv('L');
    await s.closed('L', 1000);
    await s.connect('K', { id: 'bad\u0001id', token: 't' });
    await s.recv('K');
    await s.closed('K', 1000);
    // a flood of 2,000 frames at once (ours: 200/s sustained, burst 400)
    await s.join('F');
    for (let i = 0; i < 2000; i++) s.client('F').send(JSON.stringify({ type: 'CANDIDATE', dst: 'B', payload: i }));
    s.note('F -> 2000 CANDIDATEs');
    let last = null;
    for (;;) {
      const m = await s.client('F').nextTextOrNull(1500);
      if (m === null) break;
      last = m;
    }
    s.note(`F <- ${last}`);
    await s.closed('F', 1000);
  };
  const { ref, target } = await both({}, script, 'documented-limits');
  for (const line of [
    'B got the big OFFER: true',
    'A <- null',
    'A still open after 1000 ms',
    `L <- ${OPEN}`,
    `K <- ${OPEN}`,
    'F <- null',
    'F still open after 1000 ms',
  ]) {
    assert.ok(ref.includes(line), `reference: expected ${line}\n${ref.join('\n')}`);
  }
  if (TARGET === 'reference') return;
  const expectLine = (re) => assert.ok(target.some((l) => re.test(l)), `${TARGET}: expected ${re}\n${target.join('\n')}`);
  expectLine(/^B got the big OFFER: false$/);
  expectLine(/^A <- \{"type":"ERROR","payload":\{"msg":"[^"]*too big[^"]*"\}\}$/i);
  expectLine(/^A closed \d+$/);
  expectLine(/^L <- \{"type":"ERROR","payload":\{"msg":"[^"]*256[^"]*"\}\}$/);
  expectLine(/^L closed \d+$/);
  expectLine(/^K <- \{"type":"ERROR","payload":\{"msg":"[^"]*control[^"]*"\}\}$/);
  expectLine(/^K closed \d+$/);
  expectLine(/^F <- \{"type":"ERROR","payload":\{"msg":"[^"]*[Rr]ate[^"]*"\}\}$/);
  expectLine(/^F closed \d+$/);
});

test('documented fixes: bounded offline queue, malformed-frame burst, LEAVE without dst stops relaying', { timeout: 60000 }, async () => {
  const script = async (s) => {
    await s.join('A');
    // 70 messages for an absent peer (ours: 64 per peer by default; the overflow is EXPIREd at once)
    for (let i = 0; i < 70; i++) s.client('A').send(JSON.stringify({ type: 'CANDIDATE', dst: 'Z', payload: i }));
    s.note('A -> 70 CANDIDATEs for absent Z');
    s.client('A').send(JSON.stringify({ type: 'OFFER', dst: 'A', payload: 'marker' })); // comes back after the 70 were handled
    const early = [];
    for (;;) {
      const f = await s.client('A').nextTextOrNull(1000);
      if (f === null || f.includes('"marker"')) break;
      early.push(f);
    }
    s.note(`A got ${early.length} early frames, EXPIRE from Z: ${early.includes('{"type":"EXPIRE","src":"Z","dst":"A"}')}`);
    await s.join('Z');
    let queued = 0;
    while ((await s.client('Z').nextTextOrNull(500)) !== null) queued++;
    s.note(`Z got ${queued} queued frames`);
    // a burst of 12 frames that are not JSON (ours: 10 tolerated)
    await s.join('M');
    for (let i = 0; i < 12; i++) s.client('M').send('{not json');
    s.note('M -> 12 malformed frames');
    await s.recv('M', 1000);
    await s.closed('M', 1000);
    // LEAVE without dst, then the same socket keeps sending
    await s.join('B');
    await s.join('L');
    s.send('L', { type: 'LEAVE' });
    s.send('L', { type: 'OFFER', dst: 'B', payload: 'after LEAVE' });
    await s.recv('B', 1000);
  };
  const { ref, target } = await both({}, script, 'documented-queues');
  for (const line of [
    'A got 0 early frames, EXPIRE from Z: false',
    'Z got 70 queued frames',
    'M <- (nothing within 1000 ms)',
    'M still open after 1000 ms',
    'B <- {"type":"OFFER","src":"L","dst":"B","payload":"after LEAVE"}',
  ]) {
    assert.ok(ref.includes(line), `reference: expected ${line}\n${ref.join('\n')}`);
  }
  if (TARGET === 'reference') return;
  const expectLine = (re) => assert.ok(target.some((l) => re.test(l)), `${TARGET}: expected ${re}\n${target.join('\n')}`);
  expectLine(/^A got [1-9]\d* early frames, EXPIRE from Z: true$/);
  expectLine(/^Z got 64 queued frames$/);
  expectLine(/^M <- \{"type":"ERROR","payload":\{"msg":"Too many malformed messages"\}\}$/);
  expectLine(/^M closed 1008$/);
  expectLine(/^B <- \(nothing within 1000 ms\)$/);
});
