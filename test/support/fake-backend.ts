// An in-memory Backend for API server and CLI tests: objects, events, watches, actions, QMP and a console with a writer lock.
import { EventEmitter } from 'node:events';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import pino from 'pino';
import { ApiServer, type ApiServerOptions, type VersionInfo } from '../../src/daemon/api-server.js';
import { VmletError } from '../../src/errors.js';
import type { Backend, ConsoleAttachment, Kind, KubeObject, ObjectRef, VmAction, VmiAction, WatchEvent } from '../../src/daemon/backend.js';

type WatchKind = Kind | 'Event';

interface Change {
  kind: WatchKind;
  event: WatchEvent;
}

/** A push-fed async queue that ends on null. */
class Queue<T> implements AsyncIterable<T> {
  private items: T[] = [];
  private ended = false;
  private wake: (() => void) | undefined;
  push(item: T | null): void {
    if (item === null) this.ended = true;
    else this.items.push(item);
    this.wake?.();
  }
  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      const next = this.items.shift();
      if (next !== undefined) {
        yield next;
        continue;
      }
      if (this.ended) return;
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = undefined;
    }
  }
}

export interface FakeCall {
  op: string;
  ref?: ObjectRef;
  action?: string;
  body?: unknown;
}

export class FakeBackend implements Backend {
  readonly objects = new Map<string, KubeObject>();
  readonly eventItems: KubeObject[] = [];
  readonly calls: FakeCall[] = [];
  /** Errors to throw from the next call of an operation (op name → error), consumed once. */
  readonly failNext = new Map<string, unknown>();
  readonly watchSignals: AbortSignal[] = [];
  /** When set, delete marks the object, and removes it only after this many ms. */
  deleteDelayMs = 0;
  /** What the console replays to a new reader. */
  consoleReplay = Buffer.from('[ring] boot log\r\n');
  readonly consoleInput: Buffer[] = [];
  qmpReply: (command: unknown) => unknown = (command) => ({ return: { echo: command } });
  private readonly changes = new EventEmitter();
  private readonly readers = new Set<Queue<Buffer>>();
  private writer: object | undefined;
  private rv = 1;

  constructor() {
    this.changes.setMaxListeners(0);
  }

  static key(kind: Kind, namespace: string, name: string): string {
    return `${kind}/${namespace}/${name}`;
  }

  private fail(op: string): void {
    const e = this.failNext.get(op);
    if (e !== undefined) {
      this.failNext.delete(op);
      throw e;
    }
  }

  private emit(kind: WatchKind, type: WatchEvent['type'], object: KubeObject): void {
    this.changes.emit('change', { kind, event: { type, object: structuredClone(object) } } satisfies Change);
  }

  /** Adds an object as the daemon would hold it (uid, resourceVersion, creationTimestamp, and a status). */
  seed(
    kind: Kind,
    namespace: string,
    body: { metadata: { name: string; [k: string]: unknown }; spec?: unknown; status?: unknown },
    created = new Date(Date.now() - 90_000),
  ): KubeObject {
    const obj: KubeObject = {
      apiVersion: 'vmlet.io/v1alpha1',
      kind,
      ...structuredClone(body),
      metadata: {
        ...structuredClone(body.metadata),
        namespace,
        uid: `uid-${body.metadata.name}`,
        resourceVersion: String(this.rv++),
        creationTimestamp: created.toISOString(),
      },
    };
    if (obj.status === undefined) {
      obj.status =
        kind === 'VirtualMachineInstance'
          ? { phase: 'Running', nodeName: 'node1', interfaces: [{ name: 'default', ipAddress: '10.0.2.15' }], conditions: [{ type: 'Ready', status: 'True' }] }
          : { printableStatus: 'Running', ready: true };
    }
    this.objects.set(FakeBackend.key(kind, namespace, obj.metadata.name), obj);
    this.emit(kind, 'ADDED', obj);
    return obj;
  }

  /** `extra` overrides or adds fields, e.g. `{ count: 3, firstTimestamp, lastTimestamp }`; `involved.uid` names one incarnation. */
  addEvent(
    namespace: string,
    involved: { kind: Kind; name: string; uid?: string },
    reason: string,
    message: string,
    type = 'Normal',
    extra: Record<string, unknown> = {},
  ): KubeObject {
    const ev: KubeObject = {
      apiVersion: 'v1',
      kind: 'Event',
      metadata: { name: `${involved.name}.${this.rv++}`, namespace, creationTimestamp: new Date().toISOString() },
      involvedObject: { kind: involved.kind, name: involved.name, namespace, ...(involved.uid === undefined ? {} : { uid: involved.uid }) },
      reason,
      message,
      type,
      lastTimestamp: new Date().toISOString(),
      ...extra,
    } as KubeObject;
    this.eventItems.push(ev);
    this.emit('Event', 'ADDED', ev);
    return ev;
  }

