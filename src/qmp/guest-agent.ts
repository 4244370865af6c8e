// Guest-agent (qemu-ga) client over the virtio-serial chardev's unix socket: lazy (re)connect, 0xFF resync, one command at a time.
import type { Socket } from 'node:net';
import { randomInt } from 'node:crypto';
import { connectWithRetry, ConnectAttemptError } from './connect.js';
import { QmpError } from './errors.js';
import { LineSplitter, parseObjectLine, excerpt, type JsonObject } from './framing.js';
import { silentLogger, type QmpLogger } from './logger.js';
import type { GuestAgentCommandMap, GuestAgentCommandName, GuestShutdownMode } from './guest-agent-types.js';

export * from './guest-agent-types.js';

export interface GuestAgentClientOptions {
  /** Path of the unix socket of the chardev behind `virtserialport,name=org.qemu.guest_agent.0`. */
  path: string;
  /** How long a (re)connect keeps retrying while the socket is missing. Default 2 000. */
  connectTimeoutMs?: number;
  /** Pause between connect attempts. Default 50. */
  retryIntervalMs?: number;
  /** How long to wait for the guest-sync-delimited answer; an absent agent fails with QGA_TIMEOUT after this. Default 3 000. */
  syncTimeoutMs?: number;
  /** Per-command timeout overrides by name (defaults: docs/qmp.md). */
  timeouts?: Record<string, number>;
  /** Longest accepted line from the agent. Default 16 MiB. */
  maxLineBytes?: number;
  logger?: QmpLogger;
  now?: () => number;
}

export interface GuestAgentExecuteOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** Commands that freeze or thaw filesystems may wait on guest I/O for a long time. */
export const GA_DEFAULT_TIMEOUT_MS = 10_000;
export const GA_FSFREEZE_TIMEOUT_MS = 60_000;
export const GA_SYNC_TIMEOUT_MS = 3_000;

export function gaDefaultTimeoutFor(command: string): number {
  return command === 'guest-fsfreeze-freeze' || command === 'guest-fsfreeze-thaw' ? GA_FSFREEZE_TIMEOUT_MS : GA_DEFAULT_TIMEOUT_MS;
}

type ArgsOf<N extends GuestAgentCommandName> = GuestAgentCommandMap[N]['args'];
export type GaExecuteParams<N extends string> = N extends GuestAgentCommandName
  ? ArgsOf<N> extends undefined
    ? [args?: undefined, opts?: GuestAgentExecuteOptions]
    : object extends ArgsOf<N>
      ? [args?: ArgsOf<N>, opts?: GuestAgentExecuteOptions]
      : [args: ArgsOf<N>, opts?: GuestAgentExecuteOptions]
  : [args?: Record<string, unknown>, opts?: GuestAgentExecuteOptions];
export type GaExecuteResult<N extends string> = N extends GuestAgentCommandName ? GuestAgentCommandMap[N]['ret'] : unknown;

/** Commands the agent answers only on failure. */
const NO_REPLY = new Set(['guest-shutdown', 'guest-suspend-disk', 'guest-suspend-ram', 'guest-suspend-hybrid']);

interface Waiter {
  /** For sync: the id the agent must echo as `return`; for commands: the request id (agents that echo it) */
  id: number;
  sync: boolean;
  resolve: (msg: JsonObject) => void;
  reject: (e: QmpError) => void;
}

export type GuestAgentState = 'disconnected' | 'connected' | 'closed';

/**
 * The agent handles one request at a time and has no notion of sessions: stale replies from an
 * earlier client or a timed-out request may still be in the pipe. So the client serialises
 * commands and, after every (re)connect, timeout or protocol error, sends 0xFF (which resets the
 * agent's parser) plus guest-sync-delimited, then discards input up to the agent's 0xFF and any
 * reply that is not the echo of the fresh sync id.
 */
export class GuestAgentClient {
  private readonly opts: GuestAgentClientOptions;
  private readonly log: QmpLogger;
  private readonly now: () => number;
  private sock: Socket | undefined;
  private splitter: LineSplitter | undefined;
  private needsSync = true;
  private closedByUser = false;
  private chain: Promise<unknown> = Promise.resolve();
  private waiter: Waiter | undefined;
  private nextId = 0;

