// Daemon side of the launcher protocol: accepts vmlet-launch connections on its unix socket (and on pods' own sockets), checks who is calling, hands over QEMU's argv and fds, and relays each VMI's started/exited/disconnected events.
import { EventEmitter } from 'node:events';
import { unlink, chmod } from 'node:fs/promises';
import type net from 'node:net';
import type { Logger } from 'pino';
import { VmletError } from '../errors.js';
import { peerCred, sendWithFds, socketFd, type PeerCred } from '../sys/scm.js';
import type { ExitStatus } from './launch.js';
import { encodeArgvMessage, encodeNetnsMessage, failureCode, MAX_LINE, parseLauncherLine, type LauncherMessage, type LauncherState } from './launcher-codec.js';
import { checkHelloPeer, type HelloDecision, type LauncherHello, type LauncherReject } from './launcher-hello.js';
import { translateChildPid } from './launcher-procfs.js';
import type { PodListener } from './pod-identity.js';
import { bindLauncherSocket, chmodSocketNoFollow, closeServer } from './launcher-socket.js';
import { DEFAULT_PROC_ROOT } from '../api/vocabulary.js';

export {
  encodeArgvMessage,
  encodeNetnsMessage,
  failureCode,
  LAUNCHER_PROTOCOL_VERSION,
  MAX_ARGV_BYTES,
  MAX_FDS,
  MAX_LINE,
  parseLauncherLine,
  type LauncherMessage,
  type LauncherState,
} from './launcher-codec.js';
export type { HelloDecision, LauncherHello, LauncherReject } from './launcher-hello.js';

/** Failure the launcher reported with an ERROR line. */
export interface LauncherFailure {
  /** The launcher's reason token: netns, cgroup, fork, exec, protocol, ... */
  reason: string;
  error: VmletError;
}

export type LauncherLinkEvents = {
  /** An accepted HELLO (first contact, or a reconnect after either side restarted). */
  hello: [hello: LauncherHello];
  /** QEMU was forked and exec'd. */
  started: [qemuPid: number];
  /** QEMU ended; also emitted once for a HELLO that says EXITED. */
  exited: [status: ExitStatus, qemuPid: number];
  /** The launcher gave up with an error (it exits right after). */
  failed: [failure: LauncherFailure];
  /** The accepted connection closed (launcher exited, was killed, or the server closed). */
  disconnected: [reason: string];
};

type WaitResult<K extends keyof LauncherLinkEvents> = LauncherLinkEvents[K];

/** One VMI's view of its launcher, stable across reconnects. Obtain it with `LauncherServer.attach`. */
export class LauncherLink extends EventEmitter<LauncherLinkEvents> {
  readonly uid: string;
  /** Last state the launcher reported (undefined before the first HELLO). */
  state: LauncherState | undefined;
  /** SO_PEERCRED of the current connection, if connected. */
  peer: PeerCred | undefined;
  /** @internal */ conn: net.Socket | undefined;
  /** @internal Whether the current connection's peer sits in a nested pid namespace (its pids need translating). */
  nested = false;
  /** @internal */ detached = false;

  constructor(uid: string) {
    super();
    this.uid = uid;
  }

  get connected(): boolean {
    return this.conn !== undefined && !this.conn.destroyed;
  }

  /** Resolves with the next `event`'s arguments; rejects with LAUNCHER_TIMEOUT after `timeoutMs`. */
  waitFor<K extends keyof LauncherLinkEvents>(event: K, timeoutMs: number): Promise<WaitResult<K>> {
    return new Promise((resolve, reject) => {
      const listener = (...args: WaitResult<K>): void => {
        clearTimeout(timer);
        resolve(args);
      };
      const timer = setTimeout(() => {
        this.off(event, listener as never);
        reject(new VmletError('LAUNCHER_TIMEOUT', `launcher of ${this.uid}: no '${event}' within ${timeoutMs} ms`));
      }, timeoutMs);
      this.once(event, listener as never);
    });
  }
}

export interface LauncherServerOptions {
  /** Path of the unix socket launchers connect to; a stale file there is replaced. */
  socketPath: string;
  /** Decides about every HELLO of an attached uid (e.g. checks the pod in /proc/PID/cgroup). */
  onHello: (hello: LauncherHello) => HelloDecision | Promise<HelloDecision>;
  /** Root of procfs, for pid-namespace translation (default /proc). */
  procRoot?: string;
  /** Mode of the socket file (default 0o600: only root's launchers). */
  socketMode?: number;
  /** The uid launchers on sockets without a pod must run as (default: the daemon's own); a pod's socket checks the pod instead. */
  launcherUid?: number;
  logger?: Logger;
}

