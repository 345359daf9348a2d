// Ouroboros web chat: reads the discovery record, connects to the node with the PeerJS
// client, speaks the relay protocol (protocol/relay.md) and follows the node across
// rotations ("moved"): reconnect, rejoin with `since`, resend unacknowledged messages.
// A replicated ring (the record lists `replicas`, protocol/replication.md): any node will do.
// When the node goes away without `moved` (killed, unreachable), the chat reads the record of
// another node the latest record listed (then the page's own source, the lost node last),
// connects there, rejoins with `since` and resends what is not acknowledged (same ids: the
// ring stores each once), one publish in flight at a time so that they keep their order;
// meanwhile it shows "reconnecting".
// Transport (?transport=auto|webrtc|ws, default auto): a WebRTC DataChannel, falling back
// to the node's relay WebSocket (`relay_ws`, TCP only) when no DataChannel opens within
// ?fallback=MS (default 2500) or PeerJS is unavailable; once the WebSocket was needed it is
// tried first on later reconnects. The path in use shows in the status line and in
// document.body.dataset.transport.
// Identity: the node's `welcome` hands out a name token for our name, kept in localStorage
// and presented on every later connection (`token`), so nobody else can take the name. The
// ring's key (the record's `ring_key`) is pinned from the first record whose signature holds;
// then `welcome` (with our fresh `nonce`) and `moved` must be signed with it (WebCrypto
// Ed25519; a browser without it only warns). protocol/discovery.md.
// No framework, no build step. Every piece of remote text goes through textContent.

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const HISTORY_PAGE = 30;

const state = {
  record: null,          // the discovery record in use
  peer: null,            // PeerJS Peer
  conn: null,            // DataConnection to the node
  connGen: 0,            // bumps on every (re)connect so stale callbacks are ignored
  live: false,
  room: params.get('room') || localStorage.getItem('ouroboros.room') || 'lobby',
  name: params.get('name') || localStorage.getItem('ouroboros.name') || ('guest-' + Math.random().toString(36).slice(2, 7)),
  rooms: new Map(),      // room -> { lastSeq, oldestSeq, exhausted, members:Set, loading }
  pending: new Map(),    // client message id -> { room, body, el }
  retryMs: 1000,
  retryTimer: null,
  moving: null,          // generation we are moving to
  startedAt: null,
  transportChoice: ['webrtc', 'ws'].includes(params.get('transport')) ? params.get('transport') : 'auto',
  fallbackMs: Number(params.get('fallback')) > 0 ? Number(params.get('fallback')) : 2500,
  transport: null,       // 'webrtc' or 'ws' while connected
  preferWs: false,       // auto: the WebSocket was needed once
  trust: { key: null, keyText: null, nonce: null }, // pinned ring key; this connection's nonce
  replicas: [],          // a replicated ring's nodes ({id, url, relay_ws}), from the latest record
  inflight: null,        // replicated ring: the id of the one publish in flight
  failovers: 0,          // reconnects since the last welcome: which other node to try first
  spread: Math.floor(Math.random() * 1024), // so that the pages of a lost node spread over the others
  node: null,            // the peer id of the node that welcomed us
};

// A record fetch that a dead host cannot hold up for long.
const RECORD_TIMEOUT_MS = 3000;

// ---- ring identity: name token, ring key ------------------------------------------

const tokenSlot = () => 'ouroboros.token.' + state.name;
function nameToken() { try { return localStorage.getItem(tokenSlot()); } catch { return null; } }

// What a connection declares: our name, a fresh nonce, the name's token once we have one.
function declaration() {
  state.trust.nonce = Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, '0')).join('');
  const d = { client: state.name, nonce: state.trust.nonce };
  const t = nameToken();
  if (t) d.token = t;
  return d;
}

