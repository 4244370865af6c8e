// Gives each launcher pod of this node its own launcher socket: waits for the pod's vmlet-run emptyDir, links it as /run/vmlet/pods/<pod uid>, listens there for that pod's launcher only, and removes it all again.
import { lchown, lstat, mkdir, readdir, rename, symlink, unlink } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { VmletError } from '../errors.js';
import type { LauncherServer } from '../qemu/launcher-server.js';

/** Name of the launcher pod's emptyDir volume, and of the socket in it (docs/cluster-mode.md). */
export const POD_RUN_VOLUME = 'vmlet-run';
export const POD_LAUNCHER_SOCKET = 'launcher.sock';
/** Where the daemon links each pod's run folder: short enough for unix socket paths (108 bytes). */
export const DEFAULT_POD_LINKS_DIR = '/run/vmlet/pods';
/** The launcher pod's runAsUser / runAsGroup: QEMU runs as this and must be able to use what the daemon puts in the folder. */
export const POD_QEMU_OWNER: Readonly<Owner> = { uid: 107, gid: 107 };

export interface Owner {
  uid: number;
  gid: number;
}

const POD_UID_RE = /^[0-9a-f][0-9a-f-]{0,63}$/;
const VMI_UID_RE = /^[A-Za-z0-9._-]{1,128}$/;

/** The kubelet's folder of a pod's `vmlet-run` emptyDir (pure). */
export function podRunVolumeDir(kubeletRootDir: string, podUid: string): string {
  return path.join(kubeletRootDir, 'pods', podUid, 'volumes', 'kubernetes.io~empty-dir', POD_RUN_VOLUME);
}

export interface PodLauncherSocketsOptions {
  server: Pick<LauncherServer, 'listenExtra' | 'closeExtra'>;
  /** The kubelet's --root-dir (usually /var/lib/kubelet). */
  kubeletRootDir: string;
  /** Default /run/vmlet/pods. */
  linksDir?: string;
  /** How long open() waits for the pod's folder (default 120 s: the kubelet makes it when it admits the pod). */
  waitTimeoutMs?: number;
  pollIntervalMs?: number;
  now?: () => number;
  sleep?: (ms: number) => Promise<void>;
  logger?: Logger;
}

interface Entry {
  vmiUid: string;
  link: string;
  socket: string;
  abort: AbortController;
  ready: Promise<string>;
  /** Settles (never rejects) when open's work is over, so close() follows a pending listenExtra. */
  settled: Promise<void>;
}

/** Socket and link per launcher pod. Nothing is touched before `open()`; the pod check itself is LauncherServer's. */
export class PodLauncherSockets {
  readonly #o: PodLauncherSocketsOptions;
  readonly #linksDir: string;
  readonly #pods = new Map<string, Entry>();

  constructor(opts: PodLauncherSocketsOptions) {
    this.#o = opts;
    this.#linksDir = opts.linksDir ?? DEFAULT_POD_LINKS_DIR;
  }

