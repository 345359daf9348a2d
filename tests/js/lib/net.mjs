// Raw protocol clients for black-box tests: a scripted WebSocket client and a plain HTTP request helper.
//
//   import { connectWs, httpRequest, randomToken } from './lib/net.mjs';
//   const c = await connectWs(srv.wsUrl({ key: 'peerjs', id: 'a', token: 't' }));
//   await c.next()                    // next frame, JSON-parsed ({ raw } if it is not JSON); rejects on timeout
//   await c.nextText()                // next frame as the exact text the server sent (key order visible)
//   await c.nextOrNull(300)           // next frame or null if none arrives within 300 ms (no-delivery checks)
//   c.send({ type: 'OFFER', dst: 'b', payload: {} })   // objects are JSON.stringified, strings sent verbatim
//   await c.closed                    // { code, reason } once the socket closed
//   c.frames                          // every frame received so far (exact text), in order
//   await c.close()                   // close and wait for it (also registered with ./cleanup.mjs)
//   const r = await httpRequest(`${srv.httpBase}peerjs/id`, { headers: { origin: 'http://o.example' } });
//   r.status, r.headers (lower-case names), r.body (string)
//
// connectWs rejects with `err.status` set when the server answers the upgrade with an HTTP status.

import http from 'node:http';
import { randomBytes } from 'node:crypto';
import WebSocket from 'ws';
import { register } from './cleanup.mjs';

/** A random token like the browser client's (`Math.random().toString(36).slice(2)`). */
export function randomToken() {
  return randomBytes(8).toString('hex');
}

function parseFrame(text) {
  try {
    return JSON.parse(text);
  } catch {
    return { raw: text };
  }
}

/** Opens a WebSocket; see the header comment. */
export function connectWs(url, { origin, headers, timeoutMs = 5000, defaultNextTimeoutMs = 5000 } = {}) {
  const ws = new WebSocket(url, { origin, headers, handshakeTimeout: timeoutMs, perMessageDeflate: false });
  const frames = [];
  const queue = [];
  const waiters = [];
  let closeInfo = null;
  ws.on('message', (data, isBinary) => {
    const frame = isBinary ? `binary:${data.toString('hex')}` : data.toString('utf8');
    frames.push(frame);
    const w = waiters.shift();
    if (w) w.resolve(frame);
    else queue.push(frame);
  });
  const closed = new Promise((resolve) => {
    ws.once('close', (code, reason) => {
      closeInfo = { code, reason: reason.toString('utf8') };
      for (const w of waiters.splice(0)) w.resolve(null);
      resolve(closeInfo);
    });
  });
  ws.on('error', () => {}); // surfaced through open/close
  const unregister = register(`ws ${url}`, () => client.close());

  const takeNext = (ms) =>
    new Promise((resolve) => {
      if (queue.length) return resolve(queue.shift());
      if (closeInfo) return resolve(null);
      const w = { resolve: (f) => { clearTimeout(w.t); resolve(f); } };
      w.t = setTimeout(() => {
        const i = waiters.indexOf(w);
        if (i >= 0) waiters.splice(i, 1);
        resolve(undefined);
      }, ms);
      waiters.push(w);
    });

  const client = {
    ws,
    url,
    frames,
    closed,
    get isClosed() {
      return closeInfo !== null;
    },
    /** Next frame as text; rejects if none arrives in time or the socket closes first. */
    async nextText(ms = defaultNextTimeoutMs) {
      const f = await takeNext(ms);
      if (f === undefined) throw new Error(`no frame within ${ms} ms on ${url}`);
      if (f === null) throw new Error(`socket closed (${closeInfo?.code}) before a frame arrived on ${url}`);
      return f;
    },
    /** Next frame, JSON-parsed (`{ raw }` if it is not JSON). */
    async next(ms = defaultNextTimeoutMs) {
      return parseFrame(await client.nextText(ms));
    },
    /** Next frame as text, or null if none arrives within `ms` or the socket closes. */
    async nextTextOrNull(ms) {
      const f = await takeNext(ms);
      return f ?? null;
    },
    /** Next frame parsed, or null if none arrives within `ms` or the socket closes. */
    async nextOrNull(ms) {
      const f = await takeNext(ms);
      return f == null ? null : parseFrame(f);
    },
    send(msg) {
      ws.send(typeof msg === 'string' ? msg : JSON.stringify(msg));
    },
    async close() {
      unregister();
      if (ws.readyState === WebSocket.CLOSED) return closeInfo;
      if (ws.readyState === WebSocket.CONNECTING) {
        ws.terminate();
      } else {
        ws.close();
        const t = setTimeout(() => ws.terminate(), 2000);
        await closed;
        clearTimeout(t);
      }
      return closed;
    },
  };

  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve(client));
    ws.once('unexpected-response', (req, res) => {
      const err = new Error(`WebSocket upgrade refused with HTTP ${res.statusCode} on ${url}`);
      err.status = res.statusCode;
      res.resume();
      unregister();
      ws.terminate();
      reject(err);
    });
    ws.once('error', (err) => {
      unregister();
      reject(err);
    });
  });
}

/** A plain HTTP/1.1 request with full control over headers. Resolves with { status, headers, body }. */
export function httpRequest(url, { method = 'GET', headers = {}, body, timeoutMs = 5000 } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers, agent: false, timeout: timeoutMs }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () =>
        resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }),
      );
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`HTTP ${method} ${url} timed out after ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(body);
  });
}
