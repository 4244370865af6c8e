// The console upgrade of the vmlet API: `GET …/virtualmachineinstances/NAME/console` with `Upgrade: vmlet-console` becomes a raw byte stream to the VM's serial console.
import type http from 'node:http';
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { VmletError } from '../errors.js';
import { peerHungUp, socketFd } from '../sys/scm.js';
import type { Backend, ConsoleAttachment } from './backend.js';
import { rawResponse, waitWritable, withCauseCodes } from './api-response.js';
import { contextOf, parseRequestUrl } from './api-router.js';
import { statusFromError, type StatusContext } from './status.js';

export const CONSOLE_PROTOCOL = 'vmlet-console';

function isNetSocket(s: Duplex): s is net.Socket {
  return 'setTimeout' in s && typeof s.setTimeout === 'function';
}

/** Checks the upgrade request, attaches to the console and relays bytes both ways; a refusal is answered as a Status on the raw socket. */
export async function serveConsole(backend: Backend, req: http.IncomingMessage, socket: Duplex, head: Buffer, log: Logger): Promise<void> {
  let ctx: StatusContext = {};
  let att: ConsoleAttachment;
  try {
    const { route, query } = parseRequestUrl(req.url ?? '/');
    ctx = contextOf(route);
    if (route.type !== 'console') throw new VmletError('BAD_REQUEST', 'only the console subresource can be upgraded');
    if (req.method !== 'GET')
      throw new VmletError('METHOD_NOT_ALLOWED', `method ${req.method ?? ''} is not allowed here (allowed: GET)`, { details: { allow: ['GET'] } });
    if ((req.headers.upgrade ?? '').toLowerCase() !== CONSOLE_PROTOCOL)
      throw new VmletError('BAD_REQUEST', `unsupported upgrade protocol (use ${CONSOLE_PROTOCOL})`);
    const w = query.get('write');
    att = await backend.console(route.ref, { write: w === 'true' || w === '1' });
  } catch (e) {
    const status = withCauseCodes(statusFromError(e, ctx));
    log.debug({ code: status.reason }, 'console refused');
    if (socket.writable) socket.end(rawResponse(status));
    return;
  }
  if (socket.destroyed) {
    att.close();
    return;
  }
  if (isNetSocket(socket)) socket.setTimeout(0);
  socket.write(`HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ${CONSOLE_PROTOCOL}\r\nVmlet-Console-Writable: ${att.writable}\r\n\r\n`);
  log.info({ writable: att.writable }, 'console attached');
  const input = (data: Buffer): void => {
    if (!att.writable) return; // a read-only attachment ignores keystrokes
    try {
      // Backpressure: a guest that does not read its serial port stops the client, not the daemon's heap.
      if (!att.write(data)) holdBack();
    } catch (e) {
      log.debug({ err: e }, 'console write refused');
    }
  };
  // A client held back is not read, so its going away shows only by polling: then the writer lock is let go.
  let held = false;
  const holdBack = (): void => {
    if (held) return;
    held = true;
    socket.pause();
    const gone = setInterval(() => {
      if (!socket.destroyed && isNetSocket(socket) && peerHungUp(socketFd(socket))) socket.destroy();
    }, 1_000);
    socket.once('close', () => clearInterval(gone));
    void att.drained().then(() => {
      clearInterval(gone);
      held = false;
      if (!socket.destroyed) socket.resume();
    });
  };
  if (head.length > 0) input(head);
  socket.on('data', input);
  // The client half-closing (or going away) ends the attachment; the output loop then ends our side.
  socket.on('end', () => att.close());
  socket.on('close', () => att.close());
  try {
    for await (const chunk of att.output) {
      if (socket.destroyed) break;
      if (!socket.write(chunk)) await waitWritable(socket);
    }
  } finally {
    att.close();
    socket.end();
    log.info('console detached');
  }
}
