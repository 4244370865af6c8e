// Scriptable fake QMP server and fake guest agent on real unix sockets, for tests of src/qmp without QEMU.
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';

export type Json = Record<string, unknown>;

export interface FakeCommand {
  execute: string;
  arguments?: Json;
  id?: unknown;
  [k: string]: unknown;
}

/**
 * What a handler wants done with a command:
 * - `{ return: v }` / `{ error: { class, desc } }`: reply (with the command's id);
 * - `'stall'`: never answer (a peer that stops responding);
 * - `{ raw: '...' }`: write these exact bytes instead of a reply;
 * - `undefined`: the handler replied (or not) itself through the connection.
 */
export type FakeAction = { return: unknown } | { error: { class: string; desc: string } } | { raw: string | Buffer } | 'stall' | undefined;

export type FakeHandler = (cmd: FakeCommand, conn: FakeConnection) => FakeAction | Promise<FakeAction>;

export interface FakeQmpOptions {
  /** false: send no greeting; a string: send these raw bytes as the greeting. Default: a QEMU 7.2 greeting. */
  greeting?: false | string | Json;
  capabilities?: string[];
  /** Per-command handlers; commands without one get `{ return: {} }` (query-status: prelaunch). */
  handlers?: Record<string, FakeHandler>;
  /** Called for every command before the handler table (e.g. to record or to delay). */
  onCommand?: (cmd: FakeCommand, conn: FakeConnection) => void;
}

export function defaultGreeting(capabilities: string[] = ['oob']): Json {
  return { QMP: { version: { qemu: { micro: 0, minor: 2, major: 7 }, package: 'fake' }, capabilities } };
}

export class FakeConnection {
  readonly received: FakeCommand[] = [];
  constructor(readonly socket: net.Socket) {}

  /** Writes one JSON message the way QEMU does (\r\n terminated). */
  send(msg: Json): void {
    if (!this.socket.destroyed) this.socket.write(`${JSON.stringify(msg)}\r\n`);
  }

  sendRaw(data: string | Buffer): void {
    if (!this.socket.destroyed) this.socket.write(data);
  }

  reply(id: unknown, ret: unknown): void {
    this.send({ return: ret, id } as Json);
  }

  error(id: unknown, cls: string, desc: string): void {
    this.send({ error: { class: cls, desc }, id } as Json);
  }

  event(name: string, data?: Json): void {
    const now = Date.now();
    const msg: Json = { event: name, timestamp: { seconds: Math.floor(now / 1000), microseconds: (now % 1000) * 1000 } };
    if (data !== undefined) msg['data'] = data;
    this.send(msg);
  }

  /** Writes `data` in pieces of `size` bytes, `gapMs` apart, so the client sees a line split across many reads. */
  async sendChunked(data: string | Buffer, size: number, gapMs = 1): Promise<void> {
    const buf = Buffer.isBuffer(data) ? data : Buffer.from(data);
    for (let i = 0; i < buf.length; i += size) {
      if (this.socket.destroyed) return;
      this.socket.write(buf.subarray(i, i + size));
      await new Promise((r) => setTimeout(r, gapMs));
    }
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** Splits incoming bytes into JSON lines (QMP and QGA requests); 0xFF resets the buffer like qemu-ga's parser. */
function lineReader(onMessage: (msg: FakeCommand | Error) => void, resetOnFF: boolean): (chunk: Buffer) => void {
  let buf = '';
  return (chunk) => {
    let text = chunk.toString('latin1');
    if (resetOnFF) {
      const ff = text.lastIndexOf('\xff');
      if (ff >= 0) {
        buf = '';
        text = text.slice(ff + 1);
      }
    }
    buf += text;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (!line) continue;
      try {
        onMessage(JSON.parse(Buffer.from(line, 'latin1').toString('utf8')) as FakeCommand);
      } catch (e) {
        onMessage(e as Error);
      }
    }
  };
}

abstract class FakeServerBase {
  readonly dir: string;
  readonly path: string;
  readonly connections: FakeConnection[] = [];
  protected server: net.Server | undefined;

  constructor(sockName: string) {
    this.dir = mkdtempSync(path.join(tmpdir(), 'vmlet-fake-'));
    this.path = path.join(this.dir, sockName);
  }

  /** All commands received on all connections, in order. */
  get received(): FakeCommand[] {
    return this.connections.flatMap((c) => c.received);
  }

  get last(): FakeConnection | undefined {
    return this.connections[this.connections.length - 1];
  }

