/*
 * mxsync sensor dashboard page.
 *
 * Talks to its server over one WebSocket (/ws):
 *   {type: "hello", room, room_name, span_ms}
 *   {type: "snapshot", devices: [...], sensors: [{id, device, unit, kind, last, history}]}
 *       sent on open: every sensor with its last value and the last hour as buckets
 *   {type: "readings", readings: [{sensor, device, unit, t, v}]}   live
 *   {type: "device", device: {id, online, since_ms, reason}}        a device went on/offline
 * One section per device (with its online/offline badge), one card per sensor
 * (last value with its unit, a live chart of the last hour).
 *
 * window.dashboard exposes the page's state to scripts and tests.
 */
(() => {
  'use strict';

  const UNIT_LABELS = { Cel: '°C', '%RH': '%', Pa: 'Pa', hPa: 'hPa', W: 'W', V: 'V', lx: 'lx' };
  const COLORS = { temperature: '#f97316', humidity: '#0ea5e9', door: '#7c3aed' };
  const FALLBACK_COLORS = ['#4f46e5', '#0f766e', '#db2777', '#65a30d'];

  const state = {
    room: null,
    spanMs: 3600000,
    devices: new Map(),   // id -> {id, online, since_ms, reason}
    sensors: new Map(),   // id -> {id, device, unit, kind, last: {t, v} | null, chart, el}
    connected: false,
    snapshots: 0,
    readings: 0,
  };

  const $ = (id) => document.getElementById(id);
  let ws = null;
  let retryMs = 500;

  // ------------------------------------------------------------------ formatting

  function quantity(sensorId) {
    const tail = sensorId.split('/').pop();
    return tail.replace(/[_-]+/g, ' ');
  }

  function colorFor(sensorId) {
    const q = quantity(sensorId).toLowerCase();
    if (COLORS[q]) return COLORS[q];
    let h = 0;
    for (const ch of sensorId) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
    return FALLBACK_COLORS[h % FALLBACK_COLORS.length];
  }

  // Within a device: temperature, humidity, door, then the rest by name.
  function sortKey(sensorId) {
    const rank = ['temperature', 'humidity', 'door'].indexOf(quantity(sensorId).toLowerCase());
    return `${rank < 0 ? 9 : rank}${sensorId}`;
  }

  function unitLabel(unit) {
    return unit ? UNIT_LABELS[unit] ?? unit : '';
  }

  function decimalsFor(unit) {
    return unit === 'Cel' ? 2 : unit === '%RH' ? 1 : 2;
  }

  function clock(t) {
    return new Date(t).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
  }

  function ago(t) {
    const s = Math.max(0, Math.round((Date.now() - t) / 1000));
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    return `${Math.floor(s / 3600)} h ago`;
  }

  // ------------------------------------------------------------------ DOM

  function deviceSection(id) {
    let sec = document.querySelector(`section.device[data-device="${CSS.escape(id)}"]`);
    if (sec) return sec;
    $('empty')?.remove();
    sec = document.createElement('section');
    sec.className = 'device';
    sec.dataset.device = id;
    sec.innerHTML = '<header><h2></h2><span class="badge unknown">unknown</span><span class="since"></span></header><div class="cards"></div>';
    sec.querySelector('h2').textContent = id;
    // Keep sections sorted by device id.
    const after = Array.from(document.querySelectorAll('section.device')).find((s) => s.dataset.device > id);
    $('devices').insertBefore(sec, after || null);
    renderDevice(id);
    return sec;
  }

  function renderDevice(id) {
    const sec = deviceSection(id);
    const d = state.devices.get(id);
    const badge = sec.querySelector('.badge');
    const since = sec.querySelector('.since');
    if (!d) {
      badge.className = 'badge unknown';
      badge.textContent = 'no status yet';
      since.textContent = '';
    } else {
      badge.className = `badge ${d.online ? 'online' : 'offline'}`;
      badge.textContent = d.online ? 'online' : 'offline';
      const why = !d.online && d.reason ? ` (${d.reason})` : '';
      since.textContent = (d.since_ms ? `since ${clock(d.since_ms)}${why}` : why) +
        (d.description ? ` · ${d.description}` : '');
    }
    sec.classList.toggle('is-offline', !!d && !d.online);
    sec.dataset.online = d ? String(d.online) : 'unknown';
    renderSummary();
  }

  function sensorCard(info) {
    let s = state.sensors.get(info.id);
    if (s) {
      if (info.unit && !s.unit) s.unit = info.unit;
      return s;
    }
    const device = info.device || info.id.split('/')[0];
    const kind = info.kind || (typeof info.last?.v === 'boolean' ? 'bool' : 'float');
    const card = document.createElement('article');
    card.className = 'card';
    card.dataset.sensor = info.id;
    card.innerHTML = '<div class="head"><div class="name"></div><div class="value">—</div></div>' +
      '<div class="meta"><span class="sid"></span><span class="updated"></span></div><canvas></canvas>';
    card.querySelector('.name').textContent = quantity(info.id);
    card.querySelector('.sid').textContent = info.id;
    const cards = deviceSection(device).querySelector('.cards');
    const after = Array.from(cards.children).find((c) => sortKey(c.dataset.sensor) > sortKey(info.id));
    cards.insertBefore(card, after || null);
    s = {
      id: info.id,
      device,
      unit: info.unit || null,
      kind,
      last: null,
      el: card,
      chart: new LineChart(card.querySelector('canvas'), {
        color: colorFor(info.id),
        kind: kind === 'bool' ? 'bool' : 'number',
        spanMs: state.spanMs,
      }),
    };
    state.sensors.set(info.id, s);
    return s;
  }

  function renderValue(s) {
    const el = s.el.querySelector('.value');
    if (!s.last) {
      el.textContent = '—';
      return;
    }
    const v = s.last.v;
    el.textContent = '';
    if (typeof v === 'boolean') {
      const pill = document.createElement('span');
      pill.className = `pill ${v ? 'open' : 'closed'}`;
      pill.textContent = v ? 'open' : 'closed';
      el.appendChild(pill);
    } else {
      const num = document.createElement('span');
      num.className = 'num';
      num.textContent = typeof v === 'number' ? v.toFixed(decimalsFor(s.unit)) : String(v);
      el.appendChild(num);
      if (s.unit) {
        const unit = document.createElement('span');
        unit.className = 'unit';
        unit.textContent = unitLabel(s.unit);
        el.appendChild(unit);
      }
    }
    el.dataset.value = JSON.stringify(v);
  }

  function renderSummary() {
    const online = Array.from(state.devices.values()).filter((d) => d.online).length;
    $('summary').innerHTML = '';
    const add = (n, label) => {
      const span = document.createElement('span');
      const b = document.createElement('b');
      b.textContent = String(n);
      span.append(b, ` ${label}`);
      $('summary').appendChild(span);
    };
    add(`${online}/${state.devices.size}`, 'devices online');
    add(state.sensors.size, 'sensors');
  }

  function tick() {
    const now = Date.now();
    for (const s of state.sensors.values()) {
      s.chart.draw(now);
      s.el.querySelector('.updated').textContent = s.last ? `updated ${ago(s.last.t)}` : 'no reading yet';
    }
    $('clock').textContent = clock(now);
  }

  // ------------------------------------------------------------------ messages

  function setReading(s, t, v) {
    if (!s.last || t >= s.last.t) {
      s.last = { t, v };
      renderValue(s);
    }
  }

  function onSnapshot(msg) {
    for (const d of msg.devices) state.devices.set(d.id, d);
    for (const d of msg.devices) renderDevice(d.id);
    for (const info of msg.sensors) {
      const s = sensorCard(info);
      s.chart.setHistory(info.history || []);
      if (info.last) setReading(s, info.last.t, info.last.v);
    }
    state.snapshots += 1;
    renderSummary();
    tick();
  }

  function onReadings(msg) {
    for (const r of msg.readings) {
      const s = sensorCard({ id: r.sensor, device: r.device, unit: r.unit, last: { v: r.v } });
      s.chart.add(r.t, r.v);
      setReading(s, r.t, r.v);
      state.readings += 1;
    }
    renderSummary();
    tick();
  }

  function setStatus(kind, text) {
    const el = $('status');
    el.className = `status ${kind}`;
    el.querySelector('span').textContent = text;
  }

  function connect() {
    setStatus('connecting', 'connecting');
    ws = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`);
    ws.onopen = () => {
      retryMs = 500;
      state.connected = true;
      setStatus('live', 'live');
    };
    ws.onmessage = (ev) => {
      const msg = JSON.parse(ev.data);
      if (msg.type === 'hello') {
        state.room = msg.room;
        state.spanMs = msg.span_ms || state.spanMs;
        $('room').textContent = msg.room_name ? `${msg.room_name} · ${msg.room}` : msg.room;
      } else if (msg.type === 'snapshot') {
        onSnapshot(msg);
      } else if (msg.type === 'readings') {
        onReadings(msg);
      } else if (msg.type === 'device') {
        state.devices.set(msg.device.id, msg.device);
        renderDevice(msg.device.id);
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

  window.dashboard = {
    connected: () => state.connected,
    snapshots: () => state.snapshots,
    /** {sensor id: {device, unit, kind, value, t, points}} */
    sensors() {
      const out = {};
      for (const [id, s] of state.sensors) {
        out[id] = {
          device: s.device,
          unit: s.unit,
          kind: s.kind,
          value: s.last ? s.last.v : null,
          t: s.last ? s.last.t : null,
          points: s.chart.count(),
          shown: s.el.querySelector('.value').textContent,
        };
      }
      return out;
    },
    /** {device id: {online, since_ms, reason, badge}} */
    devices() {
      const out = {};
      for (const [id, d] of state.devices) {
        const sec = document.querySelector(`section.device[data-device="${CSS.escape(id)}"]`);
        out[id] = { ...d, badge: sec ? sec.querySelector('.badge').textContent : null };
      }
      return out;
    },
  };

  setInterval(tick, 1000);
  window.addEventListener('resize', tick);
  connect();
})();
