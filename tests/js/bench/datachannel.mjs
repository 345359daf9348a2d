// Browser half of the DataConnection benchmark (driven by benches/datachannel.rs, which starts the
// signaling server and the Rust sink peer and prints the table). Real peerjs 1.5.5 in headless
// Chromium (two tabs): browser → Rust (tab 1 sends to the Rust sink) and browser ↔ browser (tab 1
// sends to a sink in tab 2). Same protocol as the Rust sender: N messages on an ordered `binary`
// connection, then the string "done"; the sink answers {count, bytes}; the sender's clock runs from
// the first send to that answer.
//
//   node tests/js/bench/datachannel.mjs --host H --port P --path /x/ --key K --rust-sink ID \
//        --msgs 20000 --msg-size 1024 --bulk-msgs 1600 --bulk-size 65536
// Prints one JSON line per measurement: {"pair":"browser→rust","kind":"msgs",...}.

import { parseArgs } from 'node:util';
import { openPeerHarness } from '../lib/browser.mjs';
import { cleanupAll } from '../lib/cleanup.mjs';

const { values: a } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string' },
    path: { type: 'string', default: '/' },
    key: { type: 'string', default: 'peerjs' },
    'rust-sink': { type: 'string' },
    msgs: { type: 'string', default: '20000' },
    'msg-size': { type: 'string', default: '1024' },
    'bulk-msgs': { type: 'string', default: '1600' },
    'bulk-size': { type: 'string', default: '65536' },
    only: { type: 'string', default: 'browser→rust,browser↔browser' },
  },
});

const peerOpts = { host: a.host, port: Number(a.port), path: a.path, key: a.key, secure: false, config: { iceServers: [] } };

// In-page helpers (installed in both tabs).
function install() {
  window.bench = {
    async open(opts) {
      const p = new peerjs.Peer(opts);
      await new Promise((res, rej) => {
        p.once('open', res);
        p.once('error', rej);
      });
      window.benchPeer = p;
      return p.id;
    },
    sink() {
      window.benchPeer.on('connection', (c) => {
        let count = 0;
        let bytes = 0;
        c.on('data', (d) => {
          if (d === 'done') {
            c.send({ count, bytes });
            count = 0;
            bytes = 0;
            return;
          }
          count++;
          bytes += d.byteLength ?? 0;
        });
      });
      return true;
    },
    async run(to, n, size, label) {
      const c = window.benchPeer.connect(to, { serialization: 'binary', reliable: true, label });
      await new Promise((res, rej) => {
        c.once('open', res);
        c.once('error', rej);
        setTimeout(() => rej(new Error('open timeout')), 15000);
      });
      const payload = new Uint8Array(size);
      for (let i = 0; i < size; i++) payload[i] = i & 255;
      const reply = new Promise((res) => c.once('data', res));
      const t0 = performance.now();
      for (let i = 0; i < n; i++) c.send(payload);
      c.send('done');
      const r = await reply;
      const ms = performance.now() - t0;
      c.close();
      return { ms, count: r.count, bytes: r.bytes };
    },
  };
  return true;
}

const h = await openPeerHarness();
try {
  const tab2 = await h.browser.newPage(h.site.url('/'));
  for (const page of [h.page, tab2]) await page.evaluate(install);
  await h.page.evaluate((o) => window.bench.open(o), peerOpts);
  const sinkId = await tab2.evaluate((o) => window.bench.open(o), peerOpts);
  await tab2.evaluate(() => window.bench.sink());
  const targets = { 'browser→rust': a['rust-sink'], 'browser↔browser': sinkId };
  const kinds = [
    ['msgs', Number(a.msgs), Number(a['msg-size'])],
    ['bulk', Number(a['bulk-msgs']), Number(a['bulk-size'])],
  ];
  for (const pair of a.only.split(',')) {
    const to = targets[pair];
    if (!to) continue;
    for (const [kind, n, size] of kinds) {
      const r = await h.page.evaluate(([to, n, size, label]) => window.bench.run(to, n, size, label), [to, n, size, `${pair}-${kind}`]);
      if (r.count !== n || r.bytes !== n * size) throw new Error(`${pair} ${kind}: sink saw ${r.count} msgs / ${r.bytes} bytes`);
      const s = r.ms / 1000;
      console.log(JSON.stringify({ pair, kind, msgs: n, size, secs: s, msgs_per_s: n / s, mb_per_s: (n * size) / s / 1e6 }));
    }
  }
} finally {
  await h.close();
  await cleanupAll();
}
