// QMP client: one connection to a QEMU monitor socket, with id-matched commands, typed events, timeouts and fd passing.
import type { Socket } from 'node:net';
import type { ConnectCallOptions, ExecuteOptions, ExecuteParams, ExecuteResult, QmpClientOptions, QmpEventListener, QmpState } from './client-types.js';
import { connectWithRetry, ConnectAttemptError } from './connect.js';
import { QmpError } from './errors.js';
import { EventHub } from './event-hub.js';
import type { BoundedQueue } from './event-queue.js';
import { LineSplitter, parseObjectLine, excerpt } from './framing.js';
import { silentLogger, type QmpLogger } from './logger.js';
import { isEventMessage, isGreetingBody, toEvent } from './messages.js';
import { Outbox, type Pending } from './outbox.js';
import { defaultTimeoutFor } from './timeouts.js';
import type { QmpEvent, QmpEventName, QmpGreeting } from './types.js';

export type { ConnectCallOptions, ExecuteOptions, ExecuteParams, ExecuteResult, QmpClientOptions, QmpEventListener, QmpState } from './client-types.js';

const DEFAULTS = {
  connectTimeoutMs: 10_000,
  retryIntervalMs: 10,
  greetingTimeoutMs: 5_000,
  maxLineBytes: 16 * 1024 * 1024,
  eventBufferSize: 1_000,
};

const FD_COMMANDS = new Set(['getfd', 'add-fd']);

export class QmpClient {
  private readonly opts: QmpClientOptions;
  private readonly log: QmpLogger;
  private readonly now: () => number;
  private sock: Socket | undefined;
  private splitter: LineSplitter | undefined;
  private stateValue: QmpState = 'idle';
  private readonly pending = new Map<number, Pending>();
  /** Ids whose caller gave up (timeout with closeOnTimeout=false, or abort): their late reply is dropped, never re-routed, and the id stays reserved until it comes. */
  private readonly abandoned = new Set<number>();
  private readonly outbox: Outbox;
  private readonly hub: EventHub;
  private greetingValue: QmpGreeting | undefined;
  private oobEnabled = false;
  private closeReason: QmpError | undefined;
  private closeResolve!: (reason: QmpError | undefined) => void;
  private lineHandler: (line: string) => void = () => {};
  private readonly closeListeners = new Set<(reason: QmpError | undefined) => void>();
  private readonly onTimeoutBound = (p: Pending): void => this.onTimeout(p);
  private readonly onLineBound = (line: string): void => this.onLine(line);

  /** Settles once the connection is gone: undefined after close(), else the error that ended it. */
  readonly closed: Promise<QmpError | undefined>;

  constructor(opts: QmpClientOptions) {
    this.opts = opts;
    this.log = opts.logger ?? silentLogger;
    this.now = opts.now ?? Date.now;
    this.hub = new EventHub({ log: this.log, bufferSize: opts.eventBufferSize ?? DEFAULTS.eventBufferSize });
    this.closed = new Promise((resolve) => {
      this.closeResolve = resolve;
    });
    this.outbox = new Outbox({
      sendWithFds: opts.sendWithFds,
      socketFd: opts.socketFd,
      fail: (p, err) => this.settle(p, err),
      corrupted: (err) => this.teardown(err),
    });
  }

  get state(): QmpState {
    return this.stateValue;
  }

  /** QEMU's greeting (version, capabilities), once connected. */
  get greeting(): QmpGreeting | undefined {
    return this.greetingValue;
  }

  /** Capabilities QEMU offered in the greeting. */
  get capabilities(): string[] {
    return this.greetingValue?.QMP.capabilities ?? [];
  }

  /** Whether out-of-band execution was negotiated. */
  get oob(): boolean {
    return this.oobEnabled;
  }

  /** Events dropped so far by all events() iterators whose buffers overflowed. */
  get droppedEvents(): number {
    return this.hub.dropped;
  }

