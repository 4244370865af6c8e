// Runs vmlet-launch against a real LauncherServer and a real (TCG, paused) QEMU: handover of argv and fds, exit reporting, daemon restarts, kill -9, sandbox joins and footprint.
import { spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, readlinkSync, rmSync, rmdirSync, statSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { spawnLauncher, readRunDir, isLiveProcessFor, exitStatusCode, processStartTime, type SpawnedLauncher } from '../../src/qemu/launch.js';
import { LauncherServer, type HelloDecision, type LauncherHello } from '../../src/qemu/launcher-server.js';
import { which } from '../support/which.js';

const nativeDir = fileURLToPath(new URL('../../native/', import.meta.url));
const launcherBinary = path.join(nativeDir, 'build', 'vmlet-launch');

const qemuBinary = which('qemu-system-x86_64');

function skipReason(): string | false {
  if (process.getuid?.() !== 0) return 'needs root (netns, cgroups, setns)';
  if (!existsSync(launcherBinary)) {
    if (!which('cc') || !which('make')) return 'vmlet-launch is not built and cc/make are missing';
    const r = spawnSync('make', ['-C', nativeDir], { stdio: 'inherit' });
    if (r.status !== 0) return 'make -C native failed';
  }
  if (!qemuBinary) return 'qemu-system-x86_64 is not installed';
  return false;
}
const skip = skipReason();

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function waitUntil(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 10000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

function qemuArgv(uid: string, runDir: string, extra: string[] = []): string[] {
  return [
    qemuBinary ?? '/usr/bin/qemu-system-x86_64',
    '-accel',
    'tcg',
    '-S',
    '-nodefaults',
    '-display',
    'none',
    '-machine',
    'none',
    '-uuid',
    uid,
    '-name',
    `guest=vmi-${uid}`,
    '-qmp',
    `unix:${runDir}/qmp.sock,server=on,wait=off`,
    ...extra,
  ];
}

/** Minimal QMP client for the test: one command at a time. */
async function qmp(sockPath: string, commands: Array<{ execute: string; arguments?: Record<string, unknown> }>): Promise<unknown[]> {
  let sock: net.Socket | undefined;
  for (let i = 0; !sock; i++) {
    // QEMU creates its QMP socket a moment after exec.
    sock = await new Promise<net.Socket | undefined>((resolve) => {
      const s = net.connect(sockPath, () => resolve(s));
      s.once('error', () => resolve(undefined));
    });
    if (!sock) {
      if (i > 100) throw new Error(`cannot connect to QMP at ${sockPath}`);
      await sleep(50);
    }
  }
  const lines: string[] = [];
  let waiter: (() => void) | undefined;
  let buf = '';
  sock.on('data', (c: Buffer) => {
    buf += c.toString();
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      lines.push(buf.slice(0, nl));
      buf = buf.slice(nl + 1);
    }
    waiter?.();
  });
  const closed = new Promise<void>((r) =>
    sock.on('close', () => {
      waiter?.();
      r();
    }),
  );
  sock.on('error', () => undefined);
  const conn = sock;
  const next = async (): Promise<Record<string, unknown>> => {
    for (;;) {
      const l = lines.shift();
      if (l !== undefined) {
        const m = JSON.parse(l) as Record<string, unknown>;
        if (!('event' in m)) return m;
        continue;
      }
      if (conn.destroyed) throw new Error('QMP closed');
      await new Promise<void>((r) => {
        waiter = r;
      });
    }
  };
  await next(); // greeting
  const out: unknown[] = [];
  for (const c of [{ execute: 'qmp_capabilities' }, ...commands]) {
    sock.write(JSON.stringify(c) + '\n');
    const reply = await next();
    if (c.execute !== 'qmp_capabilities') out.push(reply.return ?? reply);
  }
  sock.end();
  await closed;
  return out;
}

function vmRssKiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

function fdTargets(pid: number): Map<number, string> {
  const out = new Map<number, string>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      out.set(Number(fd), readlinkSync(`/proc/${pid}/fd/${fd}`));
    } catch {
      /* closed meanwhile */
    }
  }
  return out;
}

type Decide = (h: LauncherHello) => HelloDecision;

async function startServer(socketPath: string, decide: Map<string, Decide>): Promise<LauncherServer> {
  const server = new LauncherServer({
    socketPath,
    onHello: (h) => decide.get(h.uid)?.(h) ?? { action: 'reject', reason: 'test has no decision' },
  });
  await server.listen();
  return server;
}

