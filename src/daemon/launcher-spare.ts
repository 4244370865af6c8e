// One spare vmlet-launch kept ready in a cgroup of its own (v1): a start takes it, renames its group to the VM's and hands it its argv, so that the cgroup join (an RCU grace period, 5–13 ms) is paid before the request comes, not during it.
import fs from 'node:fs/promises';
import { mkdirSync, openSync, writeSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { Logger } from 'pino';
import { closeFd, O_RDONLY } from '../sys/libc.js';
import { pidAlive, spawnProcess, type ExitInfo } from '../sys/spawn.js';
import { pipe } from '../sys/spawn-piped.js';
import { launcherArgv, RUN_FILES, type SpawnedLauncher, type SpawnLauncherOptions } from '../qemu/launch.js';
import type { VmCgroups } from './vm-cgroup.js';

/** Group names of spares: `.spare-<daemon pid>-<n>`; a VMI's uid never starts with a dot, so no VM group is one. */
export const SPARE_PREFIX = '.spare-';
const SPARE_RE = /^\.spare-(\d+)-\d+$/;
/** How often a refill that waits for the starts under way looks again. */
const QUIET_POLL_MS = 10;

export interface LauncherSpareOptions {
  /** The VM groups; spares need a v1 (or hybrid) layout, whose groups can be renamed. */
  cgroups: VmCgroups;
  launcherBinary: string;
  /** The daemon's run dir: the spares' own log goes there. */
  runDir: string;
  log: Logger;
  /** Delay before the next spare is made once one was taken (default 20 ms). */
  refillDelayMs?: number;
  /**
   * Whether no start is under way. The next spare waits for it: its group join holds the kernel's cgroup lock
   * through an RCU grace period, and a start's fork of QEMU (or QEMU's own threads) waited behind it for up to 11 ms.
   */
  quiet?: () => boolean;
  /** How long a refill waits for `quiet` at most (default 2 s): a start that waits long (an image import) does not keep spares away. */
  quietWaitMaxMs?: number;
  /** Spares in a row that fail before READY; past it no more are made (default 3). */
  maxFailures?: number;
}

interface Spare {
  name: string;
  pid: number;
  exited: Promise<ExitInfo>;
  /** The write end of its stdin: the handover, or EOF to let it go. */
  stdin: number;
  out: net.Socket;
  ready: boolean;
}

/** True when this layout's VM groups can be renamed (v1 and hybrid; cgroup2 has no rename). */
export function sparesPossible(cgroups: VmCgroups): boolean {
  return cgroups.mode !== 'v2';
}

export class LauncherSpare {
  #spare: Spare | undefined;
  #seq = 0;
  #failures = 0;
  #closed = false;
  #timer: NodeJS.Timeout | undefined;
  readonly #log: Logger;

  constructor(private readonly o: LauncherSpareOptions) {
    this.#log = o.log;
  }

  /** Removes the groups of spares whose daemon is gone, then makes the first spare. */
  async start(): Promise<void> {
    for (const name of await this.o.cgroups.listNames()) {
      const m = SPARE_RE.exec(name);
      if (!m || Number(m[1]) === process.pid || pidAlive(Number(m[1]))) continue;
      await this.o.cgroups.remove(name, this.#log).catch((e: unknown) => this.#log.warn({ err: e, group: name }, 'could not remove a spare launcher group'));
    }
    this.#make();
  }

  /** The ready spare, renamed into `uid`'s group and handed `spawn`'s argv; undefined when none is ready (spawn one as before). */
  async take(uid: string, spawn: SpawnLauncherOptions): Promise<SpawnedLauncher | undefined> {
    const s = this.#spare;
    if (!s?.ready || this.#closed || spawn.env !== undefined || (spawn.cgroups?.length ?? 0) > 0) return undefined;
    this.#spare = undefined;
    const from = this.o.cgroups.manager(s.name).paths().dirs;
    const to = this.o.cgroups.manager(uid).paths().dirs;
    try {
      // Handed over first: its exec and HELLO overlap the renames. It forks QEMU only once the argv comes, which waits
      // for the group's limits, written under the VM's name, so after the renames.
      mkdirSync(spawn.runDir, { recursive: true, mode: 0o700 });
      const logFile = spawn.logFile ?? path.join(spawn.runDir, RUN_FILES.launcherLog);
      const argv = [logFile, spawn.launcherBinary, ...launcherArgv({ ...spawn, cgroups: [] })];
      const payload = Buffer.from(argv.map((a) => `${a}\0`).join(''));
      if (writeSync(s.stdin, payload) !== payload.length) throw new Error('short write to the spare launcher');
    } catch (e) {
      this.#log.warn({ err: e, uid, spare: s.pid }, 'could not hand a spare launcher over; spawning one');
      void this.#discard(s);
      this.#refillSoon();
      return undefined;
    }
    closeFd(s.stdin);
    s.out.destroy();
    this.#refillSoon();
    // Renames take the kernel's cgroup lock, which a join elsewhere may hold through a grace period: off the event loop.
    const renamed = await Promise.allSettled(from.map((d, i) => fs.rename(d, to[i]!)));
    const failed = renamed.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      // It must not run QEMU outside the VM's group: it goes, and the start spawns a launcher as before.
      this.#log.warn({ err: failed.reason, uid, spare: s.pid }, "could not rename a spare launcher's group; spawning one");
      killQuietly(s.pid);
      await exitedWithin(s, 2000);
      await Promise.all(renamed.map((r, i) => (r.status === 'fulfilled' ? fs.rename(to[i]!, from[i]!).catch(() => undefined) : undefined)));
      await this.o.cgroups.remove(s.name, this.#log).catch(() => undefined);
      return undefined;
    }
    return { pid: s.pid, exited: s.exited };
  }

  /** Lets the spare go (EOF on its stdin) and removes its group once it has exited. */
  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#timer);
    const s = this.#spare;
    this.#spare = undefined;
    if (s) await this.#discard(s);
  }

  #refillSoon(): void {
    const since = performance.now();
    const tick = (delayMs: number): void => {
      clearTimeout(this.#timer);
      this.#timer = setTimeout(() => {
        if (this.o.quiet?.() === false && performance.now() - since < (this.o.quietWaitMaxMs ?? 2_000)) tick(QUIET_POLL_MS);
        else this.#make();
      }, delayMs);
      this.#timer.unref();
    };
    tick(this.o.refillDelayMs ?? 20);
  }

  #make(): void {
    if (this.#closed || this.#spare || this.#failures >= (this.o.maxFailures ?? 3)) return;
    const name = `${SPARE_PREFIX}${process.pid}-${this.#seq++}`;
    const cg = this.o.cgroups.manager(name);
    void cg
      .create()
      .then(() => this.#spawn(name, cg.paths().dirs))
      .catch((e: unknown) => {
        this.#failed(name, e);
      });
  }

  #spawn(name: string, dirs: readonly string[]): void {
    if (this.#closed) {
      void this.o.cgroups.remove(name).catch(() => undefined);
      return;
    }
    const [inR, inW] = pipe();
    const [outR, outW] = pipe();
    let logFd: number | undefined;
    try {
      logFd = openLog(path.join(this.o.runDir, 'spare-launcher.log'));
      const argv = [this.o.launcherBinary, '--spare', 'yes', ...dirs.flatMap((d) => ['--cgroup', d])];
      const child = spawnProcess({
        file: this.o.launcherBinary,
        argv,
        env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
        fds: [
          { op: 'dup2', from: inR, to: 0 },
          { op: 'dup2', from: outW, to: 1 },
          logFd === undefined ? { op: 'open', fd: 2, path: '/dev/null', flags: O_RDONLY } : { op: 'dup2', from: logFd, to: 2 },
        ],
        setsid: true,
        closeFrom3: true,
      });
      const out = new net.Socket({ fd: outR, readable: true, writable: false });
      const s: Spare = { name, pid: child.pid, exited: child.exited, stdin: inW, out, ready: false };
      this.#watch(s);
    } catch (e) {
      closeFd(inW);
      closeFd(outR);
      this.#failed(name, e);
    } finally {
      closeFd(inR);
      closeFd(outW);
      if (logFd !== undefined) closeFd(logFd);
    }
  }

  #watch(s: Spare): void {
    let said = '';
    s.out.on('error', () => undefined);
    s.out.on('data', (b: Buffer) => {
      said += b.toString('utf8');
      if (!s.ready && said.startsWith('READY\n')) {
        s.ready = true;
        this.#failures = 0;
        if (this.#closed) void this.#discard(s);
        else this.#spare = s;
      }
    });
    void s.exited.then((x) => {
      if (this.#spare === s) this.#spare = undefined;
      if (s.ready) return; // taken (the launcher's exit is its supervisor's), or let go
      this.#failed(s.name, new Error(`exited before READY (${x.signal ?? `code ${x.code}`}): ${said.trim() || 'no message'}`), s);
    });
  }

  #failed(name: string, e: unknown, s?: Spare): void {
    this.#failures++;
    const last = this.#failures >= (this.o.maxFailures ?? 3);
    this.#log.warn({ err: e, group: name }, last ? 'spare launchers keep failing; starts spawn their launcher instead' : 'a spare launcher failed');
    if (s) {
      closeFd(s.stdin);
      s.out.destroy();
    }
    void this.o.cgroups.remove(name).catch(() => undefined);
    if (!last) this.#refillSoon();
  }

  /** EOF on its stdin ends a spare; its group goes once it has exited (bounded: a stuck one is killed with its group). */
  async #discard(s: Spare): Promise<void> {
    s.ready = true; // its exit is expected now
    closeFd(s.stdin);
    s.out.destroy();
    await exitedWithin(s, 2000);
    await this.o.cgroups.remove(s.name, this.#log).catch(() => undefined);
  }
}

/** Its exit, or `ms` passed; the timer also keeps the loop alive meanwhile (the reaper's SIGCHLD handler alone does not). */
async function exitedWithin(s: Spare, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([s.exited, new Promise((r) => (timer = setTimeout(r, ms)))]);
  clearTimeout(timer);
}

function killQuietly(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    /* gone already */
  }
}

function openLog(file: string): number | undefined {
  try {
    return openSync(file, 'a', 0o640);
  } catch {
    return undefined;
  }
}
