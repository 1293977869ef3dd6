// Keystroke-to-other-client latency between two stock y-websocket clients.
//
//   node keystrokes.js URL_A URL_B ROOM N INTERVAL_MS [TOKEN_A] [TOKEN_B]
//
// Client A (on URL_A) types N characters, one every INTERVAL_MS, at the end of
// the Y.Text "t"; client B (on URL_B) observes its copy. Both live in this one
// process, so one clock (performance.now) times each keystroke from A's insert
// to the moment B's text first holds it. Prints one JSON line: the latencies
// in ms, in keystroke order (null: never arrived within the deadline).
'use strict';
const Y = require('yjs');
const { WebsocketProvider } = require('y-websocket');
const WebSocket = require('ws');
const { performance } = require('perf_hooks');

const [urlA, urlB, room, nArg, intervalArg, tokenA, tokenB] = process.argv.slice(2);
const n = Number(nArg);
const interval = Number(intervalArg);

function client(url, token) {
  const doc = new Y.Doc();
  const provider = new WebsocketProvider(url, room, doc, {
    WebSocketPolyfill: WebSocket, params: token ? { token } : {}, disableBc: true,
  });
  return { doc, provider, text: doc.getText('t') };
}

const a = client(urlA, tokenA);
const b = client(urlB, tokenB);
const sent = new Array(n).fill(null);
const got = new Array(n).fill(null);
let base = null;

b.text.observe(() => {
  const now = performance.now();
  const len = b.text.length - base;
  for (let i = 0; i < Math.min(len, n); i++) if (got[i] === null && sent[i] !== null) got[i] = now;
});

function synced(p) {
  return new Promise((resolve) => (p.synced ? resolve() : p.once('sync', (s) => s && resolve())));
}

(async () => {
  await Promise.all([synced(a.provider), synced(b.provider)]);
  // Start from whatever both already share.
  await new Promise((r) => setTimeout(r, 200));
  base = b.text.length;
  const startLen = a.text.length;
  if (startLen !== base) throw new Error(`not in sync at start: ${startLen} vs ${base}`);
  for (let i = 0; i < n; i++) {
    sent[i] = performance.now();
    a.text.insert(a.text.length, String.fromCharCode(97 + (i % 26)));
    await new Promise((r) => setTimeout(r, interval));
  }
  const deadline = performance.now() + 30000;
  while (got.some((g) => g === null) && performance.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
  }
  const lat = sent.map((s, i) => (got[i] === null ? null : got[i] - s));
  process.stdout.write(JSON.stringify({ latencies_ms: lat }) + '\n');
  a.provider.destroy();
  b.provider.destroy();
  setTimeout(() => process.exit(0), 50);
})().catch((e) => {
  process.stderr.write(String(e.stack || e) + '\n');
  process.exit(1);
});