  /** Commands sent and not yet answered. */
  get pendingCount(): number {
    return this.pending.size;
  }

  /**
   * Connects (retrying until connectTimeoutMs while QEMU creates the socket), reads the greeting and
   * negotiates capabilities. Rejects with QMP_CONNECT_FAILED, QMP_GREETING_TIMEOUT, QMP_PROTOCOL or
   * QMP_NEGOTIATION_FAILED; the client is then closed. A client connects once: make a new one to reconnect.
   * `pipelined`: resolves once qmp_capabilities is sent, so the next command follows it without waiting for its
   * answer (QEMU answers in order); a failed negotiation then closes the client and fails what was sent after it.
   */
  async connect(callOpts: ConnectCallOptions = {}): Promise<void> {
    if (this.stateValue !== 'idle') {
      throw new QmpError('QMP_NOT_CONNECTED', `connect() called in state ${this.stateValue}; a client connects once`);
    }
    this.stateValue = 'connecting';
    const path = this.opts.path;
    let sock: Socket;
    try {
      sock = await connectWithRetry({
        path,
        deadline: this.now() + (this.opts.connectTimeoutMs ?? DEFAULTS.connectTimeoutMs),
        retryIntervalMs: this.opts.retryIntervalMs ?? DEFAULTS.retryIntervalMs,
        signal: callOpts.signal,
        now: this.now,
      });
    } catch (e) {
      const aborted = e instanceof ConnectAttemptError && e.aborted;
      const err = new QmpError(aborted ? 'QMP_ABORTED' : 'QMP_CONNECT_FAILED', e instanceof Error ? e.message : `connect to ${path} failed`, {
        cause: e instanceof ConnectAttemptError ? e.lastError : e,
      });
      this.finish(err);
      throw err;
    }
    this.attach(sock);
    const greetingMs = this.opts.greetingTimeoutMs ?? DEFAULTS.greetingTimeoutMs;
    try {
      const greeting = await this.waitGreeting(greetingMs, callOpts.signal);
      this.greetingValue = greeting;
      const offerOob = greeting.QMP.capabilities.includes('oob') && (this.opts.enableOob ?? true);
      this.stateValue = 'ready';
      const negotiated = this.execute('qmp_capabilities', offerOob ? { enable: ['oob'] } : {}, { timeoutMs: greetingMs }).then(
        () => {
          this.oobEnabled = offerOob;
          const v = greeting.QMP.version.qemu;
          this.log.debug({ path, qemu: `${v.major}.${v.minor}.${v.micro}`, oob: offerOob }, 'qmp connected');
        },
        (e: unknown) => {
          throw new QmpError('QMP_NEGOTIATION_FAILED', `qmp_capabilities failed: ${(e as Error).message}`, { cause: e, command: 'qmp_capabilities' });
        },
      );
      if (callOpts.pipelined) {
        negotiated.catch((e: unknown) => this.teardown(e instanceof QmpError ? e : new QmpError('QMP_PROTOCOL', String(e), { cause: e })));
        return;
      }
      await negotiated;
    } catch (e) {
      const err = e instanceof QmpError ? e : new QmpError('QMP_PROTOCOL', String(e), { cause: e });
      this.teardown(err);
      throw err;
    }
  }

