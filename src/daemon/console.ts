// One daemon connection per VM to QEMU's serial chardev: a ring buffer of recent output, a log file, many readers, one writer.
import { waitWritable } from './api-response.js';
import type { ConsoleAttachment } from './backend.js';
import path from 'node:path';
import fs from 'node:fs';
import net from 'node:net';
import { VmletError } from '../errors.js';

export interface ConsoleOptions {
  socketPath: string;
  logFile: string;
  /** Bytes of recent output replayed to a new reader. */
  ringBytes?: number;
  /** Log file size at which it is rotated to `<logFile>.1`. */
  logMaxBytes?: number;
}

interface Reader {
  push(chunk: Buffer | null): void;
}

/** An async iterable fed by push(); a slow reader loses old chunks rather than growing without bound. */
class ChunkQueue implements Reader, AsyncIterable<Buffer> {
  private chunks: Buffer[] = [];
  private bytes = 0;
  private ended = false;
  private wake: (() => void) | undefined;
  constructor(private readonly maxBytes: number) {}

  push(chunk: Buffer | null): void {
    if (chunk === null) this.ended = true;
    else {
      this.chunks.push(chunk);
      this.bytes += chunk.length;
      while (this.bytes > this.maxBytes && this.chunks.length > 1) this.bytes -= this.chunks.shift()!.length;
    }
    this.wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Buffer> {
    for (;;) {
      const next = this.chunks.shift();
      if (next) {
        this.bytes -= next.length;
        yield next;
        continue;
      }
      if (this.ended) return;
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = undefined;
    }
  }
}

/**
 * The last `capacity` bytes of a stream in one buffer, allocated at the first byte and grown by doubling.
 * QEMU's serial port writes a byte at a time, so a booting guest arrives in ~20-byte chunks; kept as chunks,
 * each costs ~300 bytes of objects (a booted test guest: ~660 KiB per VM), here they cost their bytes.
 */
export class ByteRing {
  #buf: Buffer | undefined;
  /** Index of the oldest byte in #buf. */
  #start = 0;
  #size = 0;

  constructor(private readonly capacity: number) {}

  get length(): number {
    return this.#size;
  }

  /** Bytes of memory held (the buffer, not what is in it). */
  get allocated(): number {
    return this.#buf?.length ?? 0;
  }

