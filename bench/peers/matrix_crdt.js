// One workload of the peers benchmark, run by a real Matrix-CRDT 0.2.0 client
// (its CommonJS build, matrix-js-sdk 19.7.0, yjs 13.6) in Node, against the
// Synapse of the same run. Called by bench/bench_peers.py with one JSON
// argument; prints one JSON line of figures on stdout (logs go to stderr).
//
// Every workload opens a writer and a reader (two Matrix accounts, two Y.Docs,
// two MatrixProviders on one room, library defaults) and measures on the
// reader's document what the writer typed, as bench_peers does for mxsync.
"use strict";

const path = require("path");
const NODE_PATH = process.env.NODE_PATH;
const sdk = require("matrix-js-sdk");
sdk.request(require("request"));
const Y = require("yjs");
const { MatrixProvider } = require(path.join(NODE_PATH, "matrix-crdt/dist/matrix-crdt.umd.cjs"));

// Matrix-CRDT logs every flush on stdout: keep stdout for the result.
const log = (...a) => process.stderr.write(a.join(" ") + "\n");
console.log = () => {};
console.info = () => {};
console.warn = () => {};
console.error = () => {};

const cfg = JSON.parse(process.argv[2]);
const now = () => Number(process.hrtime.bigint()) / 1e6; // ms
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const tick = () => new Promise((r) => setImmediate(r));

function client(user) {
  const c = sdk.createClient({
    baseUrl: cfg.homeserver, accessToken: user.access_token,
    userId: user.user_id, deviceId: user.device_id,
  });
  // What startClient() would set; Matrix-CRDT never starts the client (it
  // polls /events itself), and createMessagesRequest reads it.
  c.clientOpts = { lazyLoadMembers: false };
  c.mxStats = { updateEvents: 0, updateBytes: 0, snapshotEvents: 0, errors: 0,
                readEvents: 0, readPages: 0 };
  const send = c.sendEvent.bind(c);
  c.sendEvent = async (room, type, content, txn) => {
    const bytes = Buffer.byteLength(JSON.stringify(content));
    // Counted when the send starts, taken back if it fails: the reader, in this
    // same process, may see the event before the writer's PUT promise resolves,
    // and a workload that ends on the reader's side must not miss its last sends.
    const update = type === "matrix-crdt.doc_update";
    if (update) { c.mxStats.updateEvents++; c.mxStats.updateBytes += bytes; }
    try {
      const r = await send(room, type, content, txn);
      if (type === "matrix-crdt.doc_snapshot") c.mxStats.snapshotEvents++;
      return r;
    } catch (e) {
      if (update) { c.mxStats.updateEvents--; c.mxStats.updateBytes -= bytes; }
      c.mxStats.errors++; c.mxStats.lastError = e.errcode || String(e); throw e;
    }
  };
  const messages = c.createMessagesRequest.bind(c);
  c.createMessagesRequest = async (...args) => {
    const r = await messages(...args);
    c.mxStats.readPages++; c.mxStats.readEvents += r.chunk.length;
    return r;
  };
  return c;
}

async function provider(user, { warm = false } = {}) {
  const c = client(user);
  // A warm start (the open workloads): one request first, so that the clock
  // does not count connecting to the homeserver or Node's first request, as
  // mxsync's client, syncing already, has its connection open.
  if (warm) await c.whoami();
  const doc = new Y.Doc();
  const p = new MatrixProvider(doc, c, { type: "id", id: cfg.room });
  const started = now();
  await p.initialize();
  return { c, doc, p, text: doc.getText("t"), openMs: now() - started };
}

async function until(cond, ms) {
  const deadline = now() + ms;
  while (!cond()) {
    if (now() > deadline) return false;
    await sleep(2);
  }
  return true;
}

const median = (v) => pct(v, 50);
function pct(values, p) {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.round((p / 100) * (s.length - 1)))];
}

