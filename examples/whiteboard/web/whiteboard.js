/*
 * mxsync whiteboard page: a Yjs app.
 *
 * The board is a Y.Doc (Map "strokes": id -> {author, color, width, points, t},
 * Array "order": ids bottom to top; examples/whiteboard/model.py says the same
 * in Python), synced with a stock y-websocket WebsocketProvider to the gateway
 * of this page's server (/yjs/<doc>), which keeps it in the room's SyncedDoc.
 * Presence and cursors are the provider's awareness states ({user: {id, color},
 * cursor: [x, y] | null}): they expire by themselves and never enter the document.
 *
 * Source of static/whiteboard.js: `python -m examples.whiteboard.build` bundles
 * it with yjs and y-websocket from npm (esbuild); nothing is loaded from the
 * internet at run time.
 *
 * window.whiteboard exposes the page's state to scripts and tests.
 */
import * as Y from 'yjs';
import { WebsocketProvider } from 'y-websocket';

(async () => {
  'use strict';

  const COLORS = ['#111827', '#e11d48', '#f97316', '#eab308', '#16a34a', '#0ea5e9', '#2563eb', '#7c3aed'];
  const WIDTHS = [2, 4, 8, 16];
  const ERASER_RADIUS = 10;       // board units
  const MIN_STEP = 2;             // board units between two recorded points
  const CURSOR_MS = 80;           // at most one cursor move in the awareness per this

  const state = {
    me: null,
    room: null,
    W: 1600,
    H: 900,
    strokes: [],                  // the board, bottom to top, read from the Y.Doc
    presence: [],                 // user ids with an awareness state (me included)
    cursors: [],                  // [{user, color, x, y}] of the other pages
    version: 0,                   // Y.Doc updates seen
    boards: 0,                    // times the board was read from the Y.Doc
    tool: 'pen',
    color: COLORS[0],
    width: WIDTHS[1],
    current: null,                // the stroke being drawn
    hover: null,                  // eraser position
    erasing: false,               // eraser held down
    connected: false,
  };

  const $ = (id) => document.getElementById(id);

  // What this page's server says: who we are, which room, the document's name.
  const config = await (await fetch('/api/config')).json();
  state.me = config.user;
  state.room = config.room;
  state.W = config.board.w;
  state.H = config.board.h;

  const ydoc = new Y.Doc();
  const ymap = ydoc.getMap('strokes');
  const yorder = ydoc.getArray('order');
  const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}${config.ws}`;
  // disableBc: every change goes through the gateway, even between two tabs.
  const provider = new WebsocketProvider(wsUrl, config.doc, ydoc, { disableBc: true });
  const canvas = $('board');
  const ctx = canvas.getContext('2d');
  const layer = document.createElement('canvas');   // committed strokes, redrawn on change
  const lctx = layer.getContext('2d');
  let scale = 1;
  let dpr = 1;
  let layerDirty = true;
  let frame = 0;
  let lastCursor = 0;
  let cursorTimer = 0;

  // ------------------------------------------------------------------ helpers

  const clamp = (v, lo, hi) => Math.max(lo, Math.min(hi, v));

  function newId() {
    if (window.crypto && crypto.getRandomValues) {
      const b = new Uint8Array(8);
      crypto.getRandomValues(b);
      return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
    }
    return Math.random().toString(16).slice(2, 18);
  }

  function localpart(user) {
    return String(user || '').replace(/^@/, '').split(':')[0];
  }

  function hueOf(text) {
    let h = 0;
    for (const ch of String(text)) h = (h * 31 + ch.codePointAt(0)) >>> 0;
    return h % 360;
  }

  function colorOf(user) {
    return `hsl(${hueOf(user)}, 62%, 48%)`;
  }

  // ------------------------------------------------------------------ geometry

  function resize() {
    const stage = canvas.parentElement.getBoundingClientRect();
    const pad = 20;
    scale = Math.max(0.05, Math.min((stage.width - 2 * pad) / state.W, (stage.height - 2 * pad) / state.H));
    const cssW = Math.round(state.W * scale);
    const cssH = Math.round(state.H * scale);
    dpr = window.devicePixelRatio || 1;
    canvas.style.width = cssW + 'px';
    canvas.style.height = cssH + 'px';
    canvas.width = layer.width = Math.round(cssW * dpr);
    canvas.height = layer.height = Math.round(cssH * dpr);
    layerDirty = true;
    render();
  }

  function toBoard(ev) {
    const r = canvas.getBoundingClientRect();
    return [
      clamp(Math.round(((ev.clientX - r.left) / r.width) * state.W), 0, state.W),
      clamp(Math.round(((ev.clientY - r.top) / r.height) * state.H), 0, state.H),
    ];
  }

  function distToSegment(px, py, ax, ay, bx, by) {
    const dx = bx - ax;
    const dy = by - ay;
    const len2 = dx * dx + dy * dy;
    const t = len2 ? clamp(((px - ax) * dx + (py - ay) * dy) / len2, 0, 1) : 0;
    return Math.hypot(px - (ax + t * dx), py - (ay + t * dy));
  }

  function hits(stroke, x, y) {
    const p = stroke.points;
    const reach = ERASER_RADIUS + stroke.width / 2;
    if (p.length === 2) return Math.hypot(x - p[0], y - p[1]) <= reach;
    for (let i = 0; i + 3 < p.length; i += 2) {
      if (distToSegment(x, y, p[i], p[i + 1], p[i + 2], p[i + 3]) <= reach) return true;
    }
    return false;
  }

  // ------------------------------------------------------------------ drawing

  function visibleStrokes() {
    return state.strokes;
  }

  function trace(c, s) {
    const p = s.points;
    const n = p.length / 2;
    c.strokeStyle = s.color;
    c.fillStyle = s.color;
    c.lineWidth = s.width;
    c.lineCap = 'round';
    c.lineJoin = 'round';
    if (n === 1) {
      c.beginPath();
      c.arc(p[0], p[1], s.width / 2, 0, 2 * Math.PI);
      c.fill();
      return;
    }
    c.beginPath();
    c.moveTo(p[0], p[1]);
    // Quadratic curves through the midpoints: smooth, and still through the ends.
    for (let i = 1; i < n - 1; i++) {
      c.quadraticCurveTo(p[2 * i], p[2 * i + 1], (p[2 * i] + p[2 * i + 2]) / 2, (p[2 * i + 1] + p[2 * i + 3]) / 2);
    }
    c.lineTo(p[2 * n - 2], p[2 * n - 1]);
    c.stroke();
  }

  function render() {
    frame = 0;
    const k = dpr * scale;
    if (layerDirty) {
      lctx.setTransform(1, 0, 0, 1, 0, 0);
      lctx.fillStyle = '#ffffff';
      lctx.fillRect(0, 0, layer.width, layer.height);
      lctx.setTransform(k, 0, 0, k, 0, 0);
      for (const s of visibleStrokes()) trace(lctx, s);
      layerDirty = false;
    }
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.drawImage(layer, 0, 0);
    ctx.setTransform(k, 0, 0, k, 0, 0);
    if (state.current) trace(ctx, state.current);
    if (state.tool === 'eraser' && state.hover) {
      ctx.beginPath();
      ctx.arc(state.hover[0], state.hover[1], ERASER_RADIUS, 0, 2 * Math.PI);
      ctx.lineWidth = 1.5 / scale;
      ctx.strokeStyle = 'rgba(220, 38, 38, 0.8)';
      ctx.stroke();
    }
    for (const c of state.cursors) {
      ctx.beginPath();
      ctx.arc(c.x, c.y, 5 / scale, 0, 2 * Math.PI);
      ctx.fillStyle = c.color;
      ctx.fill();
      ctx.font = `${12 / scale}px system-ui, sans-serif`;
      ctx.fillText(localpart(c.user), c.x + 8 / scale, c.y - 8 / scale);
    }
  }

  function schedule() {
    if (!frame) frame = requestAnimationFrame(render);
  }

  function refresh() {
    layerDirty = true;
    render();
    updateInfo();
  }

  // ------------------------------------------------------------------ pointer input

  // ------------------------------------------------------------------ the document

  function deleteStroke(id) {
    ymap.delete(id);
    const ids = yorder.toArray();
    // A concurrent edit may have left the id twice; remove every copy.
    for (let i = ids.length - 1; i >= 0; i--) if (ids[i] === id) yorder.delete(i, 1);
  }

  function addStroke(s) {
    ydoc.transact(() => {
      ymap.set(s.id, { author: state.me, color: s.color, width: s.width, points: s.points, t: Date.now() });
      yorder.push([s.id]);
    });
  }

  /** The board from the Y.Doc, as model.py's Board.snapshot reads it. */
  function readBoard() {
    const raw = ymap.toJSON();
    const seen = new Set();
    const ids = [];
    for (const id of yorder.toArray()) {
      if (typeof id === 'string' && id in raw && !seen.has(id)) {
        seen.add(id);
        ids.push(id);
      }
    }
    const rest = Object.keys(raw).filter((id) => !seen.has(id));
    rest.sort((a, b) => ((raw[a] && raw[a].t) || 0) - ((raw[b] && raw[b].t) || 0) || (a < b ? -1 : 1));
    const out = [];
    for (const id of ids.concat(rest)) {
      const s = raw[id];
      if (!s || typeof s !== 'object' || !Array.isArray(s.points)) continue;
      out.push({
        id,
        author: String(s.author || ''),
        color: String(s.color || '#000000'),
        width: Math.round(Number(s.width) || 1),
        points: s.points.map((v) => Math.round(Number(v) || 0)),
      });
    }
    state.strokes = out;
    state.boards += 1;
    refresh();
  }

  function eraseAt(x, y) {
    const visible = visibleStrokes();
    const gone = [];
    for (let i = visible.length - 1; i >= 0; i--) {
      if (hits(visible[i], x, y)) gone.push(visible[i].id);
    }
    if (gone.length) ydoc.transact(() => gone.forEach(deleteStroke));
  }

  function moveCursor(point) {
    const send = () => {
      cursorTimer = 0;
      lastCursor = Date.now();
      provider.awareness.setLocalStateField('cursor', state.hover);
    };
    state.hover = point;
    if (cursorTimer) return;
    const wait = CURSOR_MS - (Date.now() - lastCursor);
    if (wait <= 0) send();
    else cursorTimer = setTimeout(send, wait);
  }

  canvas.addEventListener('pointerdown', (ev) => {
    if (ev.button !== 0) return;
    canvas.setPointerCapture(ev.pointerId);
    const [x, y] = toBoard(ev);
    if (state.tool === 'eraser') {
      state.erasing = true;
      eraseAt(x, y);
      render();
      return;
    }
    state.current = { id: newId(), author: state.me, color: state.color, width: state.width, points: [x, y] };
    render();
  });

  canvas.addEventListener('pointermove', (ev) => {
    const [x, y] = toBoard(ev);
    moveCursor([x, y]);
    if (state.tool === 'eraser') {
      if (state.erasing) eraseAt(x, y);
      schedule();
      return;
    }
    const s = state.current;
    if (!s) return;
    const events = ev.getCoalescedEvents ? ev.getCoalescedEvents() : [ev];
    for (const e of events.length ? events : [ev]) {
      const [px, py] = toBoard(e);
      const n = s.points.length;
      if (Math.hypot(px - s.points[n - 2], py - s.points[n - 1]) >= MIN_STEP) s.points.push(px, py);
    }
    schedule();
  });

  function finish() {
    state.erasing = false;
    const s = state.current;
    state.current = null;
    if (!s) return;
    addStroke(s);
  }
  canvas.addEventListener('pointerup', finish);
  canvas.addEventListener('pointercancel', finish);
  canvas.addEventListener('pointerleave', () => {
    moveCursor(null);
    schedule();
  });

  // ------------------------------------------------------------------ toolbar

  function setTool(tool) {
    state.tool = tool;
    document.querySelectorAll('.tool').forEach((b) => b.classList.toggle('active', b.dataset.tool === tool));
    canvas.classList.toggle('erasing', tool === 'eraser');
    schedule();
  }

  function setColor(color) {
    state.color = color;
    document.querySelectorAll('.swatch').forEach((b) => b.classList.toggle('active', b.dataset.color === color));
    document.querySelectorAll('.width i').forEach((i) => (i.style.background = color));
    setTool('pen');
  }

  function setWidth(width) {
    state.width = width;
    document.querySelectorAll('.width').forEach((b) => b.classList.toggle('active', Number(b.dataset.width) === width));
    setTool('pen');
  }

  function undo() {
    const mine = visibleStrokes().filter((s) => s.author === state.me);
    if (mine.length) ydoc.transact(() => deleteStroke(mine[mine.length - 1].id));
  }

  let clearTimer = 0;
  function clearBoard(confirmed) {
    const btn = $('clear');
    if (!confirmed && !btn.classList.contains('confirm')) {
      btn.classList.add('confirm');
      btn.querySelector('span').textContent = 'Clear for all?';
      clearTimer = setTimeout(resetClear, 3000);
      return;
    }
    resetClear();
    ydoc.transact(() => {
      for (const id of Array.from(ymap.keys())) ymap.delete(id);
      if (yorder.length) yorder.delete(0, yorder.length);
    });
  }
  function resetClear() {
    clearTimeout(clearTimer);
    const btn = $('clear');
    btn.classList.remove('confirm');
    btn.querySelector('span').textContent = 'Clear';
  }

  for (const color of COLORS) {
    const b = document.createElement('button');
    b.className = 'swatch';
    b.dataset.color = color;
    b.title = color;
    b.style.background = color;
    b.style.setProperty('--swatch', color);
    b.addEventListener('click', () => setColor(color));
    $('swatches').appendChild(b);
  }
  for (const width of WIDTHS) {
    const b = document.createElement('button');
    b.className = 'width';
    b.dataset.width = String(width);
    b.title = `Width ${width}`;
    const dot = document.createElement('i');
    const px = Math.max(3, Math.min(18, width + 2));
    dot.style.width = dot.style.height = px + 'px';
    b.appendChild(dot);
    b.addEventListener('click', () => setWidth(width));
    $('widths').appendChild(b);
  }
  document.querySelectorAll('.tool').forEach((b) => b.addEventListener('click', () => setTool(b.dataset.tool)));
  $('undo').addEventListener('click', undo);
  $('clear').addEventListener('click', () => clearBoard(false));
  document.addEventListener('keydown', (ev) => {
    if ((ev.ctrlKey || ev.metaKey) && ev.key.toLowerCase() === 'z') {
      ev.preventDefault();
      undo();
    } else if (!ev.ctrlKey && !ev.metaKey && !ev.altKey) {
      if (ev.key === 'p') setTool('pen');
      if (ev.key === 'e') setTool('eraser');
    }
  });
  setColor(state.color);
  setWidth(state.width);

  // ------------------------------------------------------------------ presence and status

  function renderPresence() {
    const ul = $('presence');
    ul.textContent = '';
    for (const user of state.presence) {
      const li = document.createElement('li');
      const name = localpart(user);
      li.title = user;
      li.dataset.user = user;
      if (user === state.me) li.classList.add('me');
      const avatar = document.createElement('span');
      avatar.className = 'avatar';
      avatar.style.background = colorOf(user);
      avatar.textContent = name.slice(0, 1);
      const label = document.createElement('span');
      label.className = 'name';
      label.textContent = name;
      li.append(avatar, label);
      if (user === state.me) {
        const you = document.createElement('span');
        you.className = 'you';
        you.textContent = '(you)';
        li.appendChild(you);
      }
      ul.appendChild(li);
    }
  }

  function setStatus(kind, text) {
    const el = $('status');
    el.className = `status ${kind}`;
    el.querySelector('span').textContent = text;
  }

  function updateInfo() {
    const mine = state.strokes.filter((s) => s.author === state.me).length;
    const n = state.strokes.length;
    $('info').textContent = `${n} stroke${n === 1 ? '' : 's'} on the board · ${mine} yours`;
  }

  // ------------------------------------------------------------------ awareness and connection

  function onAwareness() {
    const users = new Set();
    const cursors = [];
    for (const [clientID, st] of provider.awareness.getStates()) {
      const user = st && st.user && typeof st.user.id === 'string' ? st.user.id : null;
      if (!user) continue;  // e.g. the gateway's own empty state
      users.add(user);
      const c = st.cursor;
      if (clientID !== ydoc.clientID && Array.isArray(c) && c.length === 2) {
        cursors.push({ user, color: colorOf(user), x: Number(c[0]) || 0, y: Number(c[1]) || 0 });
      }
    }
    state.presence = Array.from(users).sort();
    state.cursors = cursors;
    renderPresence();
    schedule();
  }

  ydoc.on('update', () => {
    state.version += 1;
    readBoard();
  });
  provider.on('status', (ev) => {
    state.connected = ev.status === 'connected';
    if (state.connected) setStatus('live', 'live');
    else setStatus(ev.status === 'connecting' ? 'connecting' : 'offline', ev.status === 'connecting' ? 'connecting' : 'offline, retrying');
  });
  provider.on('sync', (synced) => {
    if (synced) readBoard();
  });
  provider.awareness.on('change', onAwareness);
  provider.awareness.setLocalState({ user: { id: state.me, color: colorOf(state.me) }, cursor: null });
  $('room').textContent = `${config.room_name || config.room} · as ${localpart(config.user)}`;
  $('room').title = `${config.room} · ${config.user}`;

  // ------------------------------------------------------------------ for scripts and tests

  window.whiteboard = {
    me: () => state.me,
    connected: () => state.connected,
    synced: () => provider.synced,
    version: () => state.version,
    boards: () => state.boards,
    strokes: () => state.strokes.map((s) => ({ ...s, points: s.points.slice() })),
    presence: () => state.presence.slice(),
    cursors: () => state.cursors.map((c) => ({ ...c })),
    /** Bytes of the whole document state (Y.encodeStateAsUpdate). */
    stateBytes: () => Y.encodeStateAsUpdate(ydoc).length,
    /** Page (CSS pixel) coordinates of a board point, to drive the mouse. */
    clientPoint(x, y) {
      const r = canvas.getBoundingClientRect();
      return [r.left + (x / state.W) * r.width, r.top + (y / state.H) * r.height];
    },
    /** [r, g, b, a] of the canvas at a board point. */
    pixel(x, y) {
      const px = clamp(Math.floor(x * scale * dpr), 0, canvas.width - 1);
      const py = clamp(Math.floor(y * scale * dpr), 0, canvas.height - 1);
      return Array.from(ctx.getImageData(px, py, 1, 1).data);
    },
    setTool,
    setColor,
    setWidth,
    undo,
    clear: () => clearBoard(true),
  };

  // The stage changes size with the window and with the toolbar (presence chips).
  new ResizeObserver(() => resize()).observe(canvas.parentElement);
  resize();
})();
