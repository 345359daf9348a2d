// The web chat served by `ouroboros node` (GET / and /chat), in headless Chromium with the real
// peerjs client (served locally through --peerjs-url): two people chat, a reload shows the history,
// HTML in a message renders as text, keyboard-only use, 360 px and desktop screenshots, no console
// errors.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { cleanupAll, register } from './lib/cleanup.mjs';
import { launchBrowser } from './lib/browser.mjs';
import { startStaticServer } from './lib/static-server.mjs';
import { REPO_DIR } from './lib/servers.mjs';
import { startNode } from './lib/relay-page.mjs';
import { say, stored } from './lib/chat-page.mjs';

const ARTIFACTS = path.join(REPO_DIR, 'tests', 'artifacts');
let site; // serves node_modules/peerjs (what --peerjs-url points at)
let node;
let alice; // two separate browsers = two independent profiles
let bob;

before(async () => {
  await mkdir(ARTIFACTS, { recursive: true });
  site = await startStaticServer({ pages: {} });
  node = await startNode({ extraArgs: ['--peerjs-url', site.url('/node_modules/peerjs/dist/peerjs.min.js')] });
  const origin = `http://${node.host}:${node.port}`;
  alice = await launchBrowser({ origin });
  bob = await launchBrowser({ origin });
});
after(cleanupAll);

const chatUrl = (name, room = 'lobby') => `${node.httpBase}?ice=none&room=${room}&name=${encodeURIComponent(name)}`;

async function openChat(browser, name, room) {
  const page = await browser.newPage(chatUrl(name, room), { waitReady: false });
  await page.waitForFunction(() => document.body.dataset.conn === 'live', null, { timeout: 20000 });
  return page;
}

async function waitForBody(page, text) {
  await page.waitForFunction(
    (t) => [...document.querySelectorAll('#message-list li[data-seq]:not(.pending) .body')].some((b) => b.textContent === t),
    text,
    { timeout: 15000 },
  );
}

test('the root serves the chat to browsers and the PeerJS JSON to programs', async () => {
  const html = await fetch(node.httpBase, { headers: { accept: 'text/html' } });
  assert.match(html.headers.get('content-type'), /^text\/html/);
  const body = await html.text();
  assert.ok(body.includes(site.url('/node_modules/peerjs/dist/peerjs.min.js')));
  const json = await (await fetch(node.httpBase)).json();
  assert.equal(json.name, 'PeerJS Server');
  const chat = await fetch(`${node.httpBase}chat`);
  assert.match(chat.headers.get('content-type'), /^text\/html/);
});

test('two people chat; pending is marked until acked; reload shows history; HTML stays text', async () => {
  const a = await openChat(alice, 'alice');
  const b = await openChat(bob, 'bob');
  // Presence: each sees the other.
  await a.waitForFunction(() => [...document.querySelectorAll('#presence li')].some((li) => li.textContent === 'bob'));
  await b.waitForFunction(() => [...document.querySelectorAll('#presence li')].some((li) => li.textContent === 'alice'));
  // Generation shown.
  assert.equal(await a.textContent('#generation'), '0');

  await say(a, 'hello bob');
  await waitForBody(b, 'hello bob');
  await waitForBody(a, 'hello bob');
  assert.equal(await a.$$eval('#message-list li.pending', (l) => l.length), 0, 'acked: no longer pending');
  await say(b, 'hi alice');
  await waitForBody(a, 'hi alice');

  // A message that is HTML shows as text.
  const evil = '<img src=x onerror="window.pwned=1"><b>bold</b><script>window.pwned=2</script>';
  await say(a, evil);
  await waitForBody(b, evil);
  assert.equal(await b.$$eval('#message-list b, #message-list img, #message-list script', (l) => l.length), 0);
  assert.equal(await b.evaluate(() => window.pwned), undefined);

  const seenA = await stored(a);
  const seenB = await stored(b);
  assert.deepEqual(seenA.map((m) => m.body), ['hello bob', 'hi alice', evil]);
  assert.deepEqual(seenB, seenA, 'both screens show the same messages in the same order');
  assert.deepEqual(seenA.map((m) => m.seq), [1, 2, 3]);

  // Bob reloads: the history comes back.
  await b.reload();
  await b.waitForFunction(() => document.body.dataset.conn === 'live');
  await waitForBody(b, evil);
  assert.deepEqual(await stored(b), seenA);

  // Screenshots: desktop and 360 px.
  await a.setViewportSize({ width: 1100, height: 700 });
  await a.screenshot({ path: path.join(ARTIFACTS, 'chat-desktop.png') });
  await b.setViewportSize({ width: 360, height: 740 });
  await b.screenshot({ path: path.join(ARTIFACTS, 'chat-360.png'), fullPage: true });
  const overflow = await b.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert.ok(overflow <= 0, `no horizontal scroll at 360 px (overflow ${overflow})`);
  await a.close();
  await b.close();
});

