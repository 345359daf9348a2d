// The browser snippet of protocol/relay.md ("Browser snippet", `relayClient`), run verbatim in a page
// with the real peerjs bundle, publishing on a timer and observed from outside.
//
//   import { snippetSource, startSnippetClient, snippetState, stopSnippetClient } from './lib/relay-snippet.mjs';
//   const src = await snippetSource();                     // the ```js block after "Browser snippet" in relay.md
//   await startSnippetClient(page, { src, name: 'ann', serialization: 'binary', peerOptions, nodeId,
//                                    room: 'ring', everyMs: 40, discover,   // discover: optional, see below
//                                    transport: 'auto', fallbackMs: 1500, relayWs });   // optional: the snippet's own options
//   const s = await snippetState(page, 'ann');   // { published: [id…], acks: {id: seq}, welcomes: [{node, generation, gap, transport}],
//                                                //   msgs: [{seq, id, from}], moved: [gen…], errors: [code…], ackConflicts: […] }
//   await stopSnippetClient(page, 'ann');        // stops publishing (the client stays connected and keeps following)
//
// The page must have loaded peerjs (static-server's DEFAULT_PAGE). The snippet is evaluated with `Peer`
// bound to a subclass of `peerjs.Peer` whose `connect()` adds one extra 'data' listener that records
// what the node says (welcome, ack, moved, error), and `WebSocket` bound to a subclass that records the
// same from the relay WebSocket's frames — the snippet's own code and listeners are untouched. Each
// welcome records the path it came over (`transport`: 'webrtc' or 'ws').
// The snippet is written for `json`; `serialization` other than 'json' replaces its one
// `serialization: 'json'` literal (the only change to its text). Every publish goes through the
// snippet's `publish(room, body)`; the body is `<name> <n>`. `discover` (an async function in the test
// process returning the current discovery record) becomes the snippet's `discover` option, through
// `page.exposeFunction`.

import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { REPO_DIR } from './servers.mjs';

/** The ```js block that follows "Browser snippet" in protocol/relay.md. */
export async function snippetSource() {
  const md = await readFile(path.join(REPO_DIR, 'protocol', 'relay.md'), 'utf8');
  const at = md.indexOf('Browser snippet');
  if (at < 0) throw new Error('protocol/relay.md has no "Browser snippet"');
  const m = /```js\n([\s\S]*?)\n```/.exec(md.slice(at));
  if (!m || !m[1].includes('function relayClient(')) throw new Error('no relayClient snippet after "Browser snippet" in protocol/relay.md');
  return m[1];
}

/** The snippet with its serialization set to `serialization`. */
export function withSerialization(src, serialization) {
  if (serialization === 'json') return src;
  const literal = "serialization: 'json'";
  const n = src.split(literal).length - 1;
  if (n !== 1) throw new Error(`expected one ${literal} in the snippet, found ${n}`);
  return src.replace(literal, `serialization: ${JSON.stringify(serialization)}`);
}

/** Starts a snippet client in `page` that publishes `<name> <n>` to `room` every `everyMs`. */
export async function startSnippetClient(page, { src, name, serialization = 'json', peerOptions, nodeId, room, everyMs = 50, discover, transport, fallbackMs, relayWs }) {
  const discoverName = discover ? `snippetDiscover_${name.replace(/\W/g, '_')}` : null;
  if (discover) await page.exposeFunction(discoverName, discover);
  await page.evaluate(
    ({ src, name, peerOptions, nodeId, room, everyMs, discoverName, transport, fallbackMs, relayWs }) => {
      window.snippetClients ??= {};
      const obs = { name, published: [], acks: {}, ackConflicts: [], welcomes: [], msgs: [], moved: [], errors: [], timer: null };
      const observe = (m, transport) => {
        if (!m || typeof m !== 'object') return;
        if (m.op === 'welcome') obs.welcomes.push({ node: m.node, generation: m.generation, gap: m.gap ?? null, transport });
        else if (m.op === 'moved') obs.moved.push(m.generation);
        else if (m.op === 'error') obs.errors.push(m.code);
        else if (m.op === 'ack') {
          if (!(m.id in obs.acks)) obs.acks[m.id] = m.seq;
          else if (obs.acks[m.id] !== m.seq) obs.ackConflicts.push({ id: m.id, first: obs.acks[m.id], again: m.seq });
        }
      };
      class ObservedPeer extends window.peerjs.Peer {
        connect(id, options) {
          const conn = super.connect(id, options);
          conn.on('data', (m) => observe(m, 'webrtc'));
          return conn;
        }
      }
      class ObservedWebSocket extends window.WebSocket {
        constructor(...args) {
          super(...args);
          this.addEventListener('message', (e) => {
            try { observe(JSON.parse(e.data), 'ws'); } catch { /* not JSON: the snippet's business */ }
          });
        }
      }
      const relayClient = new Function('Peer', 'WebSocket', `${src}\nreturn relayClient;`)(ObservedPeer, ObservedWebSocket);
      const options = {
        peerOptions,
        nodeId,
        name,
        rooms: [room],
        onMsg: (m) => obs.msgs.push({ seq: m.seq, id: m.id, from: m.from }),
        discover: discoverName ? () => window[discoverName]() : undefined,
      };
      if (transport !== undefined) options.transport = transport;
      if (fallbackMs !== undefined) options.fallbackMs = fallbackMs;
      if (relayWs !== undefined) options.relayWs = relayWs;
      const client = relayClient(options);
      let n = 0;
      obs.timer = setInterval(() => {
        n += 1;
        obs.published.push(client.publish(room, `${name} ${n}`));
      }, everyMs);
      window.snippetClients[name] = obs;
    },
    { src: withSerialization(src, serialization), name, peerOptions, nodeId, room, everyMs, discoverName, transport, fallbackMs, relayWs },
  );
}

/** Stops a snippet client's publishing timer. */
export function stopSnippetClient(page, name) {
  return page.evaluate((name) => clearInterval(window.snippetClients[name].timer), name);
}

/** A copy of what a snippet client observed (see the header comment). */
export function snippetState(page, name) {
  return page.evaluate((name) => {
    const { timer, ...obs } = window.snippetClients[name];
    return structuredClone(obs);
  }, name);
}
