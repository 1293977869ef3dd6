// A stock Yjs + y-websocket client in Node, driven by JSON lines on stdin.
//
//   node yws_client.js URL ROOM [TOKEN]
//
// A TOKEN "protocol:T" is offered as the WebSocket subprotocol mxsync.token.T
// instead of the ?token= query parameter.
// Commands (one JSON object a line, each answered {id, result} on stdout):
//   {id, op: "insert", text, index?}   insert into the Y.Text "text" (default: at the end)
//   {id, op: "text"}                   the text
//   {id, op: "aware", field, value}    set a field of the local awareness state
//   {id, op: "states"}                 [[clientID, state], ...] of the awareness
//   {id, op: "clientID"}               this document's client id
//   {id, op: "close"}                  destroy the provider and exit
// Events: {event: "status", status}, {event: "sync", synced}.
'use strict';
const Y = require('yjs');
const { WebsocketProvider } = require('y-websocket');
const WebSocket = require('ws');
const readline = require('readline');

const [url, room, token] = process.argv.slice(2);
const doc = new Y.Doc();
const text = doc.getText('text');
const provider = new WebsocketProvider(url, room, doc, {
  WebSocketPolyfill: WebSocket,
  params: token && !token.startsWith('protocol:') ? { token } : {},
  protocols: token && token.startsWith('protocol:') ? ['mxsync.token.' + token.slice(9)] : [],
  disableBc: true,
});
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
provider.on('status', (e) => out({ event: 'status', status: e.status }));
provider.on('sync', (synced) => out({ event: 'sync', synced }));

const states = () => Array.from(provider.awareness.getStates().entries());

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const cmd = JSON.parse(line);
  let result = null;
  switch (cmd.op) {
    case 'insert':
      text.insert(cmd.index === undefined ? text.length : cmd.index, cmd.text);
      break;
    case 'text':
      result = text.toString();
      break;
    case 'aware':
      provider.awareness.setLocalStateField(cmd.field, cmd.value);
      break;
    case 'states':
      result = states();
      break;
    case 'clientID':
      result = doc.clientID;
      break;
    case 'close':
      provider.destroy();
      out({ id: cmd.id, result });
      setTimeout(() => process.exit(0), 50);
      return;
    default:
      result = { error: `unknown op ${cmd.op}` };
  }
  out({ id: cmd.id, result });
});
