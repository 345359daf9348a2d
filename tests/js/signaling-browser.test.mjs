// Real-browser test of the signaling server: the unmodified peerjs 1.5.5 client in headless Debian
// Chromium (playwright-core, flags per shared/reference/browser-testing.md) against our server, and the
// same script against the reference `peer` server where that is meaningful.
//
// Per server: two Peers get ids from the server's /id endpoint and open; A connects to B with `binary`,
// `json` and `raw`, exchanges messages and a 1 MiB binary blob (echoed back intact); `reconnect()` after
// `disconnect()` gets `open`; a reconnect while the server still holds the registration gets `open` on
// ours (peerjs#1289; the reference never answers, asserted as the known bug); an id taken by another
// Peer gives `unavailable-id`; connecting to an absent peer gives `peer-unavailable`.
//
// Run: cd tests/js && node --test signaling-browser.test.mjs
// Env: BROWSER_TARGETS=ouroboros,reference (default both), OUROBOROS_BIN, CHROMIUM (see lib/).

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from './lib/servers.mjs';
import { openPeerHarness } from './lib/browser.mjs';
import { cleanupAll } from './lib/cleanup.mjs';
import { httpRequest } from './lib/net.mjs';

after(cleanupAll);

const TARGETS = (process.env.BROWSER_TARGETS ?? 'ouroboros,reference').split(',').filter(Boolean);
const EXPIRE_MS = 1000;
const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

