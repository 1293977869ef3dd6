// An independent Sparkplug B edge node: Eclipse Tahu's sparkplug-client (npm), which
// keeps its own seq and bdSeq, sets NDEATH as its MQTT will and encodes payloads with
// sparkplug-payload. Usage: node spb_node.js PORT GROUP NODE N
// Publishes NBIRTH (aliases), DBIRTH of "valve", N NDATA by alias, one DDATA; prints
// READY, then every NCMD/DCMD metric it receives as "CMD <kind> <metric>=<value>".
const sparkplug = require("sparkplug-client");
const [port, group, node, nArg] = process.argv.slice(2);
const n = parseInt(nArg, 10);
const client = sparkplug.newClient({
  serverUrl: `mqtt://127.0.0.1:${port}`, username: "", password: "", groupId: group,
  edgeNode: node, clientId: `js-${node}`, version: "spBv1.0", keepalive: 2,
});
client.on("birth", () => {
  const t = Date.now() - n - 10;
  client.publishNodeBirth({ timestamp: t, metrics: [
    { name: "Temp 1", alias: 1, type: "Double", value: 20.5, timestamp: t },
    { name: "Count", alias: 2, type: "Int64", value: 0, timestamp: t },
    { name: "Output/Setpoint", alias: 3, type: "Int32", value: 0, timestamp: t },
  ] });
  client.publishDeviceBirth("valve", { timestamp: t, metrics: [
    { name: "open", alias: 10, type: "Boolean", value: false, timestamp: t },
  ] });
  for (let i = 1; i <= n; i++) {
    client.publishNodeData({ timestamp: t + i, metrics: [
      { alias: 2, type: "Int64", value: i, timestamp: t + i },
    ] });
  }
  client.publishDeviceData("valve", { timestamp: t + n + 1, metrics: [
    { alias: 10, type: "Boolean", value: true, timestamp: t + n + 1 },
  ] });
  console.log("READY");
});
client.on("ncmd", (p) => { for (const m of p.metrics) console.log(`CMD NCMD ${m.name}=${m.value}`); });
client.on("dcmd", (d, p) => { for (const m of p.metrics) console.log(`CMD DCMD ${d} ${m.name}=${m.value}`); });