  constructor(opts: GuestAgentClientOptions) {
    this.opts = opts;
    this.log = opts.logger ?? silentLogger;
    this.now = opts.now ?? Date.now;
  }

  get state(): GuestAgentState {
    if (this.closedByUser) return 'closed';
    return this.sock ? 'connected' : 'disconnected';
  }

  /** Connects and synchronises now (otherwise the first command does it). Rejects with QGA_CONNECT_FAILED or QGA_TIMEOUT. */
  connect(opts: GuestAgentExecuteOptions = {}): Promise<void> {
    return this.serial(async () => {
      await this.ensureReady(opts.signal);
    });
  }

  /**
   * Runs one agent command (queued behind earlier ones). Rejects with QGA_COMMAND_ERROR (the agent said
   * no: errorClass/desc), QGA_TIMEOUT, QGA_DISCONNECTED, QGA_CONNECT_FAILED, QGA_PROTOCOL, QGA_ABORTED or QGA_CLOSED.
   */
  execute<N extends string>(name: N, ...params: GaExecuteParams<N>): Promise<GaExecuteResult<N>> {
    const args = params[0] as Record<string, unknown> | undefined;
    const opts = params[1] as GuestAgentExecuteOptions | undefined;
    return this.serial(() => this.run(name, args, opts ?? {})) as Promise<GaExecuteResult<N>>;
  }

  ping(opts?: GuestAgentExecuteOptions): Promise<void> {
    return this.execute('guest-ping', undefined, opts).then(() => undefined);
  }
  info(opts?: GuestAgentExecuteOptions): Promise<GuestAgentCommandMap['guest-info']['ret']> {
    return this.execute('guest-info', undefined, opts);
  }
  osInfo(opts?: GuestAgentExecuteOptions): Promise<GuestAgentCommandMap['guest-get-osinfo']['ret']> {
    return this.execute('guest-get-osinfo', undefined, opts);
  }
  hostName(opts?: GuestAgentExecuteOptions): Promise<string> {
    return this.execute('guest-get-host-name', undefined, opts).then((r) => r['host-name']);
  }
  networkInterfaces(opts?: GuestAgentExecuteOptions): Promise<GuestAgentCommandMap['guest-network-get-interfaces']['ret']> {
    return this.execute('guest-network-get-interfaces', undefined, opts);
  }
  fsInfo(opts?: GuestAgentExecuteOptions): Promise<GuestAgentCommandMap['guest-get-fsinfo']['ret']> {
    return this.execute('guest-get-fsinfo', undefined, opts);
  }
  fsfreezeStatus(opts?: GuestAgentExecuteOptions): Promise<GuestAgentCommandMap['guest-fsfreeze-status']['ret']> {
    return this.execute('guest-fsfreeze-status', undefined, opts);
  }
  fsfreezeFreeze(opts?: GuestAgentExecuteOptions): Promise<number> {
    return this.execute('guest-fsfreeze-freeze', undefined, opts);
  }
  fsfreezeThaw(opts?: GuestAgentExecuteOptions): Promise<number> {
    return this.execute('guest-fsfreeze-thaw', undefined, opts);
  }
  /** Asks the guest to shut down; resolves once the request is written (the agent sends no reply on success). */
  shutdown(mode: GuestShutdownMode = 'powerdown', opts?: GuestAgentExecuteOptions): Promise<void> {
    return this.execute('guest-shutdown', { mode }, opts);
  }

  /**
   * Lets go of the socket but not of the client: the running command fails with QGA_DISCONNECTED and the
   * next one connects again. For an agent that does not answer, so that its connection costs nothing meanwhile.
   */
  disconnect(): void {
    if (!this.sock) return;
    this.drop(new QmpError('QGA_DISCONNECTED', `guest-agent socket ${this.opts.path} released by the client`));
  }

