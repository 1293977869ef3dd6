/*
 * mxsync whiteboard page.
 *
 * Draws on a canvas and talks to its own server over one WebSocket (/ws); the
 * server keeps the board in the room's SyncedDoc and pushes the whole board
 * ({type: "board", strokes, presence}) whenever it changes, locally or remotely.
 * Coordinates are whole numbers on a fixed board (hello.board.w x hello.board.h).
 *
 * A stroke is drawn locally while the pointer moves and sent when it is
 * released; until the server's next board includes it, it stays "pending" (and
 * is resent after a reconnect; the server ignores an id it already has).
 *
 * window.whiteboard exposes the page's state to scripts and tests.
 */
(() => {
  'use strict';

  const COLORS = ['#111827', '#e11d48', '#f97316', '#eab308', '#16a34a', '#0ea5e9', '#2563eb', '#7c3aed'];
  const WIDTHS = [2, 4, 8, 16];
  const ERASER_RADIUS = 10;       // board units
  const MIN_STEP = 2;             // board units between two recorded points
  const PENDING_MS = 8000;        // forget a pending stroke the server never confirmed

  const state = {
    me: null,
    room: null,
    W: 1600,
    H: 900,
    strokes: [],                  // the board, bottom to top, as the server last sent it
    presence: [],
    version: -1,
    boards: 0,                    // board messages received
    pending: new Map(),           // id -> {stroke, sentAt}
    hidden: new Set(),            // ids erased here, still in the last board
    tool: 'pen',
    color: COLORS[0],
    width: WIDTHS[1],
    current: null,                // the stroke being drawn
    hover: null,                  // eraser position
    erasing: false,               // eraser held down
    connected: false,
  };

  const $ = (id) => document.getElementById(id);
  const canvas = $('board');
  const ctx = canvas.getContext('2d');
  const layer = document.createElement('canvas');   // committed strokes, redrawn on change
  const lctx = layer.getContext('2d');
  let scale = 1;
  let dpr = 1;
  let layerDirty = true;
  let frame = 0;
  let ws = null;
  let retryMs = 500;

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

  function send(msg) {
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify(msg));
      return true;
    }
    return false;
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
    const out = [];
    const onBoard = new Set();
    for (const s of state.strokes) {
      onBoard.add(s.id);
      if (!state.hidden.has(s.id)) out.push(s);
    }
    for (const [id, p] of state.pending) if (!onBoard.has(id)) out.push(p.stroke);
    return out;
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

  function eraseAt(x, y) {
    const visible = visibleStrokes();
    for (let i = visible.length - 1; i >= 0; i--) {
      const s = visible[i];
      if (!hits(s, x, y)) continue;
      if (state.pending.has(s.id)) continue;  // not on the server yet
      state.hidden.add(s.id);
      send({ op: 'erase', id: s.id });
      layerDirty = true;
    }
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
    if (state.tool === 'eraser') {
      state.hover = [x, y];
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
    state.pending.set(s.id, { stroke: s, sentAt: Date.now() });
    send({ op: 'stroke', stroke: { id: s.id, color: s.color, width: s.width, points: s.points } });
    refresh();
  }
  canvas.addEventListener('pointerup', finish);
  canvas.addEventListener('pointercancel', finish);
  canvas.addEventListener('pointerleave', () => {
    state.hover = null;
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
    send({ op: 'undo' });
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
    send({ op: 'clear' });
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
    for (const p of state.presence) {
      const li = document.createElement('li');
      const name = localpart(p.user);
      li.title = `${p.user} · ${p.pages} page${p.pages === 1 ? '' : 's'} open`;
      li.dataset.user = p.user;
      if (p.user === state.me) li.classList.add('me');
      const avatar = document.createElement('span');
      avatar.className = 'avatar';
      avatar.style.background = `hsl(${hueOf(p.user)}, 62%, 48%)`;
      avatar.textContent = name.slice(0, 1);
      const label = document.createElement('span');
      label.className = 'name';
      label.textContent = name;
      li.append(avatar, label);
      if (p.user === state.me) {
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

  // ------------------------------------------------------------------ connection

  function onBoard(msg) {
    state.strokes = msg.strokes;
    state.presence = msg.presence;
    state.version = msg.version;
    state.boards += 1;
    const ids = new Set(msg.strokes.map((s) => s.id));
    const now = Date.now();
    for (const [id, p] of state.pending) {
      if (ids.has(id) || now - p.sentAt > PENDING_MS) state.pending.delete(id);
    }
    for (const id of state.hidden) if (!ids.has(id)) state.hidden.delete(id);
    renderPresence();
    refresh();
  }

  function connect() {
    setStatus('connecting', 'connecting');
    const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
    ws = new WebSocket(url);
    ws.onopen = () => {
      retryMs = 500;
      state.connected = true;
      setStatus('live', 'live');
      // What was drawn or erased while the connection was down (the server
      // ignores a stroke id it already has and an erase of a missing stroke).
      for (const { stroke: s } of state.pending.values()) {
        send({ op: 'stroke', stroke: { id: s.id, color: s.color, width: s.width, points: s.points } });
      }
      for (const id of state.hidden) send({ op: 'erase', id });
    };
    ws.onmessage = (ev) => {
      const msg = JSON.parse(ev.data);
      if (msg.type === 'hello') {
        state.me = msg.user;
        state.room = msg.room;
        $('room').textContent = `${msg.room_name || msg.room} · as ${localpart(msg.user)}`;
        $('room').title = `${msg.room} · ${msg.user}`;
        if (msg.board && (msg.board.w !== state.W || msg.board.h !== state.H)) {
          state.W = msg.board.w;
          state.H = msg.board.h;
          resize();
        }
      } else if (msg.type === 'board') {
        onBoard(msg);
      } else if (msg.type === 'error') {
        console.warn('whiteboard server:', msg.message);
      }
    };
    ws.onclose = () => {
      state.connected = false;
      setStatus('offline', 'offline, retrying');
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 5000);
    };
  }

  // ------------------------------------------------------------------ for scripts and tests

  window.whiteboard = {
    me: () => state.me,
    connected: () => state.connected,
    version: () => state.version,
    boards: () => state.boards,
    strokes: () => state.strokes.map((s) => ({ ...s, points: s.points.slice() })),
    presence: () => state.presence.map((p) => p.user),
    pending: () => Array.from(state.pending.keys()),
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
  connect();
})();
