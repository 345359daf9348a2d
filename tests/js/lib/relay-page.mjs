// Relay-protocol clients inside a browser page (real peerjs in Chromium), for node tests.
//
//   import { installRelayClients, startNode } from './lib/relay-page.mjs';
//   const node = await startNode({ extraArgs: ['--max-clients', '10'] });   // `ouroboros node`, temp data dir
//   node.record            // the discovery record fetched from /ouroboros.json
//   await installRelayClients(page);
//   await openClient(page, 'alice', node, { serialization: 'json' });   // connects, waits for the channel
//   await send(page, 'alice', { op: 'join', room: 'r' });
//   const m = await take(page, 'alice', (m) => m.op === 'joined');  // first unread message matching; event-driven
//   await closeClient(page, 'alice');
//
// Each client is its own `new peerjs.Peer(...)` registered on the node's signaling server (or `peerOptions`
// given explicitly, e.g. another server the node is also registered on).

import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { register } from './cleanup.mjs';
import { startOuroboros } from './servers.mjs';

/** Starts `ouroboros node` on 127.0.0.1:0 with a fresh data dir; resolves with the server handle plus `record`. */
export async function startNode({ extraArgs = [], env } = {}) {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'ouroboros-node-'));
  const unregister = register(`rm ${dataDir}`, () => rm(dataDir, { recursive: true, force: true }));
  const srv = await startOuroboros({ subcommand: 'node', extraArgs: ['--data-dir', dataDir, ...extraArgs], env });
  // The record is served once the node's own peer is registered (after `node peer-id`).
  const record = await waitForRecord(srv);
  return {
    ...srv,
    dataDir,
    record,
    peerId: record.peer_id,
    async stop() {
      const r = await srv.stop();
      unregister();
      await rm(dataDir, { recursive: true, force: true });
      return r;
    },
  };
}

async function waitForRecord(srv) {
  const deadline = Date.now() + 30000;
  for (;;) {
    if (/node peer-id \S+/.test(srv.output())) {
      const res = await fetch(`http://${srv.host}:${srv.port}/ouroboros.json`);
      if (!res.ok) throw new Error(`/ouroboros.json: HTTP ${res.status}`);
      return res.json();
    }
    if (Date.now() > deadline) throw new Error(`node did not print its peer id:\n${srv.output()}`);
    await new Promise((resolve) => srv.child.stdout.once('data', resolve));
  }
}

/** Defines the page-side client helpers (idempotent). */
export async function installRelayClients(page) {
  await page.evaluate(() => {
    if (window.relayClients) return;
    window.relayClients = {};
    window.openRelayClient = (name, peerOpts, nodeId, opts) =>
      new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`client ${name}: no open within 20 s`)), 20000);
        const peer = new window.peerjs.Peer(peerOpts);
        const c = { name, peer, inbox: [], waiters: [], closed: false, errors: [] };
        peer.on('error', (e) => {
          c.errors.push(String(e.type));
          clearTimeout(timer);
          reject(new Error(`client ${name}: peer error ${e.type}: ${e.message}`));
        });
        peer.on('open', () => {
          const connectOpts = { serialization: opts.serialization, reliable: opts.reliable };
          if (opts.metadata !== null) connectOpts.metadata = opts.metadata;
          const conn = peer.connect(nodeId, connectOpts);
          c.conn = conn;
          conn.on('open', () => {
            clearTimeout(timer);
            window.relayClients[name] = c;
            resolve(true);
          });
          conn.on('data', (d) => {
            const w = c.waiters.findIndex((x) => x.pred(d));
            if (w >= 0) c.waiters.splice(w, 1)[0].resolve(d);
            else c.inbox.push(d);
          });
          conn.on('close', () => {
            c.closed = true;
            for (const w of c.waiters.splice(0)) w.resolve({ __closed: true });
          });
          conn.on('error', (e) => c.errors.push(String(e.type ?? e)));
        });
      });
    window.relayTake = (name, predSrc, timeoutMs) =>
      new Promise((resolve, reject) => {
        const c = window.relayClients[name];
        const pred = new Function(`return (${predSrc});`)();
        const i = c.inbox.findIndex((m) => pred(m));
        if (i >= 0) return resolve(c.inbox.splice(i, 1)[0]);
        if (c.closed) return resolve({ __closed: true });
        const w = {
          pred,
          resolve: (m) => {
            clearTimeout(w.t);
            resolve(m);
          },
        };
        w.t = setTimeout(() => {
          c.waiters.splice(c.waiters.indexOf(w), 1);
          reject(new Error(`client ${name}: no message matching ${predSrc} within ${timeoutMs} ms; unread: ${JSON.stringify(c.inbox).slice(0, 2000)}`));
        }, timeoutMs);
        c.waiters.push(w);
      });
  });
}

/**
 * Opens a relay client named `name` in `page`, connected to `node` (a startNode handle).
 * opts: serialization ('json'), reliable (true), metadata (default declares the protocol and the
 * client name; null sends none), peerOptions (default: the node's own signaling server), nodeId.
 */
export async function openClient(page, name, node, opts = {}) {
  const serialization = opts.serialization ?? 'json';
  const metadata = opts.metadata === undefined ? { protocol: 'ouroboros/1', client: name } : opts.metadata;
  const peerOpts = opts.peerOptions ?? node.peerOptions();
  await page.evaluate(
    ({ name, peerOpts, nodeId, o }) => window.openRelayClient(name, peerOpts, nodeId, o),
    { name, peerOpts, nodeId: opts.nodeId ?? node.peerId, o: { serialization, reliable: opts.reliable ?? true, metadata } },
  );
}

/** Sends one message (any JS value) on a client's DataConnection. */
export function send(page, name, msg) {
  return page.evaluate(({ name, msg }) => window.relayClients[name].conn.send(msg), { name, msg });
}

/** Sends several messages in one page round trip (for bursts). */
export function sendMany(page, name, msgs) {
  return page.evaluate(({ name, msgs }) => {
    for (const m of msgs) window.relayClients[name].conn.send(m);
  }, { name, msgs });
}

/** The first unread message matching `pred` (a function, run in the page), waiting for it. */
export function take(page, name, pred = () => true, timeoutMs = 10000) {
  return page.evaluate(({ name, src, timeoutMs }) => window.relayTake(name, src, timeoutMs), {
    name,
    src: pred.toString(),
    timeoutMs,
  });
}

/** Unread messages of a client (without consuming them). */
export function inbox(page, name) {
  return page.evaluate((name) => window.relayClients[name].inbox.slice(), name);
}

/** Closes a client's connection and peer. */
export function closeClient(page, name) {
  return page.evaluate((name) => {
    const c = window.relayClients[name];
    if (!c) return;
    c.conn?.close();
    c.peer.destroy();
    delete window.relayClients[name];
  }, name);
}