  private waitGreeting(ms: number, signal: AbortSignal | undefined): Promise<QmpGreeting> {
    return new Promise((resolve, reject) => {
      let settled = false;
      const settle = (fn: () => void): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        this.closeListeners.delete(onClose);
        fn();
      };
      const timer = setTimeout(
        () =>
          settle(() =>
            reject(
              new QmpError(
                'QMP_GREETING_TIMEOUT',
                `no QMP greeting from ${this.opts.path} within ${ms} ms (is another client holding the monitor, or is this not a QMP socket?)`,
              ),
            ),
          ),
        ms,
      );
      const onAbort = (): void => settle(() => reject(new QmpError('QMP_ABORTED', 'connect aborted', { cause: signal?.reason })));
      signal?.addEventListener('abort', onAbort, { once: true });
      const onClose = (reason: QmpError | undefined): void =>
        settle(() => reject(new QmpError('QMP_CONNECT_FAILED', `QMP socket ${this.opts.path} closed before the greeting`, { cause: reason })));
      this.closeListeners.add(onClose);
      this.lineHandler = (line) => {
        const msg = parseObjectLine(line);
        const qmp = msg instanceof Error ? undefined : msg['QMP'];
        if (msg instanceof Error || !isGreetingBody(qmp)) {
          settle(() =>
            reject(new QmpError('QMP_PROTOCOL', `expected the QMP greeting, got: ${excerpt(line)}`, { cause: msg instanceof Error ? msg : undefined })),
          );
          return;
        }
        // A method, not a closure here: this one would keep the greeting's timer and callbacks alive as long as the connection.
        this.lineHandler = this.onLineBound;
        settle(() => resolve({ QMP: qmp }));
      };
    });
  }

  private attach(sock: Socket): void {
    this.sock = sock;
    this.outbox.attach(sock);
    sock.setNoDelay?.(true);
    const maxLineBytes = this.opts.maxLineBytes ?? DEFAULTS.maxLineBytes;
    this.splitter = new LineSplitter({
      maxLineBytes,
      onLine: (line) => this.lineHandler(line),
      onOversize: (bytes) => this.protocolError(`line from QEMU exceeds ${maxLineBytes} bytes (${bytes} so far)`),
    });
    const splitter = this.splitter;
    sock.on('data', (chunk: Buffer) => splitter.push(chunk));
    // 'end' comes first when QEMU exits or is killed; fail pending commands at once rather than on 'close'.
    sock.on('end', () => this.teardown(new QmpError('QMP_DISCONNECTED', `QMP socket ${this.opts.path} closed by QEMU`)));
    sock.on('error', (err) => this.teardown(new QmpError('QMP_DISCONNECTED', `QMP socket error: ${err.message}`, { cause: err })));
    sock.on('close', () => this.teardown(new QmpError('QMP_DISCONNECTED', `QMP socket ${this.opts.path} closed`)));
  }

  /**
   * Runs one command. Known commands are typed (arguments and result); any other name takes a plain
   * object and resolves to unknown. Rejects with QMP_COMMAND_ERROR (QEMU said no: see errorClass/desc),
   * QMP_TIMEOUT, QMP_DISCONNECTED, QMP_NOT_CONNECTED, QMP_ABORTED or QMP_SEND_FDS.
   */
  execute<N extends string>(name: N, ...params: ExecuteParams<N>): Promise<ExecuteResult<N>> {
    const args = params[0] as Record<string, unknown> | undefined;
    const opts = params[1] as ExecuteOptions | undefined;
    return this.send(name, args, opts) as Promise<ExecuteResult<N>>;
  }

  /** Untyped form of execute(), for command names built at run time. */
  executeRaw(name: string, args?: Record<string, unknown>, opts?: ExecuteOptions): Promise<unknown> {
    return this.send(name, args, opts);
  }

  private send(name: string, args: Record<string, unknown> | undefined, opts: ExecuteOptions | undefined): Promise<unknown> {
    if (this.stateValue !== 'ready') {
      const reason = this.closeReason;
      return Promise.reject(
        new QmpError(this.stateValue === 'closed' ? 'QMP_DISCONNECTED' : 'QMP_NOT_CONNECTED', `cannot run ${name}: the QMP client is ${this.stateValue}`, {
          command: name,
          cause: reason,
        }),
      );
    }
    const fds = opts?.fds;
    if (FD_COMMANDS.has(name) && fds?.length !== 1) {
      return Promise.reject(new QmpError('QMP_INVALID_ARGUMENT', `${name} needs exactly one fd in opts.fds`, { command: name }));
    }
    if (opts?.oob && !this.oobEnabled) {
      return Promise.reject(new QmpError('QMP_INVALID_ARGUMENT', `cannot send ${name} out-of-band: oob was not negotiated`, { command: name }));
    }
    const signal = opts?.signal;
    if (signal?.aborted) return Promise.reject(new QmpError('QMP_ABORTED', `${name} aborted before it was sent`, { command: name, cause: signal.reason }));
    const id = this.outbox.takeId();
    const key = opts?.oob ? 'exec-oob' : 'execute';
    const line = args === undefined ? `{"${key}":${JSON.stringify(name)},"id":${id}}\n` : `${JSON.stringify({ [key]: name, arguments: args, id })}\n`;
    return new Promise((resolve, reject) => {
      const p: Pending = {
        id,
        name,
        line,
        fds: fds && fds.length > 0 ? fds : undefined,
        resolve,
        reject,
        timer: undefined,
        written: false,
        done: false,
        signal,
        onAbort: undefined,
      };
      const ms = opts?.timeoutMs ?? this.opts.timeouts?.[name] ?? defaultTimeoutFor(name);
      p.timer = setTimeout(this.onTimeoutBound, ms, p);
      if (signal) {
        p.onAbort = () => this.abandon(p, new QmpError('QMP_ABORTED', `${name} aborted`, { command: name, cause: signal.reason }));
        signal.addEventListener('abort', p.onAbort, { once: true });
      }
      this.pending.set(id, p);
      this.outbox.send(p);
    });
  }

  private onLine(line: string): void {
    const msg = parseObjectLine(line);
    if (msg instanceof Error) return this.protocolError(`malformed line from QEMU: ${excerpt(line)}`, msg);
    if (isEventMessage(msg)) return this.hub.dispatch(toEvent(msg));
    const id = msg['id'];
    const hasReturn = 'return' in msg;
    if (!hasReturn && !('error' in msg)) return this.protocolError(`unexpected message from QEMU: ${excerpt(line)}`);
    if (typeof id !== 'number') {
      return this.protocolError(`reply without a matching id (did QEMU fail to parse a request?): ${excerpt(line)}`);
    }
    const p = this.pending.get(id);
    if (p === undefined) {
      if (this.abandoned.delete(id)) {
        this.log.debug({ id }, 'qmp: dropped late reply of an abandoned command');
        this.outbox.releaseId(id);
        return;
      }
      return this.protocolError(`reply with unknown id ${id}: ${excerpt(line)}`);
    }
    if (hasReturn) {
      this.settle(p, undefined, msg['return']);
    } else {
      const err = msg['error'] as { class?: unknown; desc?: unknown } | null;
      const cls = typeof err?.class === 'string' ? err.class : 'GenericError';
      const desc = typeof err?.desc === 'string' ? err.desc : 'no description';
      this.settle(p, new QmpError('QMP_COMMAND_ERROR', `${p.name}: ${desc}`, { command: p.name, errorClass: cls, desc }));
    }
  }

  private settle(p: Pending, err: QmpError | undefined, value?: unknown, reserveId = false): void {
    if (p.done) return;
    p.done = true;
    this.pending.delete(p.id);
    if (!reserveId) this.outbox.releaseId(p.id);
    if (p.timer) clearTimeout(p.timer);
    if (p.onAbort) p.signal?.removeEventListener('abort', p.onAbort);
    this.outbox.settled(p);
    if (err) p.reject(err);
    else p.resolve(value);
  }

  /** Gives up on a command without closing: a later reply with its id is dropped. */
  private abandon(p: Pending, err: QmpError): void {
    if (p.done) return;
    if (p.written) this.abandoned.add(p.id);
    this.settle(p, err, undefined, p.written);
  }

  private onTimeout(p: Pending): void {
    if (p.done) return;
    p.timer = undefined;
    const err = new QmpError('QMP_TIMEOUT', `${p.name} got no reply within its timeout${p.written ? '' : ' (it was still queued, never sent)'}`, {
      command: p.name,
    });
    this.log.warn({ command: p.name, id: p.id, closeOnTimeout: this.opts.closeOnTimeout ?? true }, 'qmp command timed out');
    this.abandon(p, err);
    if (this.opts.closeOnTimeout ?? true) {
      this.teardown(new QmpError('QMP_DISCONNECTED', `QMP connection closed after ${p.name} timed out`, { cause: err }));
    }
  }

  private protocolError(message: string, cause?: unknown): void {
    const err = new QmpError('QMP_PROTOCOL', message, cause === undefined ? {} : { cause });
    this.log.error({ err }, 'qmp protocol error; closing the connection');
    this.teardown(err);
  }

  /**
   * Calls fn for each event of that name (or every event with '*'), synchronously and in wire order:
   * an event QEMU sent before a reply reaches listeners before that command's promise settles.
   * Returns a function that removes the listener.
   */
  on<N extends QmpEventName>(event: N, fn: QmpEventListener<N>): () => void;
  on(event: '*', fn: QmpEventListener<string>): () => void;
  on(event: string, fn: QmpEventListener<string>): () => void;
  on(event: string, fn: QmpEventListener<string>): () => void {
    return this.hub.on(event, fn);
  }

  off(event: string, fn: QmpEventListener<string>): void {
    this.hub.off(event, fn);
  }

  /** Calls fn once when the connection ends (with its reason, undefined after close()). */
  onClose(fn: (reason: QmpError | undefined) => void): () => void {
    if (this.stateValue === 'closed') {
      queueMicrotask(() => fn(this.closeReason));
      return () => {};
    }
    this.closeListeners.add(fn);
    return () => this.closeListeners.delete(fn);
  }

  /**
   * An async iterator over events from now on (optionally only the given names). It buffers up to
   * bufferSize events; beyond that the oldest is dropped and counted in droppedEvents (and the
   * iterator's own `dropped`). It ends, after the buffered events, when the connection closes;
   * breaking out of the loop unsubscribes it.
   */
  events(opts: { names?: string[]; bufferSize?: number } = {}): BoundedQueue<QmpEvent> {
    return this.hub.subscribe(opts, this.stateValue === 'closed');
  }

  /** Closes the connection; pending commands fail with QMP_DISCONNECTED. Resolves when the socket is closed. */
  async close(): Promise<void> {
    if (this.stateValue === 'closed') return;
    this.teardown(undefined);
    await this.closed;
  }

  /** Ends the connection once: fails pending commands, ends event iterators, notifies close listeners. */
  private teardown(reason: QmpError | undefined): void {
    if (this.stateValue === 'closed') return;
    this.stateValue = 'closed';
    this.closeReason = reason;
    this.splitter?.stop();
    this.outbox.stop();
    this.sock?.destroy();
    if (reason) this.log.debug({ code: reason.code, msg: reason.message }, 'qmp connection closed');
    const cause = reason ?? new QmpError('QMP_DISCONNECTED', 'QMP client closed');
    for (const p of [...this.pending.values()]) {
      // quit's job is to make QEMU go away; a disconnect after sending it is that job done.
      if (p.name === 'quit' && p.written && reason !== undefined) {
        this.settle(p, undefined, {});
        continue;
      }
      this.settle(p, new QmpError('QMP_DISCONNECTED', `${p.name}: ${cause.message}`, reason ? { command: p.name, cause: reason } : { command: p.name }));
    }
    this.abandoned.clear();
    this.hub.endAll();
    this.finish(reason);
  }

  private finish(reason: QmpError | undefined): void {
    this.stateValue = 'closed';
    this.closeReason = reason;
    for (const fn of [...this.closeListeners]) {
      try {
        fn(reason);
      } catch (e) {
        this.log.error({ err: e }, 'qmp close listener threw');
      }
    }
    this.closeListeners.clear();
    this.closeResolve(reason);
  }
}
