// A VM's launcher as the supervisor sees it: the link's events (QEMU's pid, its exit) as core events, and a launcher whose connection dropped told apart from one that is gone.
import type { Logger } from 'pino';
import { isLiveProcessFor, readRunDir, type RunDirState } from '../qemu/launch.js';
import { refuseUnrecorded } from '../qemu/launcher-hello.js';
import type { HelloDecision, LauncherHello, LauncherLink, LauncherServer } from '../qemu/launcher-server.js';
import type { CoreEvent } from './supervisor-core.js';
import type { PodLauncherView } from './supervisor-pod.js';
import type { EarlyLauncher } from './supervisor-spawn.js';

export interface LauncherWatchOptions {
  server: Pick<LauncherServer, 'link' | 'attach'>;
  uid: string;
  runDir: string;
  procRoot?: string | undefined;
  logger: Logger;
  dispatch(e: CoreEvent): Promise<unknown>;
  exited(): boolean;
  launcherPid(): number | undefined;
  /** The launcher reports QEMU's pid. */
  started(qemuPid: number): void;
}

export class LauncherWatch {
  #link: LauncherLink | undefined;

  constructor(private readonly opts: LauncherWatchOptions) {}

  get link(): LauncherLink | undefined {
    return this.#link;
  }

  /** The VMI's link (made if the server has none yet), followed once. */
  attach(): LauncherLink {
    const { server, uid, logger: log, dispatch } = this.opts;
    const link = server.link(uid) ?? server.attach(uid);
    if (this.#link !== link) {
      this.#link = link;
      link.on('started', (pid) => {
        this.opts.started(pid);
      });
      link.on('exited', (status) => {
        void dispatch({ type: 'exited', exit: status });
      });
      link.on('failed', (f) => {
        log.warn({ reason: f.reason, err: f.error }, 'launcher failed');
      });
      link.on('disconnected', (reason) => {
        void this.onGone(reason);
      });
    }
    return link;
  }

  /**
   * Standalone: a HELLO from any process but the launcher this daemon spawned (`early`: still being spawned) or found
   * recorded after a restart is refused, whatever the VMI's state, before it can get argv and fds or change anything.
   */
  async refuseStranger(h: LauncherHello, early: Pick<EarlyLauncher, 'pid' | 'holds'> | undefined): Promise<HelloDecision | undefined> {
    // Our own child, not reaped: the peer's pid proves it (procfs reads wait behind the pool while a sandbox is made).
    if (early?.holds(h.peer.pid)) return undefined;
    const spawned = early ? await early.pid.catch(() => undefined) : undefined;
    // A spare is handed over before its group is renamed, so its HELLO can come before `pid` resolves.
    if (early?.holds(h.peer.pid)) return undefined;
    const { uid, runDir, procRoot } = this.opts;
    // The server logs the refusal with the peer's pid and uid.
    return refuseUnrecorded(h.peer, { pid: this.opts.launcherPid() ?? spawned, uid, runDir, procRoot });
  }

  /** The launcher's connection dropped: fine while it reconnects, fatal if the process is gone. */
  private async onGone(reason: string): Promise<void> {
    const o = this.opts;
    if (o.exited()) return;
    await new Promise((r) => setTimeout(r, 300));
    if (o.exited() || this.#link?.connected) return;
    const pid = o.launcherPid();
    if (pid && (await isLiveProcessFor(pid, o.uid, o.procRoot))) return;
    const rd = await readRunDir(o.runDir).catch(() => undefined);
    if (rd?.exitStatus) {
      await o.dispatch({ type: 'exited', exit: rd.exitStatus });
      return;
    }
    await o.dispatch({ type: 'launcherLost', reason });
  }
}

/** Standalone, after a daemon restart: what the run dir says runs, each pid checked to still be this VMI's. */
export async function inspectRunDir(runDir: string, uid: string, procRoot: string | undefined): Promise<PodLauncherView> {
  const rd = await readRunDir(runDir).catch((): RunDirState => ({}));
  const launcherAlive = rd.launcherPid !== undefined && (await isLiveProcessFor(rd.launcherPid, uid, procRoot, rd.launcherStart));
  const qemuAlive = rd.qemuPid !== undefined && (await isLiveProcessFor(rd.qemuPid, uid, procRoot, rd.qemuStart));
  return {
    launcherPid: launcherAlive ? rd.launcherPid : undefined,
    qemuPid: qemuAlive ? rd.qemuPid : undefined,
    launcherAlive,
    qemuAlive,
    exit: rd.exitStatus,
  };
}