const fromB64u = (s) => Uint8Array.from(atob(s.replace(/-/g, '+').replace(/_/g, '/')), (c) => c.charCodeAt(0));
// Compact JSON with sorted keys: the bytes the ring signs (after "ouroboros/1 KIND\n").
function canonical(v) {
  if (Array.isArray(v)) return '[' + v.map(canonical).join(',') + ']';
  if (v && typeof v === 'object') return '{' + Object.keys(v).sort().map((k) => JSON.stringify(k) + ':' + canonical(v[k])).join(',') + '}';
  return JSON.stringify(v);
}
async function signedByRing(kind, obj, key = state.trust.key) {
  if (!key || typeof obj.sig !== 'string') return false;
  const skip = kind === 'welcome' ? ['sig', 'limits', 'gap'] : ['sig'];
  const rest = Object.fromEntries(Object.entries(obj).filter(([k]) => !skip.includes(k)));
  const bytes = new TextEncoder().encode(`ouroboros/1 ${kind}\n` + canonical(rest));
  try { return await crypto.subtle.verify('Ed25519', key, fromB64u(obj.sig), bytes); } catch { return false; }
}
// A record: pins its key if none is pinned and its signature holds; with a key pinned, true
// only if it is signed with that key.
async function trustRecord(record) {
  const t = state.trust;
  if (t.keyText) return record.ring_key === t.keyText && signedByRing('record', record);
  if (typeof record.ring_key !== 'string') return true;
  let key;
  try { key = await crypto.subtle.importKey('raw', fromB64u(record.ring_key), { name: 'Ed25519' }, false, ['verify']); } catch (e) {
    console.warn('ouroboros: this browser cannot verify Ed25519; the ring key is not checked', e);
    return true;
  }
  if (!(await signedByRing('record', record, key))) return false;
  t.key = key; t.keyText = record.ring_key;
  return true;
}
function refused(what) {
  console.warn(`ouroboros: refused ${what}: not signed with the ring's key`);
  showError(`refused ${what}: not signed with the ring's key`);
}

// ---- rendering helpers ----------------------------------------------------------

function setConn(kind, text) {
  const el = $('conn');
  el.className = 'conn conn-' + kind;
  $('conn-text').textContent = text;
  $('retry').hidden = kind !== 'offline';
  document.body.dataset.conn = kind;
}

function showError(text) {
  const el = $('error');
  if (!text) { el.hidden = true; el.textContent = ''; return; }
  el.textContent = text;
  el.hidden = false;
}

