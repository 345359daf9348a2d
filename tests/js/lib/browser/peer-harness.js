// In-page helpers around the real peerjs client (loaded before this file as `window.peerjs`).
// Served by ../static-server.mjs at /lib/browser/peer-harness.js and included by its DEFAULT_PAGE.
// Drive it from Node with `page.evaluate(([a, b]) => H.method(a, b), [a, b])`. Every method resolves
// (never rejects) with plain JSON so failures show up in assertions, not as opaque evaluate errors:
//
//   H.open(name, id|null, options)        -> { ok, id } on 'open' | { ok: false, error: { type, message } }
//   H.nextError(name, ms)                 -> { type, message } | null      (next 'error' event of that Peer)
//   H.waitEvent(name, event, ms)          -> { ok, value } | { ok: false, timeout: true }
//   H.echo(name)                          -> every incoming DataConnection echoes what it receives
//   H.connect(name, dstId, opts, ms)      -> { ok, label, serialization } once the DataConnection is open
//   H.roundTrip(name, label, value|spec, ms) -> sends, waits for the echo: { ok, value: describe(received) }
//   H.disconnect(name) / H.reconnect(name, ms) / H.destroy(name)
//   H.describe(value)                     -> JSON description (binary: { bytes, byteLength, fnv })
// A `spec` `{ $bytes: n }` makes a Uint8Array of n pseudo-random bytes (pattern (i*31+7)&255).
// Peer errors are also collected in H.errors[name].

/* global peerjs */
(() => {
  const peers = new Map();
  const conns = new Map();
  const errors = {};
  const errorWaiters = new Map();

  const errInfo = (e) => ({ type: e?.type ?? null, message: String(e?.message ?? e) });

  function fnv(bytes) {
    let h = 0x811c9dc5;
    for (let i = 0; i < bytes.length; i++) {
      h ^= bytes[i];
      h = Math.imul(h, 0x01000193) >>> 0;
    }
    return h.toString(16);
  }

  function describe(v) {
    if (v instanceof ArrayBuffer) {
      const b = new Uint8Array(v);
      return { bytes: 'ArrayBuffer', byteLength: b.length, fnv: fnv(b) };
    }
    if (ArrayBuffer.isView(v)) {
      const b = new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
      return { bytes: v.constructor.name, byteLength: b.length, fnv: fnv(b) };
    }
    return { json: v === undefined ? '<undefined>' : JSON.stringify(v) };
  }

  function materialise(spec) {
    if (spec && typeof spec === 'object' && typeof spec.$bytes === 'number') {
      const b = new Uint8Array(spec.$bytes);
      for (let i = 0; i < b.length; i++) b[i] = (i * 31 + 7) & 255;
      return b;
    }
    return spec;
  }

  function peer(name) {
    const p = peers.get(name);
    if (!p) throw new Error(`no peer ${name}`);
    return p;
  }

  function waitEvent(emitter, event, ms) {
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        emitter.off(event, on);
        resolve({ ok: false, timeout: true });
      }, ms);
      const on = (value) => {
        clearTimeout(t);
        resolve({ ok: true, value: value === undefined ? null : value });
      };
      emitter.once(event, on);
    });
  }

  const H = {
    peers,
    conns,
    errors,
    describe,

    open(name, id, options, ms = 10000) {
      const p = id ? new peerjs.Peer(id, options) : new peerjs.Peer(options);
      peers.set(name, p);
      errors[name] = [];
      p.on('error', (e) => {
        const info = errInfo(e);
        errors[name].push(info);
        const w = errorWaiters.get(name);
        if (w && w.length) w.shift()(info);
      });
      return new Promise((resolve) => {
        const t = setTimeout(() => resolve({ ok: false, error: { type: 'timeout', message: `no open within ${ms} ms` } }), ms);
        p.once('open', (gotId) => {
          clearTimeout(t);
          resolve({ ok: true, id: gotId });
        });
        p.once('error', (e) => {
          if (p.open) return;
          clearTimeout(t);
          resolve({ ok: false, error: errInfo(e) });
        });
      });
    },

    nextError(name, ms = 10000) {
      return new Promise((resolve) => {
        const list = errorWaiters.get(name) ?? [];
        errorWaiters.set(name, list);
        const t = setTimeout(() => {
          const i = list.indexOf(done);
          if (i >= 0) list.splice(i, 1);
          resolve(null);
        }, ms);
        const done = (info) => {
          clearTimeout(t);
          resolve(info);
        };
        list.push(done);
      });
    },

    waitEvent(name, event, ms = 10000) {
      return waitEvent(peer(name), event, ms);
    },

    echo(name) {
      peer(name).on('connection', (conn) => {
        conns.set(`${name}:${conn.label}`, conn);
        conn.on('data', (d) => conn.send(d));
      });
      return true;
    },

    connect(name, dstId, opts = {}, ms = 15000) {
      const conn = peer(name).connect(dstId, opts);
      conns.set(`${name}:${conn.label}`, conn);
      return new Promise((resolve) => {
        const t = setTimeout(() => resolve({ ok: false, error: { type: 'timeout', message: `DataConnection not open within ${ms} ms` } }), ms);
        conn.once('open', () => {
          clearTimeout(t);
          resolve({ ok: true, label: conn.label, serialization: conn.serialization, reliable: conn.reliable });
        });
        conn.once('error', (e) => {
          clearTimeout(t);
          resolve({ ok: false, error: errInfo(e) });
        });
      });
    },

    roundTrip(name, label, value, ms = 15000) {
      const conn = conns.get(`${name}:${label}`);
      if (!conn) return Promise.resolve({ ok: false, error: { type: 'harness', message: `no connection ${label}` } });
      return new Promise((resolve) => {
        const t = setTimeout(() => {
          conn.off('data', on);
          resolve({ ok: false, error: { type: 'timeout', message: `no echo within ${ms} ms` } });
        }, ms);
        const on = (d) => {
          clearTimeout(t);
          resolve({ ok: true, value: describe(d) });
        };
        conn.once('data', on);
        try {
          conn.send(materialise(value));
        } catch (e) {
          clearTimeout(t);
          conn.off('data', on);
          resolve({ ok: false, error: errInfo(e) });
        }
      });
    },

    disconnect(name) {
      peer(name).disconnect();
      return true;
    },

    reconnect(name, ms = 10000) {
      const p = peer(name);
      const opened = waitEvent(p, 'open', ms);
      p.reconnect();
      return opened;
    },

    destroy(name) {
      const p = peers.get(name);
      if (p) p.destroy();
      peers.delete(name);
      return true;
    },
  };
  window.H = H;
})();