const workloads = {
  // Single-character edits typed as fast as possible (a yield between each).
  async fast() {
    const w = await provider(cfg.writer), r = await provider(cfg.reader);
    const n = cfg.n;
    const started = now();
    for (let i = 0; i < n; i++) {
      w.text.insert(w.text.length, String.fromCharCode(97 + (i % 26)));
      await tick();
    }
    const ok = await until(() => r.text.length >= n, cfg.deadline_ms);
    const elapsed = now() - started;
    return { completed: ok, arrived: r.text.length, n, ms: elapsed,
             edits_per_s: ok ? (n / elapsed) * 1000 : null,
             bytes_per_1000_edits: (1000 * w.c.mxStats.updateBytes) / n,
             events: w.c.mxStats.updateEvents, send_errors: w.c.mxStats.errors,
             last_error: w.c.mxStats.lastError || null };
  },
  // One edit after `idle_ms` of quiet, `n` times: latency until the reader has it.
  async isolated() {
    const w = await provider(cfg.writer), r = await provider(cfg.reader);
    await sleep(cfg.idle_ms);
    const before = w.c.mxStats.updateBytes, beforeEvents = w.c.mxStats.updateEvents;
    const samples = [];
    for (let i = 0; i < cfg.n; i++) {
      await sleep(cfg.idle_ms);
      const started = now();
      w.text.insert(w.text.length, "x");
      if (!(await until(() => r.text.length === i + 1, 30000))) break;
      samples.push(now() - started);
    }
    await sleep(600);
    const events = w.c.mxStats.updateEvents - beforeEvents;
    return { p50_ms: median(samples), p99_ms: pct(samples, 99), samples: samples.length,
             bytes_per_edit: (w.c.mxStats.updateBytes - before) / Math.max(1, events),
             events };
  },
  // A person typing `rate` characters/s for `seconds`: each character's latency.
  async typing() {
    const w = await provider(cfg.writer), r = await provider(cfg.reader);
    const typed = [], arrived = [];
    let polling = true;
    (async () => {
      while (polling) {
        const len = r.text.length, t = now();
        while (arrived.length < len) arrived.push(t);
        await sleep(2);
      }
    })();
    const start = now();
    while (now() - start < cfg.seconds * 1000) {
      const due = start + (typed.length * 1000) / cfg.rate;
      if (due > now()) await sleep(due - now());
      typed.push(now());
      w.text.insert(w.text.length, "x");
    }
    const ok = await until(() => arrived.length >= typed.length, cfg.deadline_ms);
    polling = false;
    const samples = [];
    typed.forEach((t, i) => {
      if (t - start >= cfg.warmup_s * 1000 && i < arrived.length) samples.push(arrived[i] - t);
    });
    return { completed: ok, p50_ms: median(samples), p99_ms: pct(samples, 99),
             characters: samples.length, send_errors: w.c.mxStats.errors };
  },
  // One insert of `chars` characters (a paste).
  async paste() {
    const w = await provider(cfg.writer), r = await provider(cfg.reader);
    const started = now();
    w.text.insert(0, "p".repeat(cfg.chars));
    const ok = await until(() => r.text.length >= cfg.chars, cfg.deadline_ms);
    return { completed: ok, ms: now() - started, arrived: r.text.length,
             send_errors: w.c.mxStats.errors, last_error: w.c.mxStats.lastError || null };
  },
  // A fresh client opening the room's document (history already in the room).
  async open() {
    const o = await provider(cfg.reader, { warm: !!cfg.warm });
    return { ms: o.openMs, events_read: o.c.mxStats.readEvents, pages: o.c.mxStats.readPages,
             length: o.text.length };
  },
  // Open, then type edits one by one until this client posted a snapshot
  // (Matrix-CRDT does every 30 updates, when the 30th is its own).
  async snapshot() {
    const w = await provider(cfg.writer);
    for (let i = 0; i < 90 && w.c.mxStats.snapshotEvents === 0; i++) {
      w.text.insert(w.text.length, "s");
      await sleep(700); // past the 500 ms throttle: one update event each
    }
    await sleep(500);
    return { snapshots: w.c.mxStats.snapshotEvents, length: w.text.length };
  },
};

(async () => {
  try {
    const result = await workloads[cfg.workload]();
    process.stdout.write(JSON.stringify(result) + "\n");
    process.exit(0);
  } catch (e) {
    log("workload failed:", e && e.stack ? e.stack : String(e));
    process.exit(2);
  }
})();
