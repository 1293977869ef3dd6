// A real Matrix-CRDT 0.2.0 client (CommonJS build, matrix-js-sdk 19.7.0, yjs
// 13.6) driven line by line over stdin/stdout by tests/integration/test_compat.py.
// argv[2]: {"homeserver", "room", "user_id", "access_token", "device_id"}.
// Commands (one JSON object per line): {"cmd": "insert", "pos", "text"},
// {"cmd": "state"}, {"cmd": "flush"}; each answered by one JSON line.
"use strict";

const path = require("path");
const sdk = require("matrix-js-sdk");
sdk.request(require("request"));
const Y = require("yjs");
const { MatrixProvider } = require(
  path.join(process.env.NODE_PATH, "matrix-crdt/dist/matrix-crdt.umd.cjs"));

const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
console.log = () => {};
console.info = () => {};
console.warn = () => {};
console.error = (...a) => process.stderr.write(a.map(String).join(" ") + "\n");

const cfg = JSON.parse(process.argv[2]);
const client = sdk.createClient({ baseUrl: cfg.homeserver, accessToken: cfg.access_token,
                                  userId: cfg.user_id, deviceId: cfg.device_id });
// What startClient() would set; Matrix-CRDT never starts the client.
client.clientOpts = { lazyLoadMembers: false };
const stats = { updates: 0, snapshots: 0 };
const send = client.sendEvent.bind(client);
client.sendEvent = async (room, type, content, txn) => {
  const r = await send(room, type, content, txn);
  if (type === "matrix-crdt.doc_update") stats.updates++;
  if (type === "matrix-crdt.doc_snapshot") stats.snapshots++;
  return r;
};

const doc = new Y.Doc();
const text = doc.getText("t");
const provider = new MatrixProvider(doc, client, { type: "id", id: cfg.room });

(async () => {
  await provider.initialize();
  out({ ready: true, text: text.toString() });
  let buf = "";
  process.stdin.on("data", async (chunk) => {
    buf += chunk;
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      const c = JSON.parse(line);
      if (c.cmd === "insert") {
        text.insert(Math.min(c.pos, text.length), c.text);
        out({ ok: true });
      } else if (c.cmd === "state") {
        out({ text: text.toString(), ...stats });
      } else if (c.cmd === "flush") {
        await provider.waitForFlush();
        out({ ok: true });
      }
    }
  });
  process.stdin.on("end", () => { provider.dispose(); process.exit(0); });
})().catch((e) => { process.stderr.write(String(e && e.stack) + "\n"); process.exit(2); });