  push(chunk: Buffer): void {
    if (this.capacity <= 0 || chunk.length === 0) return;
    const data = chunk.length > this.capacity ? chunk.subarray(chunk.length - this.capacity) : chunk;
    const need = this.#size + data.length;
    if (this.#buf === undefined || (need > this.#buf.length && this.#buf.length < this.capacity)) this.#grow(need);
    const buf = this.#buf!;
    let at = (this.#start + this.#size) % buf.length;
    for (let from = 0; from < data.length;) {
      const n = Math.min(data.length - from, buf.length - at);
      data.copy(buf, at, from, from + n);
      from += n;
      at = (at + n) % buf.length;
    }
    if (need > buf.length) {
      this.#start = (this.#start + need - buf.length) % buf.length;
      this.#size = buf.length;
    } else this.#size = need;
  }

  /** A copy of what is held, oldest first. */
  contents(): Buffer {
    const buf = this.#buf;
    if (!buf || this.#size === 0) return Buffer.alloc(0);
    const end = this.#start + this.#size;
    if (end <= buf.length) return Buffer.from(buf.subarray(this.#start, end));
    return Buffer.concat([buf.subarray(this.#start), buf.subarray(0, end - buf.length)], this.#size);
  }

  #grow(need: number): void {
    let n = Math.max(256, this.#buf?.length ?? 0);
    while (n < need && n < this.capacity) n *= 2;
    // Not from Buffer's shared pool, whose 8 KiB slab a small slice would keep alive.
    const next = Buffer.allocUnsafeSlow(Math.min(n, this.capacity));
    const held = this.contents();
    held.copy(next, 0);
    this.#buf = next;
    this.#start = 0;
  }
}

export type { ConsoleAttachment } from './backend.js';

export class SerialConsole {
  private readonly ring: ByteRing;
  private readonly readers = new Set<Reader>();
  private writer: object | undefined;
  private sock: net.Socket | undefined;
  private log: fs.WriteStream | undefined;
  private logBytes = 0;
  private closed = false;
  private readonly logMaxBytes: number;

  constructor(private readonly opts: ConsoleOptions) {
    this.ring = new ByteRing(opts.ringBytes ?? 64 * 1024);
    this.logMaxBytes = opts.logMaxBytes ?? 4 * 1024 * 1024;
  }

  /** Connects to the chardev socket, retrying until the deadline (QEMU creates it just after start). */
  async connect(deadlineMs = 10_000): Promise<void> {
    const until = Date.now() + deadlineMs;
    for (;;) {
      try {
        this.sock = await new Promise<net.Socket>((resolve, reject) => {
          const s = net.connect(this.opts.socketPath);
          s.once('connect', () => {
            s.off('error', reject);
            resolve(s);
          });
          s.once('error', reject);
        });
        break;
      } catch (e) {
        if (this.closed) return;
        if (Date.now() > until) {
          throw new VmletError('CONSOLE_UNAVAILABLE', `cannot connect to the serial console at ${this.opts.socketPath}`, { cause: e });
        }
        await new Promise((r) => setTimeout(r, 10));
      }
    }
    try {
      this.logBytes = fs.statSync(this.opts.logFile).size;
    } catch {
      this.logBytes = 0;
    }
    this.log = fs.createWriteStream(this.opts.logFile, { flags: 'a' });
    this.log.on('error', () => {
      this.log = undefined;
    });
    this.sock.on('data', (chunk: Buffer) => this.onData(chunk));
    this.sock.on('error', () => undefined);
    this.sock.on('close', () => this.onClose());
  }

  private onData(chunk: Buffer): void {
    this.ring.push(chunk);
    for (const r of this.readers) r.push(chunk);
    if (this.log) {
      if (this.logBytes + chunk.length > this.logMaxBytes) this.rotateLog();
      this.log?.write(chunk);
      this.logBytes += chunk.length;
    }
  }

  private rotateLog(): void {
    this.log?.end();
    try {
      fs.renameSync(this.opts.logFile, `${this.opts.logFile}.1`);
    } catch {
      /* the old log may be gone with the run dir */
    }
    this.log = fs.createWriteStream(this.opts.logFile, { flags: 'a' });
    this.log.on('error', () => {
      this.log = undefined;
    });
    this.logBytes = 0;
  }

  private onClose(): void {
    this.sock = undefined;
    for (const r of this.readers) r.push(null);
    this.readers.clear();
    this.log?.end();
    this.log = undefined;
  }

  /** Recent output (its last `ringBytes` bytes), oldest first. */
  recent(): Buffer {
    return this.ring.contents();
  }

  attach(opts: { write: boolean }): ConsoleAttachment {
    if (!this.sock) throw new VmletError('CONSOLE_UNAVAILABLE', 'the serial console is not connected: is the VMI running?');
    if (opts.write && this.writer) {
      throw new VmletError('CONSOLE_BUSY', 'another client holds the console for writing; attach read-only or detach it first');
    }
    const token = {};
    if (opts.write) this.writer = token;
    const queue = new ChunkQueue(1024 * 1024);
    const recent = this.recent();
    if (recent.length > 0) queue.push(recent);
    this.readers.add(queue);
    let open = true;
    return {
      output: queue,
      writable: opts.write,
      write: (data: Buffer) => {
        if (!open || this.writer !== token) throw new VmletError('CONSOLE_BUSY', 'this console attachment is read-only');
        return this.sock?.write(data) ?? true;
      },
      drained: () => {
        const sock = this.sock;
        return !sock || !sock.writableNeedDrain ? Promise.resolve() : waitWritable(sock);
      },
      close: () => {
        if (!open) return;
        open = false;
        if (this.writer === token) this.writer = undefined;
        this.readers.delete(queue);
        queue.push(null);
      },
    };
  }

  /** Resolves when the output seen so far (ring buffer) matches. Used by tests and readiness checks. */
  async waitFor(pattern: string | RegExp, timeoutMs: number): Promise<void> {
    const matches = (): boolean => {
      const text = this.recent().toString('utf8');
      return typeof pattern === 'string' ? text.includes(pattern) : pattern.test(text);
    };
    if (matches()) return;
    await new Promise<void>((resolve, reject) => {
      const reader: Reader = {
        push: (chunk) => {
          if (chunk === null) {
            cleanup();
            reject(new VmletError('CONSOLE_UNAVAILABLE', 'the console closed before the output appeared'));
          } else if (matches()) {
            cleanup();
            resolve();
          }
        },
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new VmletError('CONSOLE_TIMEOUT', `console output ${String(pattern)} did not appear within ${timeoutMs} ms`));
      }, timeoutMs);
      const cleanup = (): void => {
        clearTimeout(timer);
        this.readers.delete(reader);
      };
      this.readers.add(reader);
    });
  }

  close(): void {
    this.closed = true;
    this.sock?.destroy();
    this.onClose();
  }
}

/** Connects to the serial console QEMU serves in `runDir` (serial.sock), logging to console.log beside it. */
export async function connectSerialConsole(runDir: string, deadlineMs = 10_000): Promise<SerialConsole> {
  const c = new SerialConsole({ socketPath: path.join(runDir, 'serial.sock'), logFile: path.join(runDir, 'console.log') });
  await c.connect(deadlineMs);
  return c;
}
