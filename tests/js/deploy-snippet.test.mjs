// The copy-paste PeerJS snippet of docs/deploy.md, run as written in headless Chromium against a
// real `ouroboros node`: it reads ouroboros.json (with a ?t= cache-buster) from a static site
// standing in for GitHub Pages, registers on the node's signaling server, connects to the node's
// peer id, joins `lobby`, and `say()` publishes a message the page receives back.
// Only two strings change: the PeerJS URL (served locally: no internet here) and OWNER/REPO.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { cleanupAll } from './lib/cleanup.mjs';
import { openPeerHarness } from './lib/browser.mjs';
import { REPO_DIR } from './lib/servers.mjs';
import { startNode } from './lib/relay-page.mjs';
import { DEFAULT_PAGE } from './lib/static-server.mjs';

after(cleanupAll);

/** The ```html block of the "How a web page finds and connects to the node" section. */
function snippet() {
  const doc = readFileSync(path.join(REPO_DIR, 'docs', 'deploy.md'), 'utf8');
  const section = doc.slice(doc.indexOf('## How a web page finds and connects to the node'));
  const m = /```html\n([\s\S]*?)```/.exec(section);
  assert.ok(m, 'docs/deploy.md has the html snippet');
  return m[1];
}

test('the deploy guide snippet finds the node through ouroboros.json and talks to it', async () => {
  await runSnippet({ path: 'WebRTC' });
});

// The page's WebRTC gathers relay (TURN) candidates only and has no TURN server: no candidate at all,
// the DataChannel never opens, as on a network without UDP to the node. The snippet passes the
// record's ice_servers to PeerJS, so the policy is forced on every RTCPeerConnection the page makes
// (injected before the snippet runs; the snippet's text is unchanged).
const NO_CANDIDATES = `<script>{
  const Native = window.RTCPeerConnection;
  window.RTCPeerConnection = class extends Native {
    constructor(config = {}) { super({ ...config, iceServers: [], iceTransportPolicy: 'relay' }); }
  };
}</script>`;

test('with no UDP, the deploy guide snippet falls back to the relay WebSocket and talks to the node', async () => {
  await runSnippet({ path: 'the relay WebSocket', inject: NO_CANDIDATES });
});

async function runSnippet({ path: expectedPath, inject = '' }) {
  const node = await startNode();
  const record = JSON.stringify(node.record);
  const html = snippet();
  // The pinned bundle from the CDN, with subresource integrity; the page below loads the same
  // file from the npm package, so the browser checks the snippet's integrity hash against it.
  const cdnTag = /<script src="https:\/\/unpkg\.com\/peerjs@1\.5\.5\/dist\/peerjs\.min\.js"( integrity="sha384-[^"]+" crossorigin="anonymous")><\/script>/;
  assert.match(html, cdnTag);
  assert.ok(html.includes("'https://OWNER.github.io/REPO/ouroboros.json'"));
  assert.ok(html.includes('?t=${Date.now()}'), 'the snippet busts the Pages cache');
  let site;
  const page = `<!doctype html><html><head><meta charset="utf-8"></head><body>${html
    .replace(cdnTag, (_, attrs) => `<script src="/node_modules/peerjs/dist/peerjs.min.js"${attrs}></script>${inject}`)
    .replace("'https://OWNER.github.io/REPO/ouroboros.json'", "location.origin + '/ouroboros.json'")}</body></html>`;
  const h = await openPeerHarness({
    pages: {
      '/': DEFAULT_PAGE,
      '/snippet.html': page,
      '/ouroboros.json': { body: record, type: 'application/json' },
    },
  });
  site = h.site;
  const requests = [];
  h.page.on('request', (r) => requests.push(r.url()));
  try {
    const infos = [];
    const logged = new Promise((resolve) => {
      h.page.on('console', (msg) => {
        if (msg.type() === 'info') infos.push(msg.text());
        if (msg.text().includes('"text":"hello from the guide"')) resolve(msg.text());
      });
    });
    await h.page.goto(site.url('/snippet.html'));
    await h.page
      .waitForFunction(() => typeof window.say === 'function', null, { timeout: 30000 })
      .catch((e) => {
        throw new Error(`${e.message}\nconsole: ${JSON.stringify(h.browser.consoleLog)}\nrequests: ${requests.join(' ')}`);
      });
    await h.page.evaluate(() => window.say('hello from the guide'));
    const line = await logged;
    assert.match(line, /^guest-[a-z0-9]+: \{"text":"hello from the guide"\}$/);
    assert.ok(
      requests.some((u) => /\/ouroboros\.json\?t=\d+$/.test(u)),
      `record read with a cache-buster: ${requests.join(' ')}`,
    );
    assert.deepEqual(infos, [`connected to generation 0 over ${expectedPath}`], 'it says which path it took');
    h.browser.assertNoConsoleErrors([/Failed to load resource/]);
  } finally {
    await h.close();
    await node.stop();
  }
}