  protected listen(onConn: (conn: FakeConnection) => void): Promise<void> {
    const server = net.createServer((sock) => {
      sock.on('error', () => {});
      const conn = new FakeConnection(sock);
      this.connections.push(conn);
      onConn(conn);
    });
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.path, () => resolve());
    });
  }

  /** Waits until `n` commands have arrived in total. */
  async waitForCommands(n: number, timeoutMs = 5000): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (this.received.length < n) {
      if (Date.now() > end) throw new Error(`fake server: waited for ${n} commands, got ${this.received.length}`);
      await new Promise((r) => setTimeout(r, 2));
    }
  }

  async close(): Promise<void> {
    for (const c of this.connections) c.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A fake QEMU monitor. `start()` listens; nothing happens in the constructor. */
export class FakeQmpServer extends FakeServerBase {
  constructor(readonly opts: FakeQmpOptions = {}) {
    super('qmp.sock');
  }

  async start(): Promise<this> {
    await this.listen((conn) => {
      const g = this.opts.greeting;
      if (typeof g === 'string') conn.sendRaw(g);
      else if (g !== false) conn.send(g ?? defaultGreeting(this.opts.capabilities));
      conn.socket.on(
        'data',
        lineReader((msg) => {
          if (msg instanceof Error) return conn.error(null, 'GenericError', 'JSON parse error');
          conn.received.push(msg);
          this.opts.onCommand?.(msg, conn);
          void this.handle(msg, conn);
        }, false),
      );
    });
    return this;
  }

  private async handle(cmd: FakeCommand, conn: FakeConnection): Promise<void> {
    const name = String(cmd.execute ?? cmd['exec-oob']);
    const handler = this.opts.handlers?.[name];
    let action: FakeAction;
    if (handler) action = await handler(cmd, conn);
    else if (name === 'query-status') action = { return: { running: false, singlestep: false, status: 'prelaunch' } };
    else action = { return: {} };
    if (action === undefined || action === 'stall') return;
    if ('raw' in action) conn.sendRaw(action.raw);
    else if ('error' in action) conn.error(cmd.id, action.error.class, action.error.desc);
    else conn.reply(cmd.id, action.return);
  }
}

export interface FakeGuestAgentOptions {
  /** Accept connections but never answer anything: a VM whose guest runs no agent. */
  silent?: boolean;
  /** Bytes written right after a client connects: leftovers of an earlier session the client must skip. */
  staleOnConnect?: string | Buffer;
  /** Echo the request id in replies (qemu-ga does). Default true. */
  echoId?: boolean;
  handlers?: Record<string, FakeHandler>;
}

/** A fake qemu-ga behind a chardev socket: honours 0xFF parser resets and answers guest-sync-delimited with 0xFF + reply. */
export class FakeGuestAgent extends FakeServerBase {
  /** Number of 0xFF resets received. */
  resets = 0;

  constructor(readonly opts: FakeGuestAgentOptions = {}) {
    super('qga.sock');
  }

  async start(): Promise<this> {
    await this.listen((conn) => {
      if (this.opts.staleOnConnect !== undefined) conn.sendRaw(this.opts.staleOnConnect);
      const reader = lineReader((msg) => {
        if (msg instanceof Error) return;
        conn.received.push(msg);
        if (this.opts.silent) return;
        void this.handle(msg, conn);
      }, true);
      conn.socket.on('data', (chunk: Buffer) => {
        for (const b of chunk) if (b === 0xff) this.resets++;
        reader(chunk);
      });
    });
    return this;
  }

  private async handle(cmd: FakeCommand, conn: FakeConnection): Promise<void> {
    const name = cmd.execute;
    const handler = this.opts.handlers?.[name];
    let action: FakeAction;
    if (handler) action = await handler(cmd, conn);
    else if (name === 'guest-sync-delimited') {
      conn.sendRaw(Buffer.concat([Buffer.from([0xff]), Buffer.from(`${JSON.stringify({ return: cmd.arguments?.['id'] })}\n`)]));
      return;
    } else if (name === 'guest-sync') action = { return: cmd.arguments?.['id'] };
    else if (name === 'guest-shutdown') return;
    else if (name === 'guest-ping') action = { return: {} };
    else action = { error: { class: 'CommandNotFound', desc: `The command ${name} has not been found` } };
    if (action === undefined || action === 'stall') return;
    const id = (this.opts.echoId ?? true) && cmd.id !== undefined ? { id: cmd.id } : {};
    if ('raw' in action) conn.sendRaw(action.raw);
    else conn.sendRaw(`${JSON.stringify({ ...action, ...id })}\n`);
  }
}
