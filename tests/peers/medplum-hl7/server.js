// An independent MLLP peer for integration tests: @medplum/hl7 4.5.2 Hl7Server on 127.0.0.1.
//
//   node server.js MLLP_PORT HTTP_PORT
//
// Answers every message with message.buildAck() (AA, MSA-2 = MSH-10) and records MSH-10 per
// message. A tiny HTTP control server on HTTP_PORT (127.0.0.1) lets the tests poll readiness
// and read the record:
//   GET /health    -> {"ok":true,"mllpPort":N}
//   GET /messages  -> {"controlIds":[...],"connections":N}
//   POST /reset    -> clears the record
// Set ACK_CODE=AE (or AR) to answer with that code instead. Logs one line per message with the
// MSH-10 only (no message content).
//
// Hl7Server.start(port) calls net.Server.listen(port), which binds every interface; the shim
// below (peers.md §4) forces 127.0.0.1. It is installed before @medplum/hl7 is loaded.
'use strict';

const net = require('node:net');
const http = require('node:http');

const origListen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number') {
    const callbacks = args.slice(1).filter((a) => typeof a === 'function');
    return origListen.call(this, { port: args[0], host: '127.0.0.1' }, ...callbacks);
  }
  if (args[0] && typeof args[0] === 'object' && 'port' in args[0]) {
    const { hostname, ...options } = args[0]; // eslint-disable-line no-unused-vars
    return origListen.call(this, { ...options, host: '127.0.0.1' }, ...args.slice(1));
  }
  return origListen.apply(this, args);
};

const { Hl7Server } = require('@medplum/hl7');

const mllpPort = Number(process.argv[2] || process.env.MLLP_PORT);
const httpPort = Number(process.argv[3] || process.env.HTTP_PORT);
const ackCode = process.env.ACK_CODE || 'AA';
if (!mllpPort || !httpPort) {
  console.error('usage: node server.js MLLP_PORT HTTP_PORT');
  process.exit(2);
}

let controlIds = [];
let connections = 0;

const server = new Hl7Server((connection) => {
  connections += 1;
  connection.addEventListener('message', ({ message }) => {
    const msh10 = message.getSegment('MSH')?.getField(10)?.toString() ?? '';
    controlIds.push(msh10);
    console.log(`RECEIVED ${msh10}`);
    connection.send(message.buildAck(ackCode === 'AA' ? undefined : { ackCode }));
  });
  connection.addEventListener('error', (event) => {
    console.log(`connection error: ${event.error?.code ?? event.error?.name ?? 'unknown'}`);
  });
});
server.start(mllpPort);

const control = http.createServer((req, res) => {
  const reply = (status, body) => {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  };
  if (req.method === 'GET' && req.url === '/health') {
    const listening = Boolean(server.server && server.server.listening);
    return reply(listening ? 200 : 503, { ok: listening, mllpPort });
  }
  if (req.method === 'GET' && req.url === '/messages') {
    return reply(200, { controlIds, connections });
  }
  if (req.method === 'POST' && req.url === '/reset') {
    controlIds = [];
    connections = 0;
    return reply(200, { ok: true });
  }
  return reply(404, { error: 'not found' });
});
control.listen(httpPort, '127.0.0.1', () => {
  console.log(`LISTENING mllp=127.0.0.1:${mllpPort} http=127.0.0.1:${httpPort}`);
});

const shutdown = () => {
  control.close();
  server.stop({ forceDrainTimeoutMs: 500 }).finally(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