/** FNV-1a of the harness byte pattern `(i*31+7)&255` (same as H.describe in the page). */
function patternFnv(n) {
  let h = 0x811c9dc5;
  for (let i = 0; i < n; i++) {
    h ^= (i * 31 + 7) & 255;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h.toString(16);
}

for (const kind of TARGETS) {
  describe(`peerjs 1.5.5 in Chromium against the ${kind} server`, { timeout: 180000 }, () => {
    let srv;
    let h;
    let n = 0;
    const call = (fn, ...args) => h.page.evaluate(fn, args);
    const open = (name, id, extra = {}, ms = 10000) =>
      call(([name, id, opts, ms]) => H.open(name, id, opts, ms), name, id, srv.peerOptions(extra), ms);

    /** Polls the discovery endpoint (bounded) until `id` is no longer registered. */
    const waitUntilGone = async (id, ms = 5000) => {
      const deadline = Date.now() + ms;
      for (;;) {
        const r = await httpRequest(`${srv.httpBase}${srv.key}/peers`);
        assert.equal(r.status, 200);
        if (!JSON.parse(r.body).includes(id)) return;
        if (Date.now() > deadline) assert.fail(`${id} still registered after ${ms} ms`);
        await new Promise((res) => setTimeout(res, 25));
      }
    };

    before(async () => {
      srv = await startServer(kind, { path: '/myapp', key: 'browserkey', expireTimeout: EXPIRE_MS, allowDiscovery: true });
      h = await openPeerHarness();
    });

    after(async () => {
      await h?.close();
      await srv?.stop();
    });

    test('two peers get server ids, connect with binary, json and raw, exchange messages and a 1 MiB blob', { timeout: 90000 }, async () => {
      const a = await open('A', null);
      const b = await open('B', null);
      assert.ok(a.ok, `A open: ${JSON.stringify(a)}`);
      assert.ok(b.ok, `B open: ${JSON.stringify(b)}`);
      assert.match(a.id, UUID_V4);
      assert.match(b.id, UUID_V4);
      assert.notEqual(a.id, b.id);
      await call(() => H.echo('B'));

      const cases = {
        binary: [
          [{ a: 1, s: 'héllo ☃', list: [1, 2, 3], nested: { t: true, f: null } }, { json: '{"a":1,"s":"héllo ☃","list":[1,2,3],"nested":{"t":true,"f":null}}' }],
          ['a string', { json: '"a string"' }],
          [-42.5, { json: '-42.5' }],
          [{ $bytes: 4 }, { byteLength: 4, fnv: patternFnv(4) }],
          [{ $bytes: 1 << 20 }, { byteLength: 1 << 20, fnv: patternFnv(1 << 20) }],
        ],
        json: [
          [{ a: 1, s: 'héllo', list: [1, 2, 3] }, { json: '{"a":1,"s":"héllo","list":[1,2,3]}' }],
          ['a string', { json: '"a string"' }],
          [7, { json: '7' }],
        ],
        raw: [
          ['a raw string', { json: '"a raw string"' }],
          [{ $bytes: 65536 }, { byteLength: 65536, fnv: patternFnv(65536) }],
        ],
      };
      for (const [serialization, exchanges] of Object.entries(cases)) {
        const label = `dc-${serialization}`;
        const c = await call(
          ([dst, opts]) => H.connect('A', dst, opts),
          b.id,
          { serialization, label, reliable: serialization === 'binary', metadata: { probe: serialization } },
        );
        assert.ok(c.ok, `${serialization} connection: ${JSON.stringify(c)}`);
        assert.equal(c.serialization, serialization);
        for (const [value, expected] of exchanges) {
          const r = await call(([label, value]) => H.roundTrip('A', label, value, 30000), label, value);
          assert.ok(r.ok, `${serialization} round trip of ${JSON.stringify(value)}: ${JSON.stringify(r)}`);
          if (expected.json !== undefined) {
            assert.deepEqual(r.value, expected, `${serialization}: ${JSON.stringify(value)}`);
          } else {
            assert.ok(r.value.bytes, `${serialization}: expected binary, got ${JSON.stringify(r.value)}`);
            assert.equal(r.value.byteLength, expected.byteLength, `${serialization}: byte length`);
            assert.equal(r.value.fnv, expected.fnv, `${serialization}: content checksum`);
          }
        }
      }
      await call(() => [H.destroy('A'), H.destroy('B')]);
    });

    test('reconnect() after disconnect() gets open with the same id', async () => {
      const name = `R${++n}`;
      const o = await open(name, null);
      assert.ok(o.ok, JSON.stringify(o));
      const d = await call(([name]) => {
        const p = H.waitEvent(name, 'disconnected', 5000);
        H.disconnect(name);
        return p;
      }, name);
      assert.ok(d.ok, 'disconnected event');
      assert.equal(d.value, o.id);
      // A user reconnects later, once the server has dropped the old socket: observe that via /peers.
      await waitUntilGone(o.id);
      const r = await call(([name]) => H.reconnect(name, 5000), name);
      assert.ok(r.ok, `reconnect open: ${JSON.stringify(r)}`);
      assert.equal(r.value, o.id);
      await call(([name]) => H.destroy(name), name);
    });

    test('reconnect() immediately after disconnect(), while the server may still hold the id', async (t) => {
      const name = `Q${++n}`;
      const o = await open(name, null);
      assert.ok(o.ok, JSON.stringify(o));
      const r = await call(([name]) => {
        H.disconnect(name);
        return H.reconnect(name, 3000);
      }, name);
      if (kind === 'reference') {
        // Known reference bug (peerjs#1289): if the new socket arrives before the server processed the
        // old one's close, it is attached silently and `open` never fires. Timing decides; report it.
        t.diagnostic(`reference: reconnect right after disconnect -> ${r.ok ? 'open' : 'no open within 3 s (peerjs#1289)'}`);
      } else {
        assert.ok(r.ok, `reconnect open: ${JSON.stringify(r)}`);
        assert.equal(r.value, o.id);
      }
      await call(([name]) => H.destroy(name), name);
    });

    test('a second Peer with the same id and token while the first is connected', async (t) => {
      const id = `same-${kind}-${++n}`;
      const first = await open('S1', id, { token: 'sametoken' });
      assert.ok(first.ok, JSON.stringify(first));
      const lost = call(() => H.waitEvent('S1', 'disconnected', 5000));
      const second = await open('S2', id, { token: 'sametoken' }, 3000);
      if (kind === 'reference') {
        // The reference re-attaches the socket without OPEN (peerjs#1289): the Peer never opens.
        assert.equal(second.ok, false, 'reference bug fixed upstream? update this test');
        assert.equal(second.error.type, 'timeout');
        t.diagnostic('reference: no open for a same-id same-token reconnect (peerjs#1289)');
      } else {
        assert.ok(second.ok, `second Peer must get open: ${JSON.stringify(second)}`);
        assert.equal(second.id, id);
        const l = await lost;
        assert.ok(l.ok, 'the replaced Peer learns it lost the server (disconnected)');
      }
      await call(() => [H.destroy('S1'), H.destroy('S2')]);
    });

    test('an id taken by another Peer gives unavailable-id', async () => {
      const id = `taken-${kind}-${++n}`;
      const holder = await open('T1', id);
      assert.ok(holder.ok, JSON.stringify(holder));
      const taker = await open('T2', id);
      assert.equal(taker.ok, false);
      assert.equal(taker.error.type, 'unavailable-id', JSON.stringify(taker));
      assert.match(taker.error.message, /is taken/);
      await call(() => [H.destroy('T1'), H.destroy('T2')]);
    });

    test('connecting to an absent peer gives peer-unavailable after the expire timeout', async () => {
      const o = await open('U', null);
      assert.ok(o.ok, JSON.stringify(o));
      const t0 = Date.now();
      const err = await call(() => {
        const e = H.nextError('U', 10000);
        H.peers.get('U').connect('nobody-here', { serialization: 'json' });
        return e;
      });
      assert.ok(err, 'an error event');
      assert.equal(err.type, 'peer-unavailable', JSON.stringify(err));
      assert.match(err.message, /nobody-here/);
      assert.ok(Date.now() - t0 >= EXPIRE_MS - 100, 'not before the expire timeout');
      await call(() => H.destroy('U'));
    });

    test('no unexpected console errors in the page', () => {
      // peerjs logs nothing at debug level 0; WebSocket failures would show up here.
      h.browser.assertNoConsoleErrors();
    });
  });
}
