/*
 * LineChart: a small time-series chart on a <canvas>, written for this page.
 *
 *   const chart = new LineChart(canvas, {color: '#f97316', kind: 'number', spanMs: 3600000});
 *   chart.setHistory(buckets);   // [{t0, t1, n, min, max, mean}] from the server's window()
 *   chart.add(tMs, value);       // a live reading (bool: true/false)
 *   chart.draw(nowMs);           // redraw the window [now - span, now]
 *
 * Numbers: a min..max band for history buckets, a line through bucket means and
 * live readings, a soft area under it, a dot on the newest point. Bools: the
 * time spent "true" (a door open) shaded, as steps.
 */
(() => {
  'use strict';

  const MAX_POINTS = 8000;

  function niceStep(range, target) {
    const raw = range / Math.max(1, target);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * mag >= raw) return m * mag;
    return 10 * mag;
  }

  function hhmm(t) {
    const d = new Date(t);
    return `${String(d.getHours()).padStart(2, '0')}:${String(d.getMinutes()).padStart(2, '0')}`;
  }

  // Consecutive points further apart than three times the spacing around them
  // (and than 5 s) have no data between them: [[t, v], ...] -> runs of points.
  function splitAtGaps(pts) {
    const runs = [[pts[0]]];
    for (let i = 1; i < pts.length; i++) {
      const dt = pts[i][0] - pts[i - 1][0];
      const before = i > 1 ? pts[i - 1][0] - pts[i - 2][0] : 0;
      const after = i + 1 < pts.length ? pts[i + 1][0] - pts[i][0] : 0;
      const usual = Math.max(before, after);
      if (usual > 0 && dt > 3 * usual && dt > 5000) runs.push([]);
      runs[runs.length - 1].push(pts[i]);
    }
    return runs;
  }

  function withAlpha(hex, a) {
    const n = parseInt(hex.slice(1), 16);
    return `rgba(${(n >> 16) & 255}, ${(n >> 8) & 255}, ${n & 255}, ${a})`;
  }

  class LineChart {
    constructor(canvas, opts = {}) {
      this.canvas = canvas;
      this.color = opts.color || '#4f46e5';
      this.kind = opts.kind || 'number';
      this.spanMs = opts.spanMs || 3600000;
      this.decimals = opts.decimals ?? 1;
      this.bands = [];    // [t0, t1, min, max]
      this.points = [];   // [t, v], by time
    }

    setHistory(buckets) {
      this.bands = [];
      const pts = [];
      for (const b of buckets || []) {
        if (!b || !b.n) continue;
        const v = (x) => (typeof x === 'boolean' ? Number(x) : x);
        this.bands.push([b.t0, b.t1, v(b.min), v(b.max)]);
        // A bool bucket is drawn as its share of "true" time; a number as its mean.
        pts.push([(b.t0 + b.t1) / 2, v(b.mean)]);
      }
      const live = this.points.filter((p) => pts.length === 0 || p[0] > pts[pts.length - 1][0]);
      this.points = pts.concat(live);
    }

    add(t, value) {
      const v = typeof value === 'boolean' ? Number(value) : value;
      if (typeof v !== 'number' || !isFinite(v)) return;
      const pts = this.points;
      if (pts.length && t < pts[pts.length - 1][0]) {
        let i = pts.length;
        while (i > 0 && pts[i - 1][0] > t) i--;
        pts.splice(i, 0, [t, v]);
      } else {
        pts.push([t, v]);
      }
      if (pts.length > MAX_POINTS) pts.splice(0, pts.length - MAX_POINTS);
    }

    count() {
      return this.points.length;
    }

    _size() {
      const dpr = window.devicePixelRatio || 1;
      const w = this.canvas.clientWidth;
      const h = this.canvas.clientHeight;
      if (this.canvas.width !== Math.round(w * dpr) || this.canvas.height !== Math.round(h * dpr)) {
        this.canvas.width = Math.round(w * dpr);
        this.canvas.height = Math.round(h * dpr);
      }
      return { w, h, dpr };
    }

    draw(now) {
      const { w, h, dpr } = this._size();
      if (!w || !h) return;
      const c = this.canvas.getContext('2d');
      c.setTransform(dpr, 0, 0, dpr, 0, 0);
      c.clearRect(0, 0, w, h);
      const t1 = now;
      const t0 = now - this.spanMs;
      // Drop what scrolled out of the window (keep one point before it for the line).
      while (this.points.length > 1 && this.points[1][0] < t0) this.points.shift();
      while (this.bands.length && this.bands[0][1] < t0) this.bands.shift();

      const pad = { l: 44, r: 10, t: 8, b: 20 };
      const pw = w - pad.l - pad.r;
      const ph = h - pad.t - pad.b;
      const x = (t) => pad.l + ((t - t0) / (t1 - t0)) * pw;

      let lo;
      let hi;
      if (this.kind === 'bool') {
        lo = 0;
        hi = 1;
      } else {
        lo = Infinity;
        hi = -Infinity;
        for (const [t, v] of this.points) if (t >= t0) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
        for (const [, , mn, mx] of this.bands) { lo = Math.min(lo, mn); hi = Math.max(hi, mx); }
        if (!isFinite(lo)) { lo = 0; hi = 1; }
        const span = Math.max(hi - lo, Math.abs(hi) * 0.02, 0.5);
        const mid = (hi + lo) / 2;
        lo = mid - span * 0.65;
        hi = mid + span * 0.65;
      }
      const y = (v) => pad.t + (1 - (v - lo) / (hi - lo)) * ph;

      // Grid and labels.
      c.font = '11px system-ui, "Liberation Sans", "DejaVu Sans", sans-serif';
      c.textBaseline = 'middle';
      c.lineWidth = 1;
      c.strokeStyle = '#eef0f3';
      c.fillStyle = '#9ca3af';
      if (this.kind === 'bool') {
        for (const [v, label] of [[1, 'open'], [0, 'closed']]) {
          c.beginPath(); c.moveTo(pad.l, Math.round(y(v)) + 0.5); c.lineTo(w - pad.r, Math.round(y(v)) + 0.5); c.stroke();
          c.textAlign = 'right'; c.fillText(label, pad.l - 6, y(v));
        }
      } else {
        const step = niceStep(hi - lo, 4);
        const decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
        for (let v = Math.ceil(lo / step) * step; v <= hi; v += step) {
          const yy = Math.round(y(v)) + 0.5;
          c.beginPath(); c.moveTo(pad.l, yy); c.lineTo(w - pad.r, yy); c.stroke();
          c.textAlign = 'right';
          c.fillText(v.toFixed(Math.min(decimals, 3)), pad.l - 6, yy);
        }
      }
      const tick = 15 * 60 * 1000;
      c.textAlign = 'center';
      c.textBaseline = 'alphabetic';
      for (let t = Math.ceil(t0 / tick) * tick; t <= t1; t += tick) {
        const xx = Math.round(x(t)) + 0.5;
        c.beginPath(); c.moveTo(xx, pad.t); c.lineTo(xx, pad.t + ph); c.stroke();
        // A label that would be cut by the edge is left out (its line stays).
        const half = c.measureText(hhmm(t)).width / 2;
        if (xx - half >= 0 && xx + half <= w) c.fillText(hhmm(t), xx, h - 5);
      }

      c.save();
      c.beginPath();
      c.rect(pad.l, pad.t - 4, pw, ph + 8);
      c.clip();
      if (this.kind === 'bool') this._drawBool(c, x, y, t0, t1);
      else this._drawNumber(c, x, y, t0, pad.t + ph);
      c.restore();
    }

    _drawNumber(c, x, y, t0, bottom) {
      c.fillStyle = withAlpha(this.color, 0.16);
      for (const [a, b, mn, mx] of this.bands) {
        if (mx - mn <= 0) continue;
        c.fillRect(x(a), y(mx), Math.max(1, x(b) - x(a)), Math.max(1, y(mn) - y(mx)));
      }
      const pts = this.points;
      if (!pts.length) return;
      const last = pts[pts.length - 1];
      const grad = c.createLinearGradient(0, y(Math.max(...pts.map((p) => p[1]))), 0, bottom);
      grad.addColorStop(0, withAlpha(this.color, 0.22));
      grad.addColorStop(1, withAlpha(this.color, 0.0));
      // A downtime is a gap, not a straight line as if there had been data.
      const runs = splitAtGaps(pts);
      for (const run of runs) {
        c.save();
        c.beginPath();
        run.forEach(([t, v], i) => (i ? c.lineTo(x(t), y(v)) : c.moveTo(x(t), y(v))));
        c.lineTo(x(run[run.length - 1][0]), bottom);
        c.lineTo(x(run[0][0]), bottom);
        c.closePath();
        c.fillStyle = grad;
        c.fill();
        c.restore();
      }
      c.beginPath();
      for (const run of runs) {
        run.forEach(([t, v], i) => (i ? c.lineTo(x(t), y(v)) : c.moveTo(x(t), y(v))));
      }
      c.strokeStyle = this.color;
      c.lineWidth = 1.8;
      c.lineJoin = 'round';
      c.stroke();
      c.beginPath();
      c.arc(x(last[0]), y(last[1]), 3.5, 0, 2 * Math.PI);
      c.fillStyle = this.color;
      c.fill();
      c.lineWidth = 2;
      c.strokeStyle = '#fff';
      c.stroke();
    }

    _drawBool(c, x, y, t0, t1) {
      // Buckets: shade the share of time open; live points: steps.
      c.fillStyle = withAlpha(this.color, 0.5);
      for (const [a, b, , mx] of this.bands) {
        if (mx <= 0) continue;
        c.fillRect(x(a), y(1), Math.max(1.5, x(b) - x(a)), y(0) - y(1));
      }
      const pts = this.points;
      for (let i = 0; i < pts.length; i++) {
        const [t, v] = pts[i];
        if (!v || this.bands.some(([a, b]) => t >= a && t <= b)) continue;
        const end = i + 1 < pts.length ? pts[i + 1][0] : t1;
        c.fillRect(x(t), y(1), Math.max(1.5, x(end) - x(t)), y(0) - y(1));
      }
      c.strokeStyle = this.color;
      c.lineWidth = 1.5;
      c.beginPath();
      c.moveTo(x(t0), y(0) - 0.5);
      c.lineTo(x(t1), y(0) - 0.5);
      c.stroke();
    }
  }

  window.LineChart = LineChart;
})();