function fmtTime(ts) {
  if (typeof ts !== 'number') return '';
  const d = new Date(ts);
  return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

function showUptime() {
  if (state.startedAt) $('uptime').textContent = fmtDuration(Date.now() - state.startedAt);
}

function fmtDuration(ms) {
  let s = Math.max(0, Math.floor(ms / 1000));
  const d = Math.floor(s / 86400); s -= d * 86400;
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

function bodyText(body) {
  if (typeof body === 'string') return body;
  if (body && typeof body === 'object' && typeof body.text === 'string') return body.text;
  try { return JSON.stringify(body); } catch { return String(body); }
}

function roomState(room) {
  let r = state.rooms.get(room);
  if (!r) {
    r = { lastSeq: null, oldestSeq: null, exhausted: false, members: new Set(), loading: false, joined: false };
    state.rooms.set(room, r);
  }
  return r;
}

function messageElement(m) {
  const li = document.createElement('li');
  li.className = 'msg';
  if (m.seq != null) li.dataset.seq = String(m.seq);
  if (m.id != null) li.dataset.id = String(m.id);
  const meta = document.createElement('div');
  meta.className = 'meta';
  const from = document.createElement('span');
  from.className = 'from';
  from.textContent = m.from ?? '';
  const time = document.createElement('time');
  time.textContent = fmtTime(m.ts);
  const st = document.createElement('span');
  st.className = 'state';
  meta.append(from, time, st);
  const body = document.createElement('div');
  body.className = 'body';
  body.textContent = bodyText(m.body);
  li.append(meta, body);
  return li;
}

// Inserts a stored message (with seq) in order; ignores duplicates. Returns true if added.
function insertMessage(room, m) {
  if (room !== state.room) return false;
  const list = $('message-list');
  const existing = list.querySelector(`li[data-seq="${CSS.escape(String(m.seq))}"]`);
  if (existing) {
    // Our own acknowledged message: the stored copy brings the node's timestamp.
    if (!existing.querySelector('time').textContent) existing.replaceWith(messageElement(m));
    return false;
  }
  // A pending element of ours for the same id becomes the stored message.
  if (m.id != null && state.pending.has(String(m.id)) && m.from === state.name) {
    const p = state.pending.get(String(m.id));
    state.pending.delete(String(m.id));
    p.el.remove();
  }
  placeBySeq(messageElement(m), m.seq);
  return true;
}

// Puts the element of a stored message (or of ours just acknowledged) in seq order, before
// our pending ones.
function placeBySeq(el, seq) {
  const list = $('message-list');
  const items = [...list.querySelectorAll('li[data-seq]')].filter((li) => li !== el);
  let before = null;
  for (let i = items.length - 1; i >= 0; i--) {
    if (Number(items[i].dataset.seq) < seq) { before = items[i].nextSibling; break; }
    if (i === 0) before = items[0];
  }
  if (items.length === 0) before = list.querySelector('li.pending');
  else if (before === null && Number(items[items.length - 1].dataset.seq) < seq) {
    before = list.querySelector('li.pending');
  }
  list.insertBefore(el, before);
}

function renderPresence() {
  const ul = $('presence');
  ul.replaceChildren();
  const r = roomState(state.room);
  for (const name of [...r.members].sort()) {
    const li = document.createElement('li');
    li.textContent = name;
    ul.append(li);
  }
}

function renderRooms() {
  const ul = $('rooms');
  ul.replaceChildren();
  for (const room of state.rooms.keys()) {
    const li = document.createElement('li');
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = room;
    b.setAttribute('aria-current', room === state.room ? 'true' : 'false');
    b.addEventListener('click', () => switchRoom(room));
    li.append(b);
    ul.append(li);
  }
  $('room-title').textContent = state.room;
}

function atBottom() {
  const box = $('messages');
  return box.scrollHeight - box.scrollTop - box.clientHeight < 40;
}

function scrollToBottom() {
  const box = $('messages');
  box.scrollTop = box.scrollHeight;
}

// ---- protocol -------------------------------------------------------------------

function send(msg) {
  if (!state.conn || !state.live) return false;
  try { state.conn.send(msg); return true; } catch (e) { console.warn('send failed', e); return false; }
}

function join(room) {
  const r = roomState(room);
  const msg = { op: 'join', room };
  if (r.lastSeq != null) msg.since = r.lastSeq;
  send(msg);
}

function requestHistory(room) {
  const r = roomState(room);
  if (r.loading || r.exhausted || !state.live) return;
  r.loading = true;
  $('history-status').textContent = 'loading older messages…';
  const msg = { op: 'history', room, limit: HISTORY_PAGE };
  if (r.oldestSeq != null) msg.before = r.oldestSeq;
  send(msg);
}

function publish(text) {
  const id = 'w-' + (crypto.randomUUID ? crypto.randomUUID() : Math.random().toString(36).slice(2));
  const room = state.room;
  const el = messageElement({ from: state.name, body: text, id });
  el.classList.add('pending');
  $('message-list').append(el);
  scrollToBottom();
  state.pending.set(id, { room, body: text, el });
  if (state.replicas.length > 0) sendNextPending();
  else send({ op: 'publish', room, id, body: text });
}

function resendPending() {
  if (state.replicas.length > 0) { state.inflight = null; sendNextPending(); return; }
  for (const [id, p] of state.pending) send({ op: 'publish', room: p.room, id, body: p.body });
}

// On a replicated ring one publish is in flight at a time, the oldest pending first: the
// ring may answer one `unavailable` (no leader in time) after it took the ones behind it, so
// sending them all at once could store a person's messages out of the order they were written.
function sendNextPending() {
  if (state.inflight != null && state.pending.has(state.inflight)) return;
  state.inflight = null;
  const next = state.pending.entries().next();
  if (next.done) return;
  const [id, p] = next.value;
  if (send({ op: 'publish', room: p.room, id, body: p.body })) state.inflight = id;
}

// A welcome we trust: remember the name token, (re)join, resend what is not acknowledged.
function welcomed(m) {
  if (typeof m.generation === 'number') $('generation').textContent = String(m.generation);
  if (m.client === state.name && typeof m.name_token === 'string') {
    try { localStorage.setItem(tokenSlot(), m.name_token); } catch { /* private mode: no token kept */ }
  }
  state.moving = null;
  state.node = typeof m.node === 'string' ? m.node : null;
  state.failovers = 0;
  setConn('live', state.transport === 'ws' ? 'live · WebSocket' : 'live · WebRTC');
  state.retryMs = 1000;
  for (const room of state.rooms.keys()) join(room);
  resendPending();
}

function onMessage(m) {
  if (!m || typeof m !== 'object') return;
  switch (m.op) {
    case 'welcome': {
      if (state.trust.key) {
        const gen = state.connGen, node = state.record && state.record.peer_id;
        signedByRing('welcome', m).then((ok) => {
          if (gen !== state.connGen) return;
          // In a replicated ring any node may answer (the ring's key and our nonce still hold).
          if (ok && m.nonce === state.trust.nonce && (m.node === node || state.replicas.length > 0)) return welcomed(m);
          refused('a welcome');
          teardown();
          scheduleRetry('the node is not the ring');
        });
      } else welcomed(m);
      break;
    }
    case 'joined': {
      const r = roomState(m.room);
      const fresh = !r.joined;
      r.joined = true;
      if (r.lastSeq == null) {
        r.lastSeq = typeof m.head === 'number' ? m.head : 0;
        if (fresh && m.room === state.room) requestHistory(m.room);
      }
      if (Array.isArray(m.members)) { r.members = new Set(m.members); renderPresence(); }
      // A `since` replay that is one page: the rest is asked for once its last msg is here.
      r.replayTo = typeof m.replay_to === 'number' ? m.replay_to : null;
      break;
    }
    case 'msg': {
      const r = roomState(m.room);
      const stick = atBottom();
      if (r.lastSeq == null || m.seq > r.lastSeq) r.lastSeq = m.seq;
      if (r.oldestSeq == null || m.seq < r.oldestSeq) r.oldestSeq = m.seq;
      if (insertMessage(m.room, m) && stick) scrollToBottom();
      if (state.replicas.length > 0) sendNextPending(); // ours, stored: the next may go
      if (r.replayTo != null && m.seq >= r.replayTo) {
        r.replayTo = null;
        send({ op: 'join', room: m.room, since: m.seq });
      }
      break;
    }
    case 'ack': {
      const p = state.pending.get(String(m.id));
      if (p) {
        state.pending.delete(String(m.id));
        p.el.classList.remove('pending');
        p.el.dataset.seq = String(m.seq);
        if ($('message-list').querySelectorAll(`li[data-seq="${CSS.escape(String(m.seq))}"]`).length > 1) p.el.remove();
        else if (p.el.isConnected) placeBySeq(p.el, m.seq); // acks may come out of order (a publish re-sent)
        const r = roomState(m.room);
        if (r.oldestSeq == null || m.seq < r.oldestSeq) r.oldestSeq = m.seq;
      }
      if (state.replicas.length > 0) sendNextPending();
      break;
    }
    case 'history': {
      const r = roomState(m.room);
      r.loading = false;
      const msgs = Array.isArray(m.messages) ? m.messages : [];
      const box = $('messages');
      const fromBottom = box.scrollHeight - box.scrollTop;
      for (const h of msgs) {
        insertMessage(m.room, { ...h, room: m.room });
        if (r.oldestSeq == null || h.seq < r.oldestSeq) r.oldestSeq = h.seq;
      }
      if (msgs.length < HISTORY_PAGE || (r.oldestSeq != null && r.oldestSeq <= 1)) r.exhausted = true;
      let status = '';
      if (r.exhausted) status = m.evicted_before ? `older messages (before #${m.evicted_before}) were evicted` : 'beginning of the room';
      $('history-status').textContent = status;
      box.scrollTop = box.scrollHeight - fromBottom;
      // Fill the view if it is not scrollable yet.
      if (!r.exhausted && box.scrollHeight <= box.clientHeight) requestHistory(m.room);
      break;
    }
    case 'presence': {
      const r = roomState(m.room);
      for (const n of m.joined || []) r.members.add(typeof n === 'string' ? n : (n && n.client) || String(n));
      for (const n of m.left || []) r.members.delete(typeof n === 'string' ? n : (n && n.client) || String(n));
      if (m.room === state.room) renderPresence();
      break;
    }
    case 'error': {
      const p = m.ref != null ? state.pending.get(String(m.ref)) : null;
      if (p && m.code === 'read_only') break; // handing over: resent after `moved`
      // Retryable: sent again with the same id (a replicated ring that could not commit in
      // time may still store it; the ack then carries the first attempt's seq).
      if (m.code === 'unavailable' || (p && m.code === 'rate_limited')) {
        if (p) setTimeout(() => { if (state.pending.has(String(m.ref))) send({ op: 'publish', room: p.room, id: String(m.ref), body: p.body }); }, m.code === 'unavailable' ? 250 : 1000);
        break;
      }
      if (p) {
        state.pending.delete(String(m.ref));
        p.el.classList.remove('pending');
        p.el.classList.add('failed');
        p.el.querySelector('.state').textContent = 'not sent: ' + (m.message || m.code);
        if (state.replicas.length > 0) sendNextPending();
      }
      if (m.ref === 'history') { const r = roomState(state.room); r.loading = false; }
      showError(`${m.code}: ${m.message || ''}`);
      break;
    }
    case 'moved': {
      if (!state.trust.key) { moveTo(m); break; }
      const gen = state.connGen, current = Number($('generation').textContent) || 0;
      signedByRing('moved', m).then((ok) => {
        if (gen !== state.connGen) return;
        if (ok && m.generation > current) moveTo(m); else refused('a moved');
      });
      break;
    }
    case 'pong':
      break;
    default:
      break;
  }
}

// ---- connection management ------------------------------------------------------

function pickEndpoint(record) {
  const eps = Array.isArray(record.signaling) ? record.signaling : [];
  const here = eps.find((e) => e.host === location.hostname && String(e.port) === (location.port || (location.protocol === 'https:' ? '443' : '80')));
  return here || eps[0] || { host: location.hostname, port: Number(location.port) || 80, path: '/', key: 'peerjs', secure: location.protocol === 'https:' };
}

function teardown() {
  state.connGen++;
  state.live = false;
  state.transport = null;
  delete document.body.dataset.transport;
  for (const r of state.rooms.values()) { r.joined = false; r.members.clear(); }
  renderPresence();
  const { conn, peer } = state;
  state.conn = null; state.peer = null;
  try { conn && conn.close(); } catch { /* already closed */ }
  try { peer && peer.destroy(); } catch { /* already gone */ }
}

function scheduleRetry(reason) {
  teardown();
  if (state.retryTimer) return;
  // A replicated ring has other nodes: the first try after losing one goes to another node
  // at once (within 250 ms, spread); the user sees "reconnecting" for the first five tries
  // (about 15 s), then "offline" as on a single node.
  if (state.replicas.length > 1 && state.failovers++ === 0) {
    setConn('reconnecting', 'reconnecting…');
    state.retryTimer = setTimeout(() => { state.retryTimer = null; start(); }, Math.round(Math.random() * 250));
    return;
  }
  // Keeps trying until the page is closed (never gives up): the ceiling doubles up to
  // 30 s, and each wait is drawn from its upper half so that the browsers of a node that
  // just died come back at different moments.
  const wait = Math.round(state.retryMs * (0.5 + Math.random() * 0.5));
  state.retryMs = Math.min(state.retryMs * 2, 30000);
  if (state.replicas.length > 1 && state.failovers <= 5) setConn('reconnecting', 'reconnecting…');
  else setConn('offline', `offline (${reason}); retrying in ${Math.round(wait / 1000)}s`);
  state.retryTimer = setTimeout(() => { state.retryTimer = null; start(); }, wait);
}

// The node's relay WebSocket: the record's `relay_ws` when it names this node, else the
// /relay path of the chosen signaling endpoint's HTTP server (a node serves both there).
function relayWsUrl(endpoint) {
  const r = state.record;
  if (r && typeof r.relay_ws === 'string') return r.relay_ws;
  const host = endpoint.host.includes(':') ? `[${endpoint.host}]` : endpoint.host;
  return `${endpoint.secure ? 'wss' : 'ws'}://${host}:${endpoint.port}/relay`;
}

function useTransport(kind) {
  state.transport = kind;
  document.body.dataset.transport = kind;
  console.info(`ouroboros: connected over ${kind === 'ws' ? 'the relay WebSocket' : 'WebRTC'}`);
}

// The relay protocol over the node's WebSocket: JSON text frames, nothing else differs.
function connectWs(endpoint) {
  const gen = ++state.connGen;
  const url = relayWsUrl(endpoint);
  const ws = new WebSocket(`${url}?${new URLSearchParams(declaration())}`);
  state.peer = null;
  state.conn = { send: (m) => ws.send(JSON.stringify(m)), close: () => ws.close() };
  ws.onopen = () => {
    if (gen !== state.connGen) { ws.close(); return; }
    state.live = true;
    useTransport('ws');
    showError('');
  };
  ws.onmessage = (ev) => {
    if (gen !== state.connGen) return;
    let m;
    try { m = JSON.parse(ev.data); } catch { return; }
    onMessage(m);
  };
  // A close before the welcome (also while moving) or a dropped connection: look again.
  ws.onclose = () => { if (gen === state.connGen) scheduleRetry('connection closed'); };
}

// WebRTC first (auto), or only one path when ?transport= says so.
function connect(peerId, endpoint) {
  const webrtc = typeof window.peerjs?.Peer === 'function';
  if (state.transportChoice === 'ws' || (state.transportChoice === 'auto' && (state.preferWs || !webrtc))) {
    connectWs(endpoint);
    return;
  }
  connectRtc(peerId, endpoint);
}

function connectRtc(peerId, endpoint) {
  const gen = ++state.connGen;
  const auto = state.transportChoice === 'auto';
  // Auto: no DataChannel within fallbackMs, or WebRTC failing sooner, means the WebSocket.
  const fallback = (why) => {
    if (gen !== state.connGen || state.live) return false;
    clearTimeout(timer);
    console.info(`ouroboros: no DataChannel (${why}); falling back to the relay WebSocket`);
    teardown();
    state.preferWs = true;
    connectWs(endpoint);
    return true;
  };
  const timer = auto ? setTimeout(() => fallback(`none within ${state.fallbackMs} ms`), state.fallbackMs) : null;
  const opts = {
    host: endpoint.host, port: endpoint.port, path: endpoint.path || '/', key: endpoint.key || 'peerjs',
    secure: !!endpoint.secure, debug: 0,
  };
  // ICE servers: `?ice=none` for host candidates only, else the node's (the discovery
  // record's `ice_servers`, with fresh TURN credentials when the node mints them), else
  // peerjs's own defaults.
  if (params.get('ice') === 'none') opts.config = { iceServers: [] };
  else if (state.record && Array.isArray(state.record.ice_servers)) opts.config = { iceServers: state.record.ice_servers };
  // ?ice=relay: relay (TURN) candidates only; with no TURN server WebRTC cannot open at all
  // (what a network without UDP looks like: the fallback tests use it).
  if (params.get('ice') === 'relay') opts.config = { iceServers: opts.config?.iceServers ?? [], iceTransportPolicy: 'relay' };
  const peer = new window.peerjs.Peer(opts);
  state.peer = peer;
  peer.on('open', () => {
    if (gen !== state.connGen) return;
    // The node's id on this server: an endpoint's own peer_id when the node moved to a
    // fresh id there (another party held its id), else the record's.
    const dial = typeof endpoint.peer_id === 'string' && endpoint.peer_id ? endpoint.peer_id : peerId;
    const conn = peer.connect(dial, {
      reliable: true,
      serialization: params.get('serialization') || 'json',
      metadata: { ...declaration(), protocol: 'ouroboros/1' },
    });
    state.conn = conn;
    conn.on('open', () => {
      if (gen !== state.connGen) return;
      clearTimeout(timer);
      state.live = true;
      useTransport('webrtc');
      showError('');
      // The node greets with `welcome`; joining happens there.
    });
    conn.on('data', (d) => { if (gen === state.connGen) onMessage(d); });
    conn.on('close', () => { if (gen === state.connGen && !state.moving) scheduleRetry('connection closed'); });
    conn.on('error', (e) => {
      if (gen !== state.connGen || state.moving) return;
      if (!(auto && fallback(e.type || 'connection error'))) scheduleRetry(e.type || 'connection error');
    });
  });
  peer.on('error', (e) => {
    if (gen !== state.connGen) return;
    if (!(auto && fallback(e.type || 'signaling error'))) scheduleRetry(e.type || 'signaling error');
  });
  peer.on('disconnected', () => {
    // Signaling lost; an open DataConnection keeps working. Re-register quietly.
    if (gen === state.connGen && !peer.destroyed) setTimeout(() => { if (gen === state.connGen && !peer.destroyed) peer.reconnect(); }, 1000);
  });
}

function moveTo(m) {
  state.moving = m.generation;
  setConn('moving', `moving to generation ${m.generation}`);
  teardown();
  state.moving = m.generation;
  const record = { ...(state.record || {}), peer_id: m.peer_id, generation: m.generation };
  if (Array.isArray(m.signaling) && m.signaling.length) record.signaling = m.signaling;
  // The old record's relay_ws is the predecessor's: use `moved`'s or derive the successor's.
  if (typeof m.relay_ws === 'string') record.relay_ws = m.relay_ws; else delete record.relay_ws;
  state.record = record;
  $('generation').textContent = String(m.generation);
  const ep = pickEndpoint(record);
  connect(record.peer_id, ep);
  refreshStartedAt(ep, m.generation);
}

// The uptime shown is the current node's: after a move, read the successor's own record
// (every node serves /ouroboros.json with CORS) for its start time. The public PeerJS cloud
// serves no record, so it is not asked.
function refreshStartedAt(ep, generation) {
  if (!ep || !ep.host || /(^|\.)peerjs\.com$/.test(ep.host)) return;
  const scheme = ep.secure ? 'https' : 'http';
  fetch(`${scheme}://${ep.host}:${ep.port}/ouroboros.json?t=${Date.now()}`, { cache: 'no-store' })
    .then((res) => (res.ok ? res.json() : null))
    .then((rec) => {
      if (!rec || rec.generation !== generation || !rec.started_at) return;
      state.startedAt = Date.parse(rec.started_at);
      showUptime();
    })
    .catch(() => { /* keep the previous figure; the indicator shows the connection state */ });
}

// The PeerJS client is a classic <script> before this module: if it failed to load
// (offline and no local copy, a blocked CDN, an integrity mismatch) say so instead of
// waiting at "connecting…" forever.
function peerjsMissing() {
  if (window.peerjs && typeof window.peerjs.Peer === 'function') return false;
  const tag = document.querySelector('script[src*="peerjs"]');
  const src = tag ? tag.getAttribute('src') : '(none)';
  setConn('offline', 'PeerJS client not loaded');
  showError(`The PeerJS client could not be loaded from ${src}. Check the network, or start the node with --peerjs-url /peerjs.min.js (its own copy).`);
  return true;
}

// Where to read the record, in order. First connection: the page's source (?discovery=, else
// the node that served the page), then the ring's nodes. After losing a node of a replicated
// ring: its other nodes (a different one first on each try), the source, the lost node last.
function recordSources() {
  const source = new URL(params.get('discovery') || '/ouroboros.json', location.href).href;
  const lostWs = state.record && state.record.relay_ws;
  const of = (n) => n.url.replace(/\/+$/, '') + '/ouroboros.json';
  const others = state.replicas.filter((n) => n.relay_ws !== lostWs).map(of);
  const lost = state.replicas.filter((n) => n.relay_ws === lostWs).map(of);
  const k = others.length ? (state.spread + state.failovers) % others.length : 0;
  const rotated = [...others.slice(k), ...others.slice(0, k)];
  const order = state.record && state.replicas.length ? [...rotated, source, ...lost] : [source, ...rotated, ...lost];
  return [...new Set(order)];
}

// The first record from `recordSources()` that answers and is the ring's.
async function discover() {
  const failed = [];
  for (const url of recordSources()) {
    try {
      const res = await fetch(url, { cache: 'no-store', signal: AbortSignal.timeout(RECORD_TIMEOUT_MS) });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const record = await res.json();
      if (!record || typeof record.peer_id !== 'string') throw new Error('no peer_id in the discovery record');
      if (!(await trustRecord(record))) { refused('the discovery record'); throw new Error('the record is not signed with the ring key'); }
      return record;
    } catch (e) {
      failed.push(e.message);
    }
  }
  throw new Error(failed.join('; '));
}

async function start() {
  if (peerjsMissing()) return;
  if (state.failovers > 0) setConn('reconnecting', 'reconnecting…');
  else setConn('connecting', 'connecting…');
  let record;
  try {
    record = await discover();
  } catch (e) {
    scheduleRetry('discovery: ' + e.message);
    return;
  }
  state.record = record;
  state.replicas = Array.isArray(record.replicas) ? record.replicas.filter((n) => n && typeof n.url === 'string') : [];
  if (typeof record.generation === 'number') $('generation').textContent = String(record.generation);
  if (record.started_at) state.startedAt = Date.parse(record.started_at);
  showUptime();
  connect(record.peer_id, pickEndpoint(record));
}

// ---- UI -------------------------------------------------------------------------

function switchRoom(room) {
  room = room.trim();
  if (!room) return;
  state.room = room;
  localStorage.setItem('ouroboros.room', room);
  $('message-list').replaceChildren();
  $('history-status').textContent = '';
  const r = roomState(room);
  // Re-render from the node: forget the window we had and page back from the head.
  const known = r.joined;
  r.oldestSeq = null; r.exhausted = false; r.loading = false;
  for (const [id, p] of state.pending) if (p.room === room) $('message-list').append(p.el);
  renderRooms();
  renderPresence();
  if (known) requestHistory(room); else join(room);
}

function init() {
  $('name-input').value = state.name;
  $('room-input').value = state.room;
  roomState(state.room);
  renderRooms();
  $('name-input').addEventListener('change', () => {
    const v = $('name-input').value.trim();
    if (!v || v === state.name) return;
    state.name = v;
    localStorage.setItem('ouroboros.name', v);
    // The name is the client identity in the connection metadata: reconnect with it.
    if (state.record) { teardown(); connect(state.record.peer_id, pickEndpoint(state.record)); }
  });
  $('room-form').addEventListener('submit', (e) => { e.preventDefault(); switchRoom($('room-input').value); });
  $('composer').addEventListener('submit', (e) => {
    e.preventDefault();
    const input = $('composer-input');
    const text = input.value;
    if (!text.trim()) return;
    input.value = '';
    publish(text);
  });
  $('composer-input').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); $('composer').requestSubmit(); }
  });
  $('messages').addEventListener('scroll', () => { if ($('messages').scrollTop < 30) requestHistory(state.room); });
  $('messages').addEventListener('keydown', (e) => { if (e.key === 'Home' || e.key === 'PageUp') requestHistory(state.room); });
  $('retry').addEventListener('click', () => {
    if (state.retryTimer) { clearTimeout(state.retryTimer); state.retryTimer = null; }
    state.retryMs = 1000;
    start();
  });
  setInterval(showUptime, 1000);
  window.ouroboros = state; // for tests and curious people
  start();
}

init();
