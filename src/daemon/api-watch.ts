// Watch streaming of the vmlet API: the backend's watch events as newline-delimited JSON until the backend ends or the client goes away.
import type http from 'node:http';
import type { Logger } from 'pino';
import type { Backend, Kind } from './backend.js';
import { waitWritable, withCauseCodes } from './api-response.js';
import { statusFromError, type StatusContext } from './status.js';

export interface WatchRequest {
  kind: Kind | 'Event';
  namespace: string | undefined;
  name: string | undefined;
  /** Names the object in an ERROR event's Status. */
  ctx: StatusContext;
}

/** Streams WatchEvents; the client going away aborts the backend's watch. A failure becomes one ERROR event, then the stream ends. */
export async function serveWatch(backend: Backend, req: http.IncomingMessage, res: http.ServerResponse, w: WatchRequest, log: Logger): Promise<void> {
  const ac = new AbortController();
  const onClose = (): void => ac.abort();
  res.on('close', onClose);
  req.socket.setTimeout(0);
  res.writeHead(200, { 'Content-Type': 'application/json', 'Cache-Control': 'no-cache' });
  res.flushHeaders();
  log.debug({ kind: w.kind, namespace: w.namespace, name: w.name }, 'watch started');
  try {
    for await (const ev of backend.watch(w.kind, w.namespace, w.name, ac.signal)) {
      if (ac.signal.aborted) break;
      if (!res.write(`${JSON.stringify(ev)}\n`)) await waitWritable(res);
    }
  } catch (e) {
    if (!ac.signal.aborted && !res.destroyed) res.write(`${JSON.stringify({ type: 'ERROR', object: withCauseCodes(statusFromError(e, w.ctx)) })}\n`);
  } finally {
    res.off('close', onClose);
    ac.abort();
    if (!res.writableEnded) res.end();
    log.debug('watch ended');
  }
}