/** A socket besides the main one. With `podUid` and `vmiUid` it is that pod's: only that VMI's launcher, living in that pod's cgroup, may use it. */
export interface ExtraListenerOptions {
  /** Mode of the socket file (default 0o600); set without following a symlink, as the folder may be writable by the pod. */
  mode?: number;
  podUid?: string;
  vmiUid?: string;
}

interface Extra {
  path: string;
  mode: number;
  pod: PodListener | undefined;
  server: net.Server | undefined;
}

/**
 * Listens on the launcher socket. Only uids passed to `attach` are known; a HELLO for any other uid
 * is answered `REJECT unknown-uid`. Closing the server drops connections but leaves launchers (and
 * QEMU) running: they reconnect when a server listens again.
 */
export class LauncherServer {
  readonly #opts: LauncherServerOptions;
  readonly #procRoot: string;
  readonly #launcherUid: number;
  readonly #links = new Map<string, LauncherLink>();
  readonly #sockets = new Set<net.Socket>();
  /** Which listening socket each connection came through. */
  readonly #via = new WeakMap<net.Socket, string>();
  #server: net.Server | undefined;
  readonly #extras = new Map<string, Extra>();

  constructor(opts: LauncherServerOptions) {
    this.#opts = opts;
    this.#procRoot = opts.procRoot ?? DEFAULT_PROC_ROOT;
    this.#launcherUid = opts.launcherUid ?? process.getuid?.() ?? 0;
  }

