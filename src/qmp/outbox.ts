// The QMP client's way onto the wire: command ids (small and reused), call order, and fd-carrying commands sent one at a time with sendmsg.
import type { Socket } from 'node:net';
import { QmpError } from './errors.js';

/** One command from execute() until its reply, timeout, abort or the connection's end. */
export interface Pending {
  id: number;
  name: string;
  line: string;
  fds: number[] | undefined;
  resolve: (v: unknown) => void;
  reject: (e: QmpError) => void;
  timer: NodeJS.Timeout | undefined;
  written: boolean;
  done: boolean;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
}

type SendWithFds = (socketFd: number, data: Buffer, fds: number[]) => void;
type SocketFd = (sock: Socket) => number;

export interface OutboxOptions {
  sendWithFds?: SendWithFds | undefined;
  socketFd?: SocketFd | undefined;
  /** Ends a command with an error (the client owns the pending table). */
  fail: (p: Pending, err: QmpError) => void;
  /** Half a command reached the wire: the connection must go. */
  corrupted: (err: QmpError) => void;
}

/**
 * How a failed sendmsg is told apart, by its fields and never its message: `EAGAIN` (the errno of
 * src/sys/scm.ts's error, or the `code` of a Node-style one) means nothing was sent; `details` of
 * `{written, length}` mean a short write.
 */
export function classifySendError(e: unknown): 'retry' | 'short' | 'failed' {
  if (typeof e !== 'object' || e === null) return 'failed';
  const errno = 'errno' in e ? e.errno : 'code' in e ? e.code : undefined;
  if (errno === 'EAGAIN') return 'retry';
  const details = 'details' in e ? e.details : undefined;
  if (typeof details === 'object' && details !== null && 'written' in details && typeof details.written === 'number') return 'short';
  return 'failed';
}

function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

export class Outbox {
  /**
   * Ids are reused: an id is taken from `freeIds` (else a new one) and goes back only once QEMU can no
   * longer answer it (its reply arrived, or it was never written). QEMU 7.2 reads the monitor socket one
   * byte per recvmsg, so every byte of a request costs latency; small ids keep requests short.
   */
  private highId = 0;
  private readonly freeIds: number[] = [];
  /** Commands not yet written because an fd-carrying command ahead of them is waiting; keeps the call order on the wire. */
  private readonly queue: Pending[] = [];
  /** The fd-carrying command written but not answered yet; QEMU keeps received fds per connection, so only one may be in flight. */
  private fdInFlight: Pending | undefined;
  private pumpTimer: NodeJS.Timeout | undefined;
  private sock: Socket | undefined;
  private stopped = false;
  private scm: { send: SendWithFds; fdOf: SocketFd } | undefined;
  private scmLoading = false;

  constructor(private readonly opts: OutboxOptions) {}

  attach(sock: Socket): void {
    this.sock = sock;
  }

  takeId(): number {
    return this.freeIds.pop() ?? ++this.highId;
  }

  releaseId(id: number): void {
    this.freeIds.push(id);
  }

  /** Writes the command now, or queues it behind an fd-carrying one. */
  send(p: Pending): void {
    if (this.queue.length === 0 && p.fds === undefined) {
      this.sock?.write(p.line);
      p.written = true;
    } else {
      this.queue.push(p);
      this.pump();
    }
  }

  /** A command ended: if it was the fd command in flight, the next one may go. */
  settled(p: Pending): void {
    if (this.fdInFlight !== p) return;
    this.fdInFlight = undefined;
    if (this.queue.length > 0) queueMicrotask(() => this.pump());
  }

  /** The connection ended: nothing more is written; queued commands are the client's to fail. */
  stop(): void {
    this.stopped = true;
    this.queue.length = 0;
    if (this.pumpTimer) clearTimeout(this.pumpTimer);
  }

  /** Writes queued commands in order; an fd-carrying one waits until the previous fd command is answered and Node's write buffer is empty. */
  private pump(): void {
    const sock = this.sock;
    if (!sock || this.stopped) return;
    while (this.queue.length > 0) {
      const p = this.queue[0]!;
      if (p.done) {
        this.queue.shift();
        continue;
      }
      if (p.fds === undefined) {
        sock.write(p.line);
        p.written = true;
        this.queue.shift();
        continue;
      }
      if (this.fdInFlight !== undefined) return; // resumed when its reply arrives
      if (sock.writableLength > 0) return this.schedulePump(1); // earlier bytes must reach the kernel first
      try {
        const scm = this.scmOrLoad();
        if (!scm) return; // loading; pump() runs again when loaded
        scm.send(scm.fdOf(sock), Buffer.from(p.line), p.fds);
      } catch (e) {
        const kind = classifySendError(e);
        if (kind === 'retry') return this.schedulePump(2); // kernel buffer full, nothing written
        this.queue.shift();
        const err = new QmpError('QMP_SEND_FDS', `sending ${p.name} with ${p.fds.length} fd(s) failed: ${messageOf(e)}`, { command: p.name, cause: e });
        this.opts.fail(p, err);
        // A short write leaves half a command on the wire: the stream can no longer be trusted.
        if (kind === 'short') this.opts.corrupted(new QmpError('QMP_PROTOCOL', 'partial fd write corrupted the QMP stream', { cause: err }));
        continue;
      }
      p.written = true;
      this.fdInFlight = p;
      this.queue.shift();
    }
  }

  private schedulePump(ms: number): void {
    if (this.pumpTimer) return;
    this.pumpTimer = setTimeout(() => {
      this.pumpTimer = undefined;
      this.pump();
    }, ms);
  }

  private scmOrLoad(): { send: SendWithFds; fdOf: SocketFd } | undefined {
    if (this.scm) return this.scm;
    if (this.opts.sendWithFds && this.opts.socketFd) {
      this.scm = { send: this.opts.sendWithFds, fdOf: this.opts.socketFd };
      return this.scm;
    }
    if (this.scmLoading) return undefined;
    this.scmLoading = true;
    // Loaded lazily so that QMP without fd passing never loads koffi.
    import('../sys/scm.js').then(
      (m) => {
        this.scm = { send: this.opts.sendWithFds ?? m.sendWithFds, fdOf: this.opts.socketFd ?? m.socketFd };
        this.pump();
      },
      (e: unknown) => {
        const err = new QmpError('QMP_SEND_FDS', 'cannot load the SCM_RIGHTS helper (src/sys/scm.ts)', { cause: e });
        for (const p of this.queue.splice(0)) this.opts.fail(p, err);
      },
    );
    return undefined;
  }
}
