// A tiny static HTTP server on 127.0.0.1:0 that gives browser tests a real origin.
//
//   import { startStaticServer, DEFAULT_PAGE } from './lib/static-server.mjs';
//   const site = await startStaticServer({ pages: { '/': DEFAULT_PAGE, '/other.html': '<!doctype html>..' } });
//   site.origin          // 'http://127.0.0.1:38609' (grant permissions and CORS checks use this)
//   site.url('/')        // 'http://127.0.0.1:38609/'
//   await site.close();
//
// Serves:
//   - the given `pages` (path -> HTML string, or { body, type } for other content types);
//   - `/node_modules/<pkg>/<file>` from tests/js/node_modules (e.g. `/node_modules/peerjs/dist/peerjs.min.js`),
//     and `/lib/browser/<file>` from tests/js/lib/browser (in-page helpers), refusing anything that escapes;
//   - 404 for everything else. `/favicon.ico` answers 204 so it does not show up as a console error.
// DEFAULT_PAGE loads peerjs 1.5.5 (`window.peerjs.Peer`) and ./browser/peer-harness.js (`window.H`), then
// sets `window.harnessReady = true`.
// Registered with ./cleanup.mjs.

import http from 'node:http';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { register } from './cleanup.mjs';
import { JS_DIR } from './servers.mjs';

const NODE_MODULES = path.join(JS_DIR, 'node_modules');
const BROWSER_LIB = path.join(JS_DIR, 'lib', 'browser');
const MOUNTS = [
  ['/node_modules/', NODE_MODULES],
  ['/lib/browser/', BROWSER_LIB],
];

/** A page that loads the peerjs UMD bundle and marks itself ready. */
export const DEFAULT_PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>ouroboros test page</title>
<script src="/node_modules/peerjs/dist/peerjs.min.js"></script>
<script src="/lib/browser/peer-harness.js"></script>
<script>window.harnessReady = typeof window.peerjs === 'object' && typeof window.peerjs.Peer === 'function' && typeof window.H === 'object';</script>
</head><body></body></html>`;

const TYPES = {
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.html': 'text/html; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.wasm': 'application/wasm',
};

/** Starts the server; resolves once it listens. */
export async function startStaticServer({ pages = { '/': DEFAULT_PAGE } } = {}) {
  const server = http.createServer(async (req, res) => {
    try {
      const { pathname } = new URL(req.url, 'http://x');
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405).end();
        return;
      }
      if (Object.hasOwn(pages, pathname)) {
        const page = pages[pathname];
        const body = typeof page === 'string' ? page : page.body;
        const type = typeof page === 'string' ? 'text/html; charset=utf-8' : page.type;
        res.writeHead(200, { 'content-type': type, 'cache-control': 'no-store' }).end(body);
        return;
      }
      if (pathname === '/favicon.ico') {
        res.writeHead(204).end();
        return;
      }
      const mount = MOUNTS.find(([prefix]) => pathname.startsWith(prefix));
      if (mount) {
        const [prefix, dir] = mount;
        const rel = decodeURIComponent(pathname.slice(prefix.length));
        const file = path.resolve(dir, rel);
        if (!file.startsWith(dir + path.sep)) {
          res.writeHead(403).end();
          return;
        }
        const body = await readFile(file).catch(() => null);
        if (body === null) {
          res.writeHead(404).end();
          return;
        }
        const type = TYPES[path.extname(file)] ?? 'application/octet-stream';
        res.writeHead(200, { 'content-type': type, 'cache-control': 'no-store' }).end(body);
        return;
      }
      res.writeHead(404).end();
    } catch {
      if (!res.headersSent) res.writeHead(500);
      res.end();
    }
  });
  const sockets = new Set();
  server.on('connection', (s) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address();
  const origin = `http://127.0.0.1:${port}`;
  let closing = null;
  const close = () => {
    if (!closing) {
      unregister();
      closing = new Promise((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
      });
    }
    return closing;
  };
  const unregister = register(`static server ${origin}`, close);
  return { origin, port, url: (p = '/') => origin + p, close };
}