test('infinite scroll-back pages through history', async () => {
  // Fill a room through the page of one person, then open it fresh in another browser.
  const a = await openChat(alice, 'alice', 'long');
  await a.evaluate(async () => {
    // Publish 80 messages through the page's own connection (fast path, same protocol).
    const st = window.ouroboros;
    for (let i = 1; i <= 80; i++) st.conn.send({ op: 'publish', room: 'long', id: `bulk-${i}`, body: `line ${i}` });
  });
  await waitForBody(a, 'line 80');
  const b = await openChat(bob, 'bob', 'long');
  await waitForBody(b, 'line 80');
  const first = await stored(b);
  assert.ok(first.length < 80, `only the newest page at first (${first.length})`);
  // Scroll to the top until the first message is there.
  for (let i = 0; i < 10; i++) {
    const items = await stored(b);
    if (items[0]?.seq === 1) break;
    await b.evaluate(() => { document.getElementById('messages').scrollTop = 0; });
    await b.waitForFunction((n) => document.querySelectorAll('#message-list li[data-seq]').length > n || document.getElementById('history-status').textContent.includes('beginning'), items.length);
  }
  const all = await stored(b);
  assert.deepEqual(all.map((m) => m.seq), Array.from({ length: 80 }, (_, i) => i + 1));
  assert.match(await b.textContent('#history-status'), /beginning of the room/);
  await a.close();
  await b.close();
});

test('WebRTC impossible: the chat falls back to the relay WebSocket and talks with a WebRTC user', async () => {
  // ?ice=relay with no TURN server: the browser gathers no candidate, no DataChannel can open
  // (what a network without UDP to the node looks like). ?transport defaults to auto.
  const started = Date.now();
  const a = await alice.newPage(`${node.httpBase}?ice=relay&fallback=1500&room=fb&name=alice`, { waitReady: false });
  await a.waitForFunction(() => document.body.dataset.conn === 'live', null, { timeout: 20000 });
  const tookMs = Date.now() - started;
  assert.equal(await a.evaluate(() => document.body.dataset.transport), 'ws');
  assert.match(await a.textContent('#conn-text'), /WebSocket/);
  assert.ok(tookMs < 1500 + 5000, `live over the WebSocket soon after the 1.5 s WebRTC limit (${tookMs} ms)`);
  const b = await openChat(bob, 'bob', 'fb');
  assert.equal(await b.evaluate(() => document.body.dataset.transport), 'webrtc');
  await a.waitForFunction(() => [...document.querySelectorAll('#presence li')].some((li) => li.textContent === 'bob'));
  await say(a, 'from the websocket');
  await waitForBody(b, 'from the websocket');
  await say(b, 'from webrtc');
  await waitForBody(a, 'from webrtc');
  assert.deepEqual((await stored(a)).map((m) => m.body), ['from the websocket', 'from webrtc']);
  assert.equal(await a.$$eval('#message-list li.pending', (l) => l.length), 0, 'acked over the WebSocket');
  // The node shows each client's path.
  const st = await (await fetch(`${node.httpBase}status.json`)).json();
  const paths = Object.fromEntries(st.clients.map((c) => [c.client, c.transport]));
  assert.equal(paths.alice, 'ws');
  assert.equal(paths.bob, 'webrtc');
  // ?transport=ws goes straight to the WebSocket.
  const c = await alice.newPage(`${node.httpBase}?transport=ws&room=fb&name=carol`, { waitReady: false });
  await c.waitForFunction(() => document.body.dataset.conn === 'live', null, { timeout: 20000 });
  assert.equal(await c.evaluate(() => document.body.dataset.transport), 'ws');
  await waitForBody(c, 'from webrtc');
  await a.close();
  await b.close();
  await c.close();
});

test('keyboard only: join a room, type, send', async () => {
  const a = await openChat(alice, 'alice', 'kb');
  // Tab to the room input, choose a room, Enter; then Tab to the composer and send with Enter.
  await a.focus('#room-input');
  await a.keyboard.press('Control+A');
  await a.keyboard.type('keys');
  await a.keyboard.press('Enter');
  await a.waitForFunction(() => document.getElementById('room-title').textContent === 'keys');
  let focused = '';
  for (let i = 0; i < 15 && focused !== 'composer-input'; i++) {
    await a.keyboard.press('Tab');
    focused = await a.evaluate(() => document.activeElement?.id ?? '');
  }
  assert.equal(focused, 'composer-input', 'the composer is reachable with Tab');
  await a.keyboard.type('typed without a mouse');
  await a.keyboard.press('Enter');
  await waitForBody(a, 'typed without a mouse');
  await a.close();
});