  /** Closes the connection for good; queued and running commands fail with QGA_CLOSED. */
  async close(): Promise<void> {
    this.closedByUser = true;
    this.drop(new QmpError('QGA_CLOSED', 'guest-agent client closed'));
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn, fn);
    this.chain = run.catch(() => {});
    return run;
  }

  private async run(name: string, args: Record<string, unknown> | undefined, opts: GuestAgentExecuteOptions): Promise<unknown> {
    await this.ensureReady(opts.signal);
    const id = ++this.nextId;
    const req: JsonObject = args === undefined ? { execute: name, id } : { execute: name, arguments: args, id };
    const line = `${JSON.stringify(req)}\n`;
    const ms = opts.timeoutMs ?? this.opts.timeouts?.[name] ?? gaDefaultTimeoutFor(name);
    if (NO_REPLY.has(name)) {
      await this.write(line, name);
      // On failure the agent does answer; that stale error must not reach the next caller.
      this.needsSync = true;
      return undefined;
    }
    const msg = await this.request(line, { id, sync: false }, ms, name, opts.signal);
    if ('error' in msg) {
      const err = msg['error'] as { class?: unknown; desc?: unknown } | null;
      const cls = typeof err?.class === 'string' ? err.class : 'GenericError';
      const desc = typeof err?.desc === 'string' ? err.desc : 'no description';
      throw new QmpError('QGA_COMMAND_ERROR', `${name}: ${desc}`, { command: name, errorClass: cls, desc });
    }
    return msg['return'];
  }

  private async ensureReady(signal: AbortSignal | undefined): Promise<void> {
    if (this.closedByUser) throw new QmpError('QGA_CLOSED', 'guest-agent client is closed');
    if (!this.sock) await this.open(signal);
    if (this.needsSync) await this.sync(signal);
  }

  private async open(signal: AbortSignal | undefined): Promise<void> {
    let sock: Socket;
    try {
      sock = await connectWithRetry({
        path: this.opts.path,
        deadline: this.now() + (this.opts.connectTimeoutMs ?? 2_000),
        retryIntervalMs: this.opts.retryIntervalMs ?? 50,
        signal,
        now: this.now,
      });
    } catch (e) {
      const aborted = e instanceof ConnectAttemptError && e.aborted;
      throw new QmpError(aborted ? 'QGA_ABORTED' : 'QGA_CONNECT_FAILED', e instanceof Error ? e.message : 'connect failed', {
        cause: e instanceof ConnectAttemptError ? e.lastError : e,
      });
    }
    if (this.closedByUser) {
      sock.destroy();
      throw new QmpError('QGA_CLOSED', 'guest-agent client is closed');
    }
    const maxLineBytes = this.opts.maxLineBytes ?? 16 * 1024 * 1024;
    const splitter = new LineSplitter({
      maxLineBytes,
      onLine: (line) => this.onLine(line),
      onOversize: (bytes) => this.protocolError(`line from the guest agent exceeds ${maxLineBytes} bytes (${bytes} so far)`, undefined, true),
    });
    sock.setNoDelay?.(true);
    sock.on('data', (chunk: Buffer) => splitter.push(chunk));
    const gone = (err?: Error): void => {
      if (this.sock !== sock) return;
      this.drop(new QmpError('QGA_DISCONNECTED', `guest-agent socket ${this.opts.path} closed${err ? `: ${err.message}` : ''}`, err ? { cause: err } : {}));
    };
    sock.on('end', () => gone());
    sock.on('error', (err) => gone(err));
    sock.on('close', () => gone());
    this.sock = sock;
    this.splitter = splitter;
    this.needsSync = true;
    this.log.debug({ path: this.opts.path }, 'guest agent connected');
  }

  /** Forgets the connection; the next command reconnects and resyncs. */
  private drop(err: QmpError): void {
    const sock = this.sock;
    this.sock = undefined;
    this.splitter?.stop();
    this.splitter = undefined;
    this.needsSync = true;
    sock?.destroy();
    const w = this.waiter;
    this.waiter = undefined;
    w?.reject(err);
  }

  private async sync(signal: AbortSignal | undefined): Promise<void> {
    const id = randomInt(1, 2 ** 31 - 1);
    const line = `${JSON.stringify({ execute: 'guest-sync-delimited', arguments: { id } })}\n`;
    // Everything the agent sent before its 0xFF is stale; the splitter throws it away.
    this.splitter?.skipToSentinel();
    const ms = this.opts.syncTimeoutMs ?? GA_SYNC_TIMEOUT_MS;
    try {
      await this.request(Buffer.concat([Buffer.from([0xff]), Buffer.from(line)]), { id, sync: true }, ms, 'guest-sync-delimited', signal);
    } catch (e) {
      if (e instanceof QmpError && e.code === 'QGA_TIMEOUT') {
        throw new QmpError('QGA_TIMEOUT', `guest agent did not answer guest-sync-delimited within ${ms} ms (is qemu-ga running in the guest?)`, {
          command: 'guest-sync-delimited',
          cause: e,
        });
      }
      throw e;
    }
    this.needsSync = false;
  }

  private write(data: string | Buffer, name: string): Promise<void> {
    const sock = this.sock;
    if (!sock) return Promise.reject(new QmpError('QGA_DISCONNECTED', `${name}: not connected`, { command: name }));
    return new Promise((resolve, reject) => {
      sock.write(data, (err) => {
        if (err) reject(new QmpError('QGA_DISCONNECTED', `${name}: write failed: ${err.message}`, { command: name, cause: err }));
        else resolve();
      });
    });
  }

  private request(data: string | Buffer, w: { id: number; sync: boolean }, ms: number, name: string, signal: AbortSignal | undefined): Promise<JsonObject> {
    return new Promise<JsonObject>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const onAbort = (): void => fail(new QmpError('QGA_ABORTED', `${name} aborted`, { command: name, cause: signal?.reason }));
      const cleanup = (): void => {
        if (timer) clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        if (this.waiter === waiter) this.waiter = undefined;
      };
      const fail = (e: QmpError): void => {
        cleanup();
        // Whatever the agent still says about this request is stale now.
        this.needsSync = true;
        reject(e);
      };
      const waiter: Waiter = {
        id: w.id,
        sync: w.sync,
        resolve: (m) => {
          cleanup();
          resolve(m);
        },
        reject: fail,
      };
      if (signal?.aborted) return onAbort();
      signal?.addEventListener('abort', onAbort, { once: true });
      timer = setTimeout(() => fail(new QmpError('QGA_TIMEOUT', `${name} got no reply from the guest agent within ${ms} ms`, { command: name })), ms);
      this.waiter = waiter;
      const sock = this.sock;
      if (!sock) return fail(new QmpError('QGA_DISCONNECTED', `${name}: not connected`, { command: name }));
      sock.write(data);
    });
  }

  private onLine(raw: string): void {
    // A 0xFF that arrives outside a resync decodes as U+FFFD; it carries no data.
    const line = raw.charCodeAt(0) === 0xfffd ? raw.replace(/^\uFFFD+/, '') : raw;
    const w = this.waiter;
    if (!w) {
      this.log.debug({ line: excerpt(line) }, 'guest agent: dropped unsolicited line');
      return;
    }
    const msg = parseObjectLine(line);
    if (msg instanceof Error) {
      // Noise while resyncing is expected (stale partial output); wait for the next 0xFF instead.
      if (w.sync) return this.splitter?.skipToSentinel();
      return this.protocolError(`malformed line from the guest agent: ${excerpt(line)}`, msg);
    }
    if (w.sync) {
      if (msg['return'] === w.id) {
        w.resolve(msg);
        return;
      }
      // The answer to an older sync or request: keep discarding until the next 0xFF.
      this.splitter?.skipToSentinel();
      return;
    }
    if (!('return' in msg) && !('error' in msg)) {
      this.log.debug({ line: excerpt(line) }, 'guest agent: dropped a line that is not a reply');
      return;
    }
    const id = msg['id'];
    if (id !== undefined && id !== w.id) {
      this.log.debug({ id, want: w.id }, 'guest agent: dropped a stale reply');
      return;
    }
    w.resolve(msg);
  }

  /** Fails the running command; the next one resyncs. `reconnect`: the stream is unusable (oversized line), start a new connection. */
  private protocolError(message: string, cause: unknown, reconnect = false): void {
    this.log.warn({ msg: message }, 'guest agent protocol error; will resync');
    this.needsSync = true;
    const err = new QmpError('QGA_PROTOCOL', message, cause === undefined ? {} : { cause });
    const w = this.waiter;
    if (w) w.reject(err);
    if (reconnect) this.drop(err);
  }
}
