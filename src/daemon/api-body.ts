// Request bodies of the vmlet API: reading within the size limit, decoding JSON or YAML, checking the object's identity against the path, and draining an unwanted body.
import type http from 'node:http';
import YAML from 'yaml';
import { VmletError } from '../errors.js';

/** How much of an unwanted body is read and thrown away so that the client sees the error answer. */
export const DRAIN_LIMIT_BYTES = 64 * 1024 * 1024;
export const DRAIN_TIMEOUT_MS = 5_000;

const YAML_TYPES = new Set(['application/yaml', 'application/x-yaml', 'text/yaml', 'text/x-yaml']);

function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Reads and discards the rest of a body (at most `limit` bytes, at most `timeoutMs`); resolves when done or given up. */
export function drainBody(req: http.IncomingMessage, limit: number, timeoutMs: number): Promise<void> {
  return new Promise((resolve) => {
    let n = 0;
    const done = (): void => {
      clearTimeout(timer);
      req.off('data', onData);
      req.off('end', done);
      req.off('error', done);
      req.off('close', done);
      resolve();
    };
    const onData = (c: Buffer): void => {
      n += c.length;
      if (n > limit) done();
    };
    const timer = setTimeout(done, timeoutMs);
    req.on('data', onData);
    req.on('end', done);
    req.on('error', done);
    req.on('close', done);
    req.resume();
  });
}

/** JSON or (single-document) YAML body → value; BAD_REQUEST when it does not parse. */
export function decodeBody(buf: Buffer, contentType: string | undefined): unknown {
  const type = (contentType ?? '').split(';')[0]?.trim().toLowerCase() ?? '';
  if (buf.length === 0) throw new VmletError('BAD_REQUEST', 'the request body is empty');
  const text = buf.toString('utf8');
  if (type === '' || type === 'application/json') {
    try {
      return JSON.parse(text) as unknown;
    } catch (e) {
      throw new VmletError('BAD_REQUEST', `the request body is not valid JSON: ${messageOf(e)}`, { cause: e });
    }
  }
  if (YAML_TYPES.has(type)) {
    const docs = YAML.parseAllDocuments(text);
    if (docs.length !== 1) throw new VmletError('BAD_REQUEST', `the request body must hold exactly one YAML document, not ${docs.length}`);
    const doc = docs[0]!;
    if (doc.errors.length > 0) throw new VmletError('BAD_REQUEST', `the request body is not valid YAML: ${doc.errors[0]!.message}`);
    try {
      return doc.toJS({ maxAliasCount: 100 }) as unknown;
    } catch (e) {
      throw new VmletError('BAD_REQUEST', `the request body is not valid YAML: ${messageOf(e)}`, { cause: e });
    }
  }
  throw new VmletError('UNSUPPORTED_MEDIA_TYPE', `unsupported Content-Type "${type}" (use application/json or application/yaml)`);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The body must be an object whose metadata (if any) names the request's namespace and, for PUT, its name; returns it. */
export function checkIdentity(body: unknown, namespace: string, name: string | undefined): Record<string, unknown> {
  if (!isObject(body)) throw new VmletError('BAD_REQUEST', 'the request body must be an object');
  const md = body['metadata'];
  if (typeof md !== 'object' || md === null) return body;
  const m = md as { namespace?: unknown; name?: unknown };
  if (typeof m.namespace === 'string' && m.namespace !== namespace) {
    throw new VmletError('NAMESPACE_MISMATCH', `the namespace of the object (${m.namespace}) does not match the namespace of the request (${namespace})`);
  }
  if (name !== undefined && typeof m.name === 'string' && m.name !== name) {
    throw new VmletError('NAME_MISMATCH', `the name of the object (${m.name}) does not match the name in the path (${name})`);
  }
  return body;
}

/** `metadata.name` of a body that passed checkIdentity, when it is a string. */
export function nameOf(body: Record<string, unknown>): string | undefined {
  const md = body['metadata'];
  const name = isObject(md) ? md['name'] : undefined;
  return typeof name === 'string' ? name : undefined;
}

/** Reads at most maxBytes and decodes it; BODY_TOO_LARGE as soon as the declared or received size exceeds the limit. */
export async function readBody(req: http.IncomingMessage, maxBytes: number): Promise<unknown> {
  const declared = req.headers['content-length'];
  const tooLarge = (): VmletError => new VmletError('BODY_TOO_LARGE', `the request body exceeds ${maxBytes} bytes`, { details: { limit: maxBytes } });
  if (declared !== undefined && Number(declared) > maxBytes) throw tooLarge();
  const buf = await new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let n = 0;
    const cleanup = (): void => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onErr);
    };
    const onData = (c: Buffer): void => {
      n += c.length;
      if (n > maxBytes) {
        cleanup();
        req.pause();
        reject(tooLarge());
        return;
      }
      chunks.push(c);
    };
    const onEnd = (): void => {
      cleanup();
      resolve(Buffer.concat(chunks));
    };
    const onErr = (e: Error): void => {
      cleanup();
      reject(new VmletError('BAD_REQUEST', 'the request body could not be read', { cause: e }));
    };
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onErr);
  });
  return decodeBody(buf, req.headers['content-type']);
}