t.test('vmlet-launch with real QEMU', { skip }, async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'vmlet-launch-'));
  const socketPath = path.join(dir, 'launcher.sock');
  const decide = new Map<string, Decide>();
  let server = await startServer(socketPath, decide);
  const pids: number[] = [];
  // Launchers are unref'd and the server is closed at times: keep the loop alive while we wait on them.
  const keepAlive = setInterval(() => undefined, 1000);
  t.teardown(async () => {
    clearInterval(keepAlive);
    await server.close();
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    rmSync(dir, { recursive: true, force: true });
  });

  /** Attaches a fresh uid, spawns its launcher and waits for STARTED. */
  async function launch(opts: { extra?: string[]; fds?: number[]; netns?: string; cgroups?: string[]; linger?: number } = {}) {
    const uid = randomUUID();
    const runDir = path.join(dir, uid);
    decide.set(uid, (h) =>
      h.state.kind === 'new' ? { action: 'launch', argv: qemuArgv(uid, runDir, opts.extra), fds: opts.fds ?? [] } : { action: 'accept' },
    );
    const link = server.attach(uid);
    const started = link.waitFor('started', 15000);
    const launcher: SpawnedLauncher = await spawnLauncher({
      launcherBinary,
      uid,
      socket: socketPath,
      runDir,
      lingerSeconds: opts.linger ?? 10,
      ...(opts.netns !== undefined ? { netns: opts.netns } : {}),
      ...(opts.cgroups !== undefined ? { cgroups: opts.cgroups } : {}),
    });
    pids.push(launcher.pid);
    const [qemuPid] = await started;
    pids.push(qemuPid);
    return { uid, runDir, link, launcher, qemuPid };
  }

  await t.test('hands over argv and fds, reports STARTED and EXITED, writes the run dir', async (t) => {
    const fileA = path.join(dir, 'fd-a');
    const fileB = path.join(dir, 'fd-b');
    const fa = openSync(fileA, 'w');
    const fb = openSync(fileB, 'w');
    const { uid, runDir, link, launcher, qemuPid } = await launch({
      extra: ['-add-fd', 'fd=3,set=1,opaque=a', '-add-fd', 'fd=4,set=2,opaque=b'],
      fds: [fa, fb],
    });
    closeSync(fa);
    closeSync(fb);
    t.ok(qemuPid > 0, `QEMU pid ${qemuPid}`);
    t.ok(await isLiveProcessFor(qemuPid, uid), 'QEMU cmdline holds the uid');
    t.ok(await isLiveProcessFor(launcher.pid, uid), 'launcher cmdline holds the uid');
    t.equal(link.state?.kind, 'running');
    const startOf = (pid: number): number | undefined => processStartTime(readFileSync(`/proc/${pid}/stat`, 'utf8'));
    t.same(
      await readRunDir(runDir),
      { launcherPid: launcher.pid, launcherStart: startOf(launcher.pid), qemuPid, qemuStart: startOf(qemuPid) },
      'the run dir names both processes by pid and start time',
    );
    t.ok(await isLiveProcessFor(qemuPid, uid, '/proc', startOf(qemuPid)), 'QEMU by pid and start time');

    // fd 3 and 4 in QEMU's argv are the files in the order they were passed.
    const [fdsets] = await qmp(path.join(runDir, 'qmp.sock'), [{ execute: 'query-fdsets' }]);
    const qfds = fdTargets(qemuPid);
    const sets = fdsets as Array<{ 'fdset-id': number; fds: Array<{ fd: number; opaque?: string }> }>;
    const target = (set: number): string | undefined => {
      const fd = sets.find((s) => s['fdset-id'] === set)?.fds[0]?.fd;
      return fd === undefined ? undefined : qfds.get(fd);
    };
    t.equal(target(1), fileA, 'fdset 1 (fd=3) is the first passed fd');
    t.equal(target(2), fileB, 'fdset 2 (fd=4) is the second passed fd');
    t.equal(qfds.get(0), '/dev/null', 'stdin is /dev/null');
    t.equal(qfds.get(2), path.join(runDir, 'qemu.log'), 'stderr goes to qemu.log');
    const launcherSockets = [...fdTargets(launcher.pid).values()].filter((x) => x.startsWith('socket:'));
    const leaked = [...qfds.values()].filter((x) => launcherSockets.includes(x));
    t.same(leaked, [], "the launcher's daemon connection does not leak into QEMU");

    const rss = vmRssKiB(launcher.pid);
    t.comment(`vmlet-launch VmRSS: ${rss} kB (QEMU: ${vmRssKiB(qemuPid)} kB)`);
    t.ok(rss < 1024, `launcher RSS ${rss} kB < 1 MiB`);

    const exited = link.waitFor('exited', 10000);
    await qmp(path.join(runDir, 'qmp.sock'), [{ execute: 'quit' }]);
    const [status, pid] = await exited;
    t.same(status, { kind: 'exit', code: 0 });
    t.equal(pid, qemuPid);
    t.same(await launcher.exited, { code: 0, signal: null }, 'launcher exits with QEMU status');
    t.same((await readRunDir(runDir)).exitStatus, { kind: 'exit', code: 0 }, 'exit-status file');
    t.notOk(await isLiveProcessFor(qemuPid, uid), 'QEMU is gone');
    server.detach(uid);
  });

  await t.test('QEMU killed by a signal: EXITED signal=9, launcher exits 137', async (t) => {
    const { runDir, link, launcher, qemuPid } = await launch();
    const exited = link.waitFor('exited', 10000);
    process.kill(qemuPid, 'SIGKILL');
    const [status] = await exited;
    t.same(status, { kind: 'signal', signal: 9 });
    t.same(await launcher.exited, { code: 137, signal: null });
    t.same((await readRunDir(runDir)).exitStatus, { kind: 'signal', signal: 9 });
  });

  await t.test('SIGTERM to the launcher is forwarded to QEMU', async (t) => {
    const { uid, link, launcher, qemuPid } = await launch();
    const exited = link.waitFor('exited', 10000);
    process.kill(launcher.pid, 'SIGTERM');
    const [status] = await exited;
    t.comment(`QEMU status after SIGTERM: ${JSON.stringify(status)}`);
    const code = exitStatusCode(status);
    t.same(await launcher.exited, { code, signal: null }, 'launcher exit code mirrors QEMU');
    t.notOk(await isLiveProcessFor(qemuPid, uid));
  });

  await t.test('kill -9 of the launcher takes QEMU with it; the server sees the disconnect', async (t) => {
    const { uid, link, launcher, qemuPid } = await launch();
    const disconnected = link.waitFor('disconnected', 10000);
    process.kill(launcher.pid, 'SIGKILL');
    await disconnected;
    t.same(await launcher.exited, { code: null, signal: 'SIGKILL' });
    await waitUntil('QEMU to die', async () => !(await isLiveProcessFor(qemuPid, uid)));
    t.pass('QEMU died with its launcher (PDEATHSIG)');
  });

  await t.test('daemon restart while QEMU runs: launcher reconnects with RUNNING and the same pid', async (t) => {
    const { uid, runDir, link, launcher, qemuPid } = await launch();
    const gone = link.waitFor('disconnected', 5000);
    await server.close();
    await gone;
    await sleep(700);
    t.ok(await isLiveProcessFor(qemuPid, uid), 'QEMU survives the daemon');
    t.ok(await isLiveProcessFor(launcher.pid, uid), 'launcher survives the daemon');
    server = await startServer(socketPath, decide);
    const link2 = server.attach(uid);
    const [hello] = await link2.waitFor('hello', 10000);
    t.same(hello.state, { kind: 'running', qemuPid }, 'HELLO RUNNING with the same pid');
    t.equal(hello.launcherPid, launcher.pid);
    const exited = link2.waitFor('exited', 10000);
    await qmp(path.join(runDir, 'qmp.sock'), [{ execute: 'quit' }]);
    t.same((await exited)[0], { kind: 'exit', code: 0 });
    t.same(await launcher.exited, { code: 0, signal: null });
  });

  await t.test('QEMU exits while the daemon is down: reported on reconnect', async (t) => {
    const { uid, runDir, link, launcher, qemuPid } = await launch();
    const gone = link.waitFor('disconnected', 5000);
    await server.close();
    await gone;
    process.kill(qemuPid, 'SIGKILL');
    await waitUntil('exit-status file', async () => (await readRunDir(runDir)).exitStatus !== undefined);
    t.same((await readRunDir(runDir)).exitStatus, { kind: 'signal', signal: 9 });
    t.ok(await isLiveProcessFor(launcher.pid, uid), 'launcher lingers to report');
    server = await startServer(socketPath, decide);
    const link2 = server.attach(uid);
    const exited = link2.waitFor('exited', 10000);
    const [status, pid] = await exited;
    t.same(status, { kind: 'signal', signal: 9 });
    t.equal(pid, qemuPid);
    t.same(link2.state, { kind: 'exited', qemuPid, status });
    t.same(await launcher.exited, { code: 137, signal: null });
  });

  await t.test('nobody to report to: the launcher gives up after --linger', async (t) => {
    const { runDir, link, launcher, qemuPid } = await launch({ linger: 1 });
    const gone = link.waitFor('disconnected', 5000);
    await server.close();
    await gone;
    const t0 = Date.now();
    process.kill(qemuPid, 'SIGKILL');
    t.same(await launcher.exited, { code: 137, signal: null });
    const waited = Date.now() - t0;
    t.ok(waited >= 900 && waited < 5000, `exited after ${waited} ms`);
    t.same((await readRunDir(runDir)).exitStatus, { kind: 'signal', signal: 9 });
    server = await startServer(socketPath, decide);
  });

  await t.test('joins a network namespace', async (t) => {
    if (!which('ip')) {
      t.plan(0, 'ip(8) is missing');
      return;
    }
    const name = `vmlet-test-${process.pid}`;
    const add = spawnSync('ip', ['netns', 'add', name]);
    if (add.status !== 0) {
      t.plan(0, `ip netns add failed: ${add.stderr.toString().trim()}`);
      return;
    }
    t.teardown(() => {
      spawnSync('ip', ['netns', 'del', name]);
    });
    const nsPath = `/run/netns/${name}`;
    const { link, launcher, qemuPid } = await launch({ netns: nsPath });
    t.equal(statSync(`/proc/${qemuPid}/ns/net`).ino, statSync(nsPath).ino, 'QEMU is in the netns');
    t.equal(statSync(`/proc/${launcher.pid}/ns/net`).ino, statSync(nsPath).ino, 'the launcher is in the netns');
    t.not(statSync('/proc/self/ns/net').ino, statSync(nsPath).ino, 'and the test is not');
    const exited = link.waitFor('exited', 10000);
    process.kill(qemuPid, 'SIGTERM');
    await exited;
    await launcher.exited;
  });

  await t.test('joins cgroups (v1 controller and, if mounted, the v2 hierarchy)', async (t) => {
    const name = `vmlet-test-${process.pid}`;
    const candidates = ['/sys/fs/cgroup/pids', '/sys/fs/cgroup/unified', '/sys/fs/cgroup'].filter((root) => existsSync(path.join(root, 'cgroup.procs')));
    const roots = candidates.includes('/sys/fs/cgroup/pids') ? candidates.filter((r) => r !== '/sys/fs/cgroup') : candidates;
    if (roots.length === 0) {
      t.plan(0, 'no writable cgroup hierarchy found');
      return;
    }
    const dirs: string[] = [];
    for (const root of roots) {
      const d = path.join(root, name);
      try {
        mkdirSync(d);
        dirs.push(d);
      } catch (e) {
        t.comment(`cannot create ${d}: ${(e as Error).message}`);
      }
    }
    if (dirs.length === 0) {
      t.plan(0, 'cannot create test cgroups');
      return;
    }
    t.teardown(async () => {
      for (const d of dirs) {
        await waitUntil(`${d} to empty`, () => readFileSync(path.join(d, 'cgroup.procs'), 'utf8').trim() === '', 5000).catch(() => undefined);
        try {
          rmdirSync(d);
        } catch {
          /* still busy */
        }
      }
    });
    const { link, launcher, qemuPid } = await launch({ cgroups: dirs });
    for (const d of dirs) {
      const procs = readFileSync(path.join(d, 'cgroup.procs'), 'utf8').trim().split('\n').map(Number);
      t.ok(procs.includes(qemuPid), `QEMU ${qemuPid} is in ${d}`);
      t.ok(procs.includes(launcher.pid), `launcher ${launcher.pid} is in ${d}`);
    }
    const exited = link.waitFor('exited', 10000);
    process.kill(qemuPid, 'SIGTERM');
    await exited;
    await launcher.exited;
  });
});