  /** Starts listening (replacing a stale socket file), and again on every extra socket a `close()` stopped. */
  async listen(): Promise<void> {
    if (this.#server) throw new VmletError('LAUNCHER_LISTEN_FAILED', 'launcher server is already listening');
    const server = await bindLauncherSocket(this.#opts.socketPath, (sock) => this.#onConnection(sock, this.#opts.socketPath, undefined), this.#opts.logger);
    await chmod(this.#opts.socketPath, this.#opts.socketMode ?? 0o600);
    this.#server = server;
    for (const x of this.#extras.values()) {
      if (x.server) continue;
      // One pod's folder gone must not keep the daemon from its other launchers.
      await this.#openExtra(x).catch((err: unknown) => this.#opts.logger?.error({ err, socket: x.path }, 'cannot listen again on an extra launcher socket'));
    }
  }

  /**
   * Listens on one more socket that feeds the same links (a launcher pod's `launcher.sock`); independent of
   * `listen()`. `close()` stops it too and the next `listen()` starts it again, until `closeExtra(path)`.
   */
  async listenExtra(socketPath: string, opts: ExtraListenerOptions = {}): Promise<void> {
    if (socketPath === this.#opts.socketPath || this.#extras.has(socketPath)) {
      throw new VmletError('LAUNCHER_LISTEN_FAILED', `already listening on ${socketPath}`);
    }
    if ((opts.podUid === undefined) !== (opts.vmiUid === undefined)) {
      throw new VmletError('LAUNCHER_LISTEN_FAILED', `a pod's launcher socket needs both podUid and vmiUid (${socketPath})`);
    }
    const pod = opts.podUid !== undefined && opts.vmiUid !== undefined ? { podUid: opts.podUid, vmiUid: opts.vmiUid } : undefined;
    const x: Extra = { path: socketPath, mode: opts.mode ?? 0o600, pod, server: undefined };
    this.#extras.set(socketPath, x); // before the await, so a second call for the path is refused
    try {
      await this.#openExtra(x);
    } catch (err) {
      this.#extras.delete(socketPath);
      throw err;
    }
  }

  /** Stops listening on an extra socket (its file is removed) and drops the connections that came through it. */
  async closeExtra(socketPath: string): Promise<void> {
    const x = this.#extras.get(socketPath);
    if (!x) return;
    this.#extras.delete(socketPath);
    await this.#stop(x.server, socketPath);
    x.server = undefined;
  }

  /** The extra sockets, listening or waiting for the next `listen()`. */
  extraSockets(): string[] {
    return [...this.#extras.keys()];
  }

  /** Stops accepting and drops every connection; links stay attached and see `disconnected`. */
  async close(): Promise<void> {
    const server = this.#server;
    this.#server = undefined;
    for (const s of this.#sockets) s.destroy();
    const servers = [server, ...[...this.#extras.values()].map((x) => x.server)];
    for (const x of this.#extras.values()) x.server = undefined;
    await Promise.all(servers.map(closeServer));
  }

  async #stop(server: net.Server | undefined, via: string): Promise<void> {
    for (const s of this.#sockets) if (this.#via.get(s) === via) s.destroy();
    await closeServer(server);
    await unlink(via).catch(() => undefined); // close() unlinks it already; this covers a server that is not bound
  }

  async #openExtra(x: Extra): Promise<void> {
    const server = await bindLauncherSocket(x.path, (sock) => this.#onConnection(sock, x.path, x.pod), this.#opts.logger);
    try {
      await chmodSocketNoFollow(x.path, x.mode, this.#procRoot);
    } catch (err) {
      await closeServer(server);
      throw err;
    }
    if (this.#extras.get(x.path) !== x) return closeServer(server); // closeExtra came while we bound
    x.server = server;
  }

  /** Declares `uid` known to this daemon and returns its link (the same one on every call). */
  attach(uid: string): LauncherLink {
    let link = this.#links.get(uid);
    if (!link) {
      link = new LauncherLink(uid);
      this.#links.set(uid, link);
    }
    return link;
  }

  /** Forgets `uid`: its connection is dropped and later HELLOs are rejected. */
  detach(uid: string): void {
    const link = this.#links.get(uid);
    if (!link) return;
    this.#links.delete(uid);
    link.detached = true;
    link.conn?.destroy();
  }

  link(uid: string): LauncherLink | undefined {
    return this.#links.get(uid);
  }

  #onConnection(sock: net.Socket, via: string, pod: PodListener | undefined): void {
    this.#sockets.add(sock);
    this.#via.set(sock, via);
    let peer: PeerCred;
    try {
      peer = peerCred(socketFd(sock));
    } catch (err) {
      this.#opts.logger?.warn({ err }, 'launcher connection without credentials');
      sock.destroy();
      this.#sockets.delete(sock);
      return;
    }
    const log = this.#opts.logger?.child({ launcherPeerPid: peer.pid, launcherPeerUid: peer.uid });
    let buf = '';
    let link: LauncherLink | undefined; // set once HELLO is accepted
    let chain = Promise.resolve();
    let closing = false;

    const reject = (code: LauncherReject, text: string, facts?: Record<string, unknown>): void => {
      log?.warn({ reject: code, socket: via, ...facts }, `launcher rejected: ${text}`);
      closing = true;
      sock.end(`REJECT ${code} ${text.replace(/\n/g, ' ')}\n`);
    };

    const handle = async (line: string): Promise<void> => {
      if (closing || sock.destroyed) return;
      let msg: LauncherMessage;
      try {
        msg = parseLauncherLine(line);
      } catch (err) {
        if (!link) return reject('bad-hello', (err as Error).message);
        log?.warn({ err }, 'ignoring bad launcher message');
        return;
      }
      if (!link) {
        if (msg.type !== 'hello') return reject('bad-hello', `expected HELLO, got ${msg.type.toUpperCase()}`);
        return this.#hello(
          sock,
          peer,
          pod,
          msg,
          reject,
          (l) => {
            link = l;
          },
          log,
        );
      }
      const l = link;
      if (l.conn !== sock) return; // superseded by a newer connection of the same launcher
      switch (msg.type) {
        case 'hello':
          log?.warn('second HELLO on one connection ignored');
          return;
        case 'started': {
          // Only a launcher in a pod's pid namespace reports a pid of its own: a procfs read less on the start's path.
          const qemuPid = l.nested ? await this.#toDaemonPid(peer, msg.qemuPid) : msg.qemuPid;
          l.state = { kind: 'running', qemuPid };
          l.emit('started', qemuPid);
          return;
        }
        case 'exited': {
          sock.write('OK\n');
          const prev = l.state;
          const qemuPid = prev && prev.kind !== 'new' ? prev.qemuPid : 0;
          if (prev?.kind === 'exited') return;
          l.state = { kind: 'exited', qemuPid, status: msg.status };
          l.emit('exited', msg.status, qemuPid);
          return;
        }
        case 'error': {
          const error = new VmletError(failureCode(msg.reason), `launcher of ${l.uid} failed (${msg.reason}): ${msg.text}`);
          l.emit('failed', { reason: msg.reason, error });
          return;
        }
      }
    };

    sock.on('data', (chunk: Buffer) => {
      buf += chunk.toString('utf8');
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        chain = chain
          .then(() => handle(line))
          .catch((err: unknown) => {
            log?.error({ err }, 'launcher message handling failed');
            sock.destroy();
          });
      }
      if (buf.length > MAX_LINE) {
        buf = '';
        if (!link) reject('bad-hello', 'line too long');
        else sock.destroy();
      }
    });
    sock.on('error', (err) => log?.debug({ err }, 'launcher connection error'));
    sock.on('close', () => {
      this.#sockets.delete(sock);
      // Let queued lines (e.g. a final EXITED) be handled before announcing the disconnect.
      void chain.then(() => {
        if (link && link.conn === sock) {
          link.conn = undefined;
          link.peer = undefined;
          link.emit('disconnected', 'connection closed');
        }
      });
    });
  }

  async #hello(
    sock: net.Socket,
    peer: PeerCred,
    pod: PodListener | undefined,
    msg: Extract<LauncherMessage, { type: 'hello' }>,
    reject: (code: LauncherReject, text: string, facts?: Record<string, unknown>) => void,
    accepted: (l: LauncherLink) => void,
    log: Logger | undefined,
  ): Promise<void> {
    const checked = await checkHelloPeer(msg, peer, pod, { procRoot: this.#procRoot, launcherUid: this.#launcherUid });
    if ('refusal' in checked) return reject(checked.refusal.code, checked.refusal.text, checked.refusal.facts);
    const nested = checked.nested;
    const link = this.#links.get(msg.uid);
    if (!link) return reject('unknown-uid', `no VMI with uid ${msg.uid} on this node`);
    if (link.connected && link.peer?.pid !== peer.pid) {
      return reject('duplicate', `VMI ${msg.uid} already has a launcher (pid ${link.peer?.pid ?? '?'})`);
    }
    let state = msg.state;
    if (nested && state.kind !== 'new') {
      const qemuPid = await translateChildPid(this.#procRoot, peer.pid, state.qemuPid);
      if (qemuPid === undefined) log?.warn({ reported: state.qemuPid }, 'cannot translate QEMU pid out of the launcher pid namespace');
      state = { ...state, qemuPid: qemuPid ?? state.qemuPid };
    }
    const hello: LauncherHello = { uid: msg.uid, launcherPid: msg.launcherPid, peer, state, ...(pod ? { pod } : {}) };
    let decision: HelloDecision;
    try {
      decision = await this.#opts.onHello(hello);
    } catch (err) {
      log?.error({ err }, 'onHello failed');
      return reject('internal', 'the daemon failed to decide; see its log');
    }
    if (sock.destroyed) return;
    if (link.detached || this.#links.get(msg.uid) !== link) return reject('unknown-uid', `VMI ${msg.uid} was removed`);
    if (decision.action === 'reject') return reject(decision.code ?? 'denied', decision.reason, { uid: msg.uid });
    if (state.kind === 'new') {
      if (decision.action !== 'launch') return reject('no-argv', 'the daemon has no QEMU argv for this launcher');
      try {
        const argv = encodeArgvMessage(decision.argv, decision.fds.length);
        const message = decision.netns !== undefined ? Buffer.concat([encodeNetnsMessage(decision.netns), argv]) : argv;
        sendWithFds(socketFd(sock), message, [...decision.fds]);
      } catch (err) {
        const error =
          err instanceof VmletError && err.code === 'LAUNCHER_BAD_ARGV'
            ? err
            : new VmletError('LAUNCHER_SEND_FAILED', `cannot hand argv and fds to the launcher of ${msg.uid}`, { cause: err });
        link.emit('failed', { reason: 'handover', error });
        sock.destroy();
        return;
      }
    } else {
      sock.write('OK\n');
    }
    if (link.conn && link.conn !== sock) link.conn.destroy(); // the same launcher reconnected
    link.conn = sock;
    link.peer = peer;
    link.nested = nested;
    const prev = link.state;
    link.state = state;
    accepted(link);
    log?.info({ uid: msg.uid, state: state.kind }, 'launcher connected');
    link.emit('hello', hello);
    if (state.kind === 'exited' && !(prev?.kind === 'exited' && prev.qemuPid === state.qemuPid)) {
      link.emit('exited', state.status, state.qemuPid);
    }
  }

  async #toDaemonPid(peer: PeerCred, pid: number): Promise<number> {
    return (await translateChildPid(this.#procRoot, peer.pid, pid)) ?? pid;
  }
}