  async list(kind: Kind, namespace?: string): Promise<KubeObject[]> {
    this.calls.push({ op: 'list' });
    this.fail('list');
    return [...this.objects.values()]
      .filter((o) => o.kind === kind && (namespace === undefined || o.metadata.namespace === namespace))
      .map((o) => structuredClone(o));
  }

  async get(ref: ObjectRef): Promise<KubeObject> {
    this.calls.push({ op: 'get', ref });
    this.fail('get');
    const o = this.objects.get(FakeBackend.key(ref.kind, ref.namespace, ref.name));
    if (!o) throw new VmletError('NOT_FOUND', `${ref.kind} ${ref.namespace}/${ref.name} does not exist`);
    return structuredClone(o);
  }

  private validate(kind: Kind, body: unknown): { metadata: { name: string; [k: string]: unknown }; spec?: unknown } {
    const b = body as { kind?: unknown; metadata?: { name?: unknown } };
    if (b.kind !== kind) throw new VmletError('UNSUPPORTED_KIND', `kind must be ${kind}`);
    if (typeof b.metadata?.name !== 'string') {
      throw Object.assign(new VmletError('INVALID_FIELD', 'metadata.name: required'), { details: [{ field: 'metadata.name', message: 'required' }] });
    }
    return body as { metadata: { name: string } };
  }

  async create(kind: Kind, namespace: string, body: unknown): Promise<KubeObject> {
    this.calls.push({ op: 'create', body });
    this.fail('create');
    const b = this.validate(kind, body);
    if (this.objects.has(FakeBackend.key(kind, namespace, b.metadata.name))) throw new VmletError('ALREADY_EXISTS', `${b.metadata.name} exists`);
    const { status: _ignored, ...rest } = b as { status?: unknown; metadata: { name: string } };
    return structuredClone(this.seed(kind, namespace, rest, new Date()));
  }

  async replace(ref: ObjectRef, body: unknown): Promise<KubeObject> {
    this.calls.push({ op: 'replace', ref, body });
    this.fail('replace');
    const old = await this.get(ref);
    const b = this.validate(ref.kind, body);
    const obj: KubeObject = {
      ...old,
      spec: b.spec,
      metadata: { ...old.metadata, labels: b.metadata.labels, resourceVersion: String(this.rv++) },
    };
    this.objects.set(FakeBackend.key(ref.kind, ref.namespace, ref.name), obj);
    this.emit(ref.kind, 'MODIFIED', obj);
    return structuredClone(obj);
  }

  async delete(ref: ObjectRef): Promise<KubeObject> {
    this.calls.push({ op: 'delete', ref });
    this.fail('delete');
    const key = FakeBackend.key(ref.kind, ref.namespace, ref.name);
    const o = await this.get(ref);
    const remove = (): void => {
      this.objects.delete(key);
      this.emit(ref.kind, 'DELETED', o);
    };
    if (this.deleteDelayMs > 0) {
      o.metadata.deletionTimestamp = new Date().toISOString();
      this.objects.set(key, o);
      this.emit(ref.kind, 'MODIFIED', o);
      setTimeout(remove, this.deleteDelayMs);
    } else remove();
    return structuredClone(o);
  }

  async vmiAction(ref: ObjectRef, action: VmiAction): Promise<void> {
    this.calls.push({ op: 'vmiAction', ref, action });
    this.fail('vmiAction');
    await this.get(ref);
  }

  async vmAction(ref: ObjectRef, action: VmAction): Promise<void> {
    this.calls.push({ op: 'vmAction', ref, action });
    this.fail('vmAction');
    await this.get(ref);
  }

  async qmp(ref: ObjectRef, command: unknown): Promise<unknown> {
    this.calls.push({ op: 'qmp', ref, body: command });
    this.fail('qmp');
    await this.get(ref);
    return this.qmpReply(command);
  }

  /** Console output from the "guest" to every attached reader. */
  consoleOutput(data: string | Buffer): void {
    const buf = typeof data === 'string' ? Buffer.from(data) : data;
    for (const r of this.readers) r.push(buf);
  }

  /** Ends every attachment, as a stopping VM would. */
  consoleHangup(): void {
    for (const r of this.readers) r.push(null);
    this.readers.clear();
    this.writer = undefined;
  }

  get consoleReaders(): number {
    return this.readers.size;
  }

  async console(ref: ObjectRef, opts: { write: boolean }): Promise<ConsoleAttachment> {
    this.calls.push({ op: 'console', ref, action: opts.write ? 'write' : 'read' });
    this.fail('console');
    await this.get(ref);
    if (opts.write && this.writer) throw new VmletError('CONSOLE_BUSY', 'another client holds the console for writing');
    const token = {};
    if (opts.write) this.writer = token;
    const q = new Queue<Buffer>();
    q.push(this.consoleReplay);
    this.readers.add(q);
    let open = true;
    return {
      output: q,
      writable: opts.write,
      write: (data: Buffer) => {
        if (!open || this.writer !== token) throw new VmletError('CONSOLE_BUSY', 'this console attachment is read-only');
        this.consoleInput.push(data);
        // The guest echoes what it is sent, upper-cased, so tests can tell echo from input.
        this.consoleOutput(data.toString('utf8').toUpperCase());
        return true;
      },
      drained: () => Promise.resolve(),
      close: () => {
        if (!open) return;
        open = false;
        if (this.writer === token) this.writer = undefined;
        this.readers.delete(q);
        q.push(null);
      },
    };
  }

