// Writing answers of the vmlet API: JSON responses, raw HTTP answers on upgraded or broken sockets, Status causes with vmlet codes, and waiting for a full stream to drain.
import http from 'node:http';
import type { StatusCause, StatusObject } from './status.js';

/** A Status cause with the vmlet error code under `code` as well as Kubernetes' `reason`. */
export type ApiStatusCause = StatusCause & { code: string };

/** Every `details.causes[]` entry also carries `code` (the same value as `reason`), so clients need not know Kubernetes' name for it. */
export function withCauseCodes(status: StatusObject): StatusObject {
  const causes = status.details?.causes;
  if (causes === undefined) return status;
  const coded: ApiStatusCause[] = causes.map((c) => ({
    ...(c.field === undefined ? {} : { field: c.field }),
    code: c.reason,
    message: c.message,
    reason: c.reason,
  }));
  return { ...status, details: { ...status.details, causes: coded } };
}

export function sendJson(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

/** A whole HTTP/1.1 answer as text, for sockets that no ServerResponse owns (client errors, refused upgrades). */
export function rawResponse(status: StatusObject, extra = ''): string {
  const text = JSON.stringify(status);
  const phrase = http.STATUS_CODES[status.code] ?? 'Error';
  return `HTTP/1.1 ${status.code} ${phrase}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(text)}\r\nConnection: close\r\n${extra}\r\n${text}`;
}

/** Resolves when the stream drains or closes. */
export function waitWritable(stream: NodeJS.WritableStream): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      stream.off('drain', done);
      stream.off('close', done);
      resolve();
    };
    stream.on('drain', done);
    stream.on('close', done);
  });
}