  /** The daemon-side path of a pod's run folder (the link), whether or not it is open. */
  linkPath(podUid: string): string {
    return path.join(this.#linksDir, podUid);
  }

  /** Pod uids that are open or being opened. */
  pods(): string[] {
    return [...this.#pods.keys()];
  }

  /**
   * Waits (polling, bounded) for the pod's vmlet-run folder, links it and listens on launcher.sock in it
   * (mode 0666: the launcher runs as uid 107) for the launcher of `vmiUid` in pod `podUid` only.
   * Resolves with the link, the daemon's path of the pod's run folder. Calling it again for an open pod returns the same.
   */
  open(podUid: string, vmiUid: string): Promise<string> {
    if (!POD_UID_RE.test(podUid)) throw new VmletError('POD_UID_INVALID', `pod uid ${JSON.stringify(podUid.slice(0, 80))} is not 1-64 of [0-9a-f-]`);
    if (!VMI_UID_RE.test(vmiUid)) throw new VmletError('POD_UID_INVALID', `VMI uid ${JSON.stringify(vmiUid.slice(0, 160))} is not 1-128 of [A-Za-z0-9._-]`);
    const have = this.#pods.get(podUid);
    if (have) {
      if (have.vmiUid !== vmiUid) throw new VmletError('POD_UID_INVALID', `pod ${podUid} is open for VMI ${have.vmiUid}, not ${vmiUid}`);
      return have.ready;
    }
    const link = this.linkPath(podUid);
    const entry: Entry = {
      vmiUid,
      link,
      socket: path.join(link, POD_LAUNCHER_SOCKET),
      abort: new AbortController(),
      ready: Promise.resolve(link),
      settled: Promise.resolve(),
    };
    const work = this.#open(podUid, entry);
    entry.settled = work.then(
      () => undefined,
      () => undefined,
    );
    entry.ready = work.catch(async (err: unknown) => {
      if (this.#pods.get(podUid) === entry) {
        this.#pods.delete(podUid);
        await this.#remove(podUid).catch((e: unknown) => this.#o.logger?.warn({ err: e, podUid }, 'cleanup after a failed open failed'));
      }
      throw err;
    });
    this.#pods.set(podUid, entry);
    return entry.ready;
  }

  async #open(podUid: string, e: Entry): Promise<string> {
    const log = this.#o.logger?.child({ podUid, uid: e.vmiUid });
    const target = podRunVolumeDir(this.#o.kubeletRootDir, podUid);
    await this.#waitForDir(podUid, target, e.abort.signal);
    await mkdir(this.#linksDir, { recursive: true, mode: 0o755 }).catch((cause: NodeJS.ErrnoException) => {
      throw new VmletError('POD_RUN_DIR_FAILED', `cannot make ${this.#linksDir}`, { cause, errno: cause.code ?? 'EIO' });
    });
    // A fresh link renamed over the old one: never a moment without it, nor one to another folder.
    const tmp = path.join(this.#linksDir, `.${podUid}.tmp`);
    try {
      await unlink(tmp).catch(ignoreEnoent);
      await symlink(target, tmp);
      await rename(tmp, e.link);
    } catch (cause) {
      throw new VmletError('POD_RUN_DIR_FAILED', `cannot link ${e.link} to ${target}`, { cause, errno: errnoOf(cause) });
    }
    if (e.abort.signal.aborted) throw closedWhileOpening(podUid);
    await this.#o.server.listenExtra(e.socket, { mode: 0o666, podUid, vmiUid: e.vmiUid });
    log?.info({ socket: e.socket, runDir: target }, 'listening for the launcher of the pod');
    return e.link;
  }

  async #waitForDir(podUid: string, dir: string, signal: AbortSignal): Promise<void> {
    const now = this.#o.now ?? Date.now;
    const sleep = this.#o.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
    const timeoutMs = this.#o.waitTimeoutMs ?? 120_000;
    const deadline = now() + timeoutMs;
    for (;;) {
      if (signal.aborted) throw closedWhileOpening(podUid);
      // lstat: the kubelet makes a real folder; a symlink there is not the pod's emptyDir.
      const st = await lstat(dir).catch(() => undefined);
      if (st?.isDirectory()) return;
      if (now() >= deadline) {
        throw new VmletError('POD_RUN_DIR_TIMEOUT', `${dir} did not appear within ${timeoutMs} ms`, { details: { dir, timeoutMs } });
      }
      await sleep(this.#o.pollIntervalMs ?? 250);
    }
  }

  /** Stops listening for the pod's launcher and removes its socket and link (also a link left by an earlier daemon). */
  async close(podUid: string): Promise<void> {
    if (!POD_UID_RE.test(podUid)) throw new VmletError('POD_UID_INVALID', `pod uid ${JSON.stringify(podUid.slice(0, 80))} is not 1-64 of [0-9a-f-]`);
    const e = this.#pods.get(podUid);
    this.#pods.delete(podUid);
    e?.abort.abort();
    await e?.settled; // closeExtra must follow a pending listenExtra
    await this.#remove(podUid);
    this.#o.logger?.info({ podUid }, 'closed the launcher socket of the pod');
  }

  async #remove(podUid: string): Promise<void> {
    const link = this.linkPath(podUid);
    await this.#o.server.closeExtra(path.join(link, POD_LAUNCHER_SOCKET));
    try {
      await unlink(path.join(link, POD_LAUNCHER_SOCKET)).catch(ignoreEnoent);
      await unlink(link).catch(ignoreEnoent);
    } catch (cause) {
      throw new VmletError('POD_RUN_DIR_FAILED', `cannot remove ${link}`, { cause, errno: errnoOf(cause) });
    }
  }

  /** Closes every pod not in `livePodUids` and removes links of pods that are gone (left by an earlier daemon too); returns their uids. */
  async sweep(livePodUids: Iterable<string>): Promise<string[]> {
    const live = new Set(livePodUids);
    const names = await readdir(this.#linksDir).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return [];
      throw new VmletError('POD_RUN_DIR_FAILED', `cannot read ${this.#linksDir}`, { cause: e, errno: e.code ?? 'EIO' });
    });
    const gone = new Set([...this.#pods.keys()].filter((uid) => !live.has(uid)));
    for (const name of names) {
      if (!POD_UID_RE.test(name) || live.has(name)) continue;
      // Only our own links: anything else in the folder is left alone.
      const st = await lstat(path.join(this.#linksDir, name)).catch(() => undefined);
      if (st?.isSymbolicLink()) gone.add(name);
    }
    for (const uid of gone) await this.close(uid);
    return [...gone].sort();
  }
}

/**
 * Hands a file the daemon made in a pod's run folder (cloud-init ISO, a disk image) to QEMU's user.
 * lchown: the folder is writable by the pod, so a symlink in place of `file` is changed itself, not followed.
 */
export async function chownForPod(file: string, owner: Owner = POD_QEMU_OWNER): Promise<void> {
  try {
    await lchown(file, owner.uid, owner.gid);
  } catch (cause) {
    throw new VmletError('POD_RUN_DIR_FAILED', `cannot chown ${file} to ${owner.uid}:${owner.gid}`, { cause, errno: errnoOf(cause) });
  }
}

function ignoreEnoent(e: NodeJS.ErrnoException): void {
  if (e.code !== 'ENOENT') throw e;
}

function errnoOf(e: unknown): string {
  return (e as NodeJS.ErrnoException | undefined)?.code ?? 'EIO';
}

function closedWhileOpening(podUid: string): VmletError {
  return new VmletError('POD_RUN_DIR_FAILED', `pod ${podUid} was closed while its launcher socket was being opened`);
}