test('a local ring rotates twice while both keep sending: every message once, in order, on both screens', async () => {
  // Its own ring: lifetime 10 s, successor launched 4 s before the end (a local child process).
  const ring = await startNode({
    extraArgs: ['--lifetime', '10s', '--handoff-lead', '4s', '--launcher', 'local', '--peerjs-url', site.url('/node_modules/peerjs/dist/peerjs.min.js')],
  });
  const stopRing = async () => {
    // The newest generation's pid is in the data dir; SIGINT stops the ring cleanly.
    try {
      const pid = Number((await readFile(path.join(ring.dataDir, 'ouroboros.pid'), 'utf8')).trim());
      if (pid && pid !== ring.pid) {
        process.kill(pid, 'SIGINT');
        // A node told to stop writes its last record (`ended`) into the data dir: wait for it
        // to exit before the dir is removed (bounded: 10 s).
        for (let i = 0; i < 200; i++) {
          try {
            process.kill(pid, 0);
          } catch {
            break; // gone
          }
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
      }
    } catch {
      // no ring left
    }
  };
  const unregister = register('local ring', stopRing);
  const ringStarted = Date.now();
  const origin = `http://${ring.host}:${ring.port}`;
  const ab = await launchBrowser({ origin });
  const bb = await launchBrowser({ origin });
  try {
    const open = async (browser, name) => {
      const page = await browser.newPage(`${ring.httpBase}?ice=none&room=ring&name=${name}`.replace('ice=none&', name.includes('ice=') ? '' : 'ice=none&'), { waitReady: false });
      await page.waitForFunction(() => document.body.dataset.conn === 'live', null, { timeout: 20000 });
      return page;
    };
    const a = await open(ab, 'ann');
    // Ben cannot do WebRTC (relay-only ICE, no TURN): he follows the rotations on the WebSocket.
    const b = await open(bb, 'ben&ice=relay&fallback=1000');
    assert.equal(await b.evaluate(() => document.body.dataset.transport), 'ws');
    const sent = [];
    const deadline = Date.now() + 60000;
    let i = 0;
    const gen = async (p) => Number(await p.textContent('#generation'));
    // Keep talking until both screens show generation 2, then a few more messages.
    let after = 0;
    while (Date.now() < deadline && after < 4) {
      i++;
      const who = i % 2 ? a : b;
      const text = `${i % 2 ? 'ann' : 'ben'} says ${i}`;
      await say(who, text);
      sent.push(text);
      await who.waitForTimeout(400); // the pace of people typing, not synchronisation
      if ((await gen(a)) >= 2 && (await gen(b)) >= 2) after++;
    }
    assert.ok((await gen(a)) >= 2 && (await gen(b)) >= 2, 'both followed two rotations');
    for (const p of [a, b]) {
      await p.waitForFunction(() => document.body.dataset.conn === 'live' && !document.querySelector('#message-list li.pending'), null, { timeout: 30000 });
      await waitForBody(p, sent[sent.length - 1]);
    }
    const sa = await stored(a);
    const sb = await stored(b);
    assert.deepEqual(sa.map((m) => m.body), sent, 'every message exactly once, in order');
    assert.deepEqual(sb, sa, 'both screens agree');
    assert.equal(await b.evaluate(() => document.body.dataset.transport), 'ws', 'ben is still on the WebSocket');
    assert.equal(await a.evaluate(() => document.body.dataset.transport), 'webrtc', 'ann is still on WebRTC');
    assert.deepEqual(sa.map((m) => m.seq), sent.map((_, k) => k + 1), 'dense sequence numbers across generations');
    // Issue 14, point 6: both pinned the ring key from the signed record and followed only
    // signed moves (a refused welcome or moved would have stopped them above); each keeps
    // its name's token for the next connection.
    for (const p of [a, b]) {
      const t = await p.evaluate(() => ({ key: window.ouroboros.trust.keyText, token: localStorage.getItem('ouroboros.token.' + window.ouroboros.name) }));
      assert.match(t.key ?? '', /^[A-Za-z0-9_-]{43}$/, 'the ring key is pinned (WebCrypto Ed25519)');
      assert.match(t.token ?? '', /^[A-Za-z0-9_-]{43}$/, 'the name token is kept');
    }
    // The uptime shown is the current node's (read from the successor's own record), not the
    // first generation's: generation 2 started at least one lifetime after the ring did.
    const seconds = (t) => t.split(' ').reduce((acc, part) => {
      const n = Number(part.slice(0, -1));
      return acc + n * ({ d: 86400, h: 3600, m: 60, s: 1 }[part.slice(-1)] || 0);
    }, 0);
    await a.waitForFunction(() => /\d/.test(document.getElementById('uptime').textContent), null, { timeout: 5000 });
    const shown = seconds(await a.textContent('#uptime'));
    const ringAge = (Date.now() - ringStarted) / 1000;
    assert.ok(shown < ringAge - 5, `uptime ${shown}s is the current node's, not the ring's (${ringAge.toFixed(1)}s)`);
    await a.screenshot({ path: path.join(ARTIFACTS, 'chat-after-rotations.png') });
    ab.assertNoConsoleErrors([/Failed to load resource/, /Lost connection to server/, /Could not connect to peer/]);
    bb.assertNoConsoleErrors([/Failed to load resource/, /Lost connection to server/, /Could not connect to peer/]);
  } finally {
    await ab.close();
    await bb.close();
    await stopRing();
    unregister();
    await ring.stop();
  }
});

test('no console errors in either browser', () => {
  alice.assertNoConsoleErrors();
  bob.assertNoConsoleErrors();
});