  watch(kind: WatchKind, namespace: string | undefined, name: string | undefined, signal: AbortSignal): AsyncIterable<WatchEvent> {
    this.watchSignals.push(signal);
    const matches = (o: KubeObject): boolean => {
      if (namespace !== undefined && o.metadata.namespace !== namespace) return false;
      if (name === undefined) return true;
      if (kind === 'Event') return (o as unknown as { involvedObject?: { name?: string } }).involvedObject?.name === name;
      return o.metadata.name === name;
    };
    const q = new Queue<WatchEvent>();
    const existing = kind === 'Event' ? this.eventItems : [...this.objects.values()].filter((o) => o.kind === kind);
    for (const o of existing) if (matches(o)) q.push({ type: 'ADDED', object: structuredClone(o) });
    const onChange = (c: Change): void => {
      if (c.kind === kind && matches(c.event.object)) q.push(c.event);
    };
    this.changes.on('change', onChange);
    const stop = (): void => {
      this.changes.off('change', onChange);
      this.changes.off('end-watches', stop);
      q.push(null);
    };
    this.changes.on('end-watches', stop);
    if (signal.aborted) stop();
    else signal.addEventListener('abort', stop, { once: true });
    return q;
  }

  /** Ends every open watch from the server side. */
  endWatches(): void {
    this.changes.emit('end-watches');
  }

  async events(namespace: string | undefined, name: string | undefined): Promise<KubeObject[]> {
    this.calls.push({ op: 'events' });
    this.fail('events');
    return this.eventItems.filter(
      (e) =>
        (namespace === undefined || e.metadata.namespace === namespace) &&
        (name === undefined || (e as unknown as { involvedObject: { name: string } }).involvedObject.name === name),
    );
  }
}

export interface FakeServer {
  backend: FakeBackend;
  server: ApiServer;
  socketPath: string;
  dir: string;
  close(): Promise<void>;
}

/** What a fake server's GET /version reports unless a test gives its own: a host without KVM that allows emulation. */
export const FAKE_VERSION: VersionInfo = {
  vmlet: '9.9.9-fake',
  qemu: 'QEMU emulator version 8.2.2 (fake)',
  kvm: { usable: false, reason: '/dev/kvm does not exist: no KVM module loaded, or no hardware or nested virtualisation', durationMs: 3 },
  accel: 'auto',
  useEmulation: true,
};

/** A real ApiServer over a unix socket in a fresh temp dir, backed by a FakeBackend; `t.teardown(s.close)`. */
export async function startFakeServer(opts: Partial<Omit<ApiServerOptions, 'backend' | 'logger'>> & { backend?: FakeBackend } = {}): Promise<FakeServer> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmlet-api-'));
  const backend = opts.backend ?? new FakeBackend();
  const socketPath = opts.socketPath ?? path.join(dir, 'vmlet.sock');
  const server = await ApiServer.listen({
    version: FAKE_VERSION,
    ...opts,
    backend,
    socketPath,
    logger: pino({ level: process.env.VMLET_TEST_LOG ?? 'silent' }),
  }).catch(async (e: unknown) => {
    // A refused listen (the tests of a socket in use) leaves no temp dir behind.
    await fs.rm(dir, { recursive: true, force: true });
    throw e;
  });
  return {
    backend,
    server,
    socketPath,
    dir,
    close: async () => {
      await server.close();
      await fs.rm(dir, { recursive: true, force: true });
    },
  };
}

export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the CLI in-process with captured output; `stdin` is a string (piped, ended) or a stream the test feeds. */
export async function runCli(
  argv: string[],
  opts: { socketPath?: string; stdin?: string | PassThrough; env?: Record<string, string>; now?: number } = {},
): Promise<CliRun> {
  const { main } = await import('../../src/cli/main.js');
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = '';
  let err = '';
  stdout.on('data', (d: Buffer) => (out += d.toString('utf8')));
  stderr.on('data', (d: Buffer) => (err += d.toString('utf8')));
  let stdin: PassThrough;
  if (opts.stdin instanceof PassThrough) stdin = opts.stdin;
  else {
    stdin = new PassThrough();
    stdin.end(opts.stdin ?? '');
  }
  const args = opts.socketPath ? ['--socket', opts.socketPath, ...argv] : argv;
  const now = opts.now;
  const code = await main(args, { stdout, stderr, stdin, env: opts.env ?? {}, ...(now === undefined ? {} : { now: () => now }) });
  await new Promise((r) => setImmediate(r));
  return { code, stdout: out, stderr: err };
}
