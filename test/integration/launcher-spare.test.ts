// The spare launcher on real v1 cgroups with the real vmlet-launch: it waits joined in a group of its own, a take renames that group to the VM's and the handed-over launcher says HELLO as that VM; refill, close, leftovers of a dead daemon, a launcher that cannot start, and the spare's own refusals.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmdirSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import t from 'tap';
import { detectCgroupLayout, type CgroupLayout } from '../../src/cgroups/index.js';
import { LauncherSpare, SPARE_PREFIX, sparesPossible } from '../../src/daemon/launcher-spare.js';
import { VmCgroups } from '../../src/daemon/vm-cgroup.js';
import { which } from '../support/which.js';

const nativeDir = fileURLToPath(new URL('../../native/', import.meta.url));
const launcherBinary = path.join(nativeDir, 'build', 'vmlet-launch');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

let layout: CgroupLayout | undefined;
async function skipReason(): Promise<string | false> {
  if (process.getuid?.() !== 0) return 'needs root to make cgroups';
  if (!existsSync(launcherBinary)) {
    if (!which('cc') || !which('make')) return 'vmlet-launch is not built and cc/make are missing';
    if (spawnSync('make', ['-C', nativeDir], { stdio: 'inherit' }).status !== 0) return 'make -C native failed';
  }
  try {
    layout = await detectCgroupLayout({ root: '/sys/fs/cgroup', mountinfoPath: '/proc/self/mountinfo' });
  } catch (e) {
    return `no cgroup mounts: ${(e as Error).message}`;
  }
  if (layout.mode === 'v2') return 'spares need v1 or hybrid hierarchies (cgroup2 cannot rename a group); this host is pure v2';
  if (layout.hierarchies['memory'] === undefined) return 'needs the v1 memory hierarchy';
  return false;
}
const skip = await skipReason();

const parent = `vmlet-test-spare-${process.pid}`;
const dir = mkdtempSync(path.join(tmpdir(), 'vmlet-spare-'));
const log = pino({ level: 'silent' });
const memDir = (...rest: string[]): string => path.join(layout!.hierarchies['memory']!, parent, ...rest);
const procsOf = (group: string): number[] => readFileSync(memDir(group, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
const groups = (): string[] =>
  existsSync(memDir())
    ? readdirSync(memDir(), { withFileTypes: true })
        .filter((e) => e.isDirectory())
        .map((e) => e.name)
    : [];
const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

async function waitFor<T>(what: string, f: () => T | undefined | false, ms = 10_000): Promise<T> {
  const until = Date.now() + ms;
  for (;;) {
    const v = f();
    if (v) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

t.teardown(async () => {
  rmSync(dir, { recursive: true, force: true });
  if (!layout || layout.mode === 'v2') return;
  const cg = new VmCgroups({ layout, parent });
  for (const n of await cg.listNames()) await cg.remove(n).catch(() => undefined);
  for (const h of new Set(Object.values(layout.hierarchies)))
    try {
      rmdirSync(path.join(h, parent));
    } catch {
      /* not made, or busy */
    }
});

t.test('spares are possible on v1 and hybrid layouts only', async (t) => {
  const of = (mode: CgroupLayout['mode']): VmCgroups => new VmCgroups({ layout: { mode, root: '/x', unified: '/x', hierarchies: {} }, parent: 'p' });
  t.equal(sparesPossible(of('v1')), true);
  t.equal(sparesPossible(of('hybrid')), true);
  t.equal(sparesPossible(of('v2')), false, 'cgroup2 has no rename');
});

t.test('a spare waits joined, and a take hands it to a VM', { skip }, async (t) => {
  const cgroups = new VmCgroups({ layout: layout!, parent });
  // A dead daemon's spare group is removed at start.
  const dead = `${SPARE_PREFIX}999999999-0`;
  await cgroups.manager(dead).create();
  const spare = new LauncherSpare({ cgroups, launcherBinary, runDir: dir, log });
  t.teardown(() => spare.close());
  await spare.start();
  t.notOk(existsSync(memDir(dead)), "a dead daemon's spare group is removed");

  const name = await waitFor('the spare to join its group', () =>
    groups().find((n) => n.startsWith(`${SPARE_PREFIX}${process.pid}-`) && procsOf(n).length === 1),
  );
  const pid = procsOf(name)[0]!;
  t.match(readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' '), /vmlet-launch --spare yes --cgroup /, 'the spare runs vmlet-launch --spare');
  t.same(await cgroups.listUids(), [], 'listUids leaves spare groups out (no stray-group removal of them)');

  const uid = 'u-0001';
  const socket = path.join(dir, 'launcher.sock');
  const hello = new Promise<string>((resolve) => {
    const srv = net.createServer((c) => {
      c.once('data', (b) => {
        resolve(b.toString('utf8').split('\n')[0] ?? '');
        c.end('REJECT test\n');
        srv.close();
      });
    });
    srv.listen(socket);
  });
  await waitFor('the test socket', () => existsSync(socket));
  const runDir = path.join(dir, 'vms', uid);
  let taken: Awaited<ReturnType<LauncherSpare['take']>>;
  for (let i = 0; i < 250 && !taken; i++) {
    taken = await spare.take(uid, { launcherBinary, uid, socket, runDir, lingerSeconds: 5 });
    if (!taken) await sleep(20); // its READY is still on the way
  }
  t.ok(taken, 'a ready spare is taken');
  t.equal(taken?.pid, pid, 'the same process');
  t.notOk(existsSync(memDir(name)), "the spare's group is gone…");
  t.same(procsOf(uid), [pid], "…renamed to the VM's, with the launcher in it (no join on the start's path)");
  t.equal(await hello, `HELLO 1 ${uid} ${pid} NEW`, 'after the handover it runs as the VM launcher and says HELLO');
  // A timer keeps the loop alive meanwhile: the reaper's SIGCHLD handler alone does not.
  let timer: NodeJS.Timeout | undefined;
  const exit = await Promise.race([taken!.exited, new Promise<{ code: number }>((r) => (timer = setTimeout(() => r({ code: -1 }), 10_000)))]);
  clearTimeout(timer);
  t.equal(exit.code, 122, 'a rejected launcher exits as vmlet-launch does (EXIT_REJECTED)');
  t.match(readFileSync(path.join(runDir, 'launcher.log'), 'utf8'), /rejected/, "its log is the VM's launcher.log");
  await cgroups.remove(uid);

  await waitFor('the next spare', () => groups().find((n) => n !== name && n.startsWith(SPARE_PREFIX) && procsOf(n).length === 1));
  t.pass('a new spare is made after a take');

  // A group that cannot be renamed (the VM's name is taken in one hierarchy): the handed-over spare goes, nothing moves.
  const clash = groups().find((n) => n.startsWith(SPARE_PREFIX))!;
  const clashPid = procsOf(clash)[0]!;
  mkdirSync(memDir('u-0005'));
  t.equal(await spare.take('u-0005', { launcherBinary, uid: 'u-0005', socket, runDir }), undefined, 'a take whose rename fails gives no launcher');
  t.notOk(alive(clashPid), 'the spare it had handed over is killed (it never runs QEMU outside the VM group)');
  t.notOk(existsSync(memDir(clash)), 'its group is removed');
  t.same(procsOf('u-0005'), [], "the VM's existing group is left as it was");
  const cpuDir = (g: string): string => path.join(layout!.hierarchies['cpu'] ?? layout!.hierarchies['memory']!, parent, g);
  t.notOk(existsSync(cpuDir('u-0005')), 'the renames that had succeeded are undone');
  rmdirSync(memDir('u-0005'));
  await waitFor('a spare after the failed take', () => groups().find((n) => n !== clash && n.startsWith(SPARE_PREFIX) && procsOf(n).length === 1));

  const again = groups().find((n) => n.startsWith(SPARE_PREFIX))!;
  const againPid = procsOf(again)[0]!;
  t.equal(
    await spare.take('u-0002', { launcherBinary, uid: 'u-0002', socket, runDir, env: { PATH: '/bin' } }),
    undefined,
    'a launcher with an environment of its own is spawned, not taken',
  );
  await spare.close();
  t.notOk(alive(againPid), 'close lets the spare go');
  t.notOk(existsSync(memDir(again)), 'and removes its group');
  t.equal(await spare.take('u-0003', { launcherBinary, uid: 'u-0003', socket, runDir }), undefined, 'nothing is taken after close');
});

t.test('the next spare waits until no start is under way (bounded)', { skip }, async (t) => {
  const cgroups = new VmCgroups({ layout: layout!, parent });
  let busy = true;
  const spare = new LauncherSpare({ cgroups, launcherBinary, runDir: dir, log, refillDelayMs: 0, quiet: () => !busy, quietWaitMaxMs: 60_000 });
  t.teardown(() => spare.close());
  await spare.start(); // the first one does not wait: no start can have taken one yet
  const mine = (): string[] => groups().filter((n) => n.startsWith(`${SPARE_PREFIX}${process.pid}-`) && procsOf(n).length === 1);
  await waitFor('the first spare', () => mine().length === 1);
  const runDir = path.join(dir, 'vms', 'u-0006');
  let taken: Awaited<ReturnType<LauncherSpare['take']>>;
  for (let i = 0; i < 250 && !taken; i++) {
    taken = await spare.take('u-0006', { launcherBinary, uid: 'u-0006', socket: path.join(dir, 'none.sock'), runDir, lingerSeconds: 1 });
    if (!taken) await sleep(20);
  }
  t.ok(taken, 'taken');
  await sleep(300);
  t.same(
    groups().filter((n) => n.startsWith(SPARE_PREFIX)),
    [],
    "while a start is under way no spare is made (its group join would hold up that start's forks)",
  );
  busy = false;
  await waitFor('the next spare once quiet', () => mine().length === 1);
  t.pass('made once no start is under way');
  process.kill(taken!.pid, 'SIGKILL');
  await cgroups.remove('u-0006').catch(() => undefined);

  // A start that never ends (an image import) keeps spares away for quietWaitMaxMs at most.
  const capped = new LauncherSpare({ cgroups, launcherBinary, runDir: dir, log, refillDelayMs: 0, quiet: () => false, quietWaitMaxMs: 200 });
  t.teardown(() => capped.close());
  await spare.close();
  await capped.start();
  await waitFor('a spare of the second', () => mine().length === 1);
  let second: Awaited<ReturnType<LauncherSpare['take']>>;
  for (let i = 0; i < 250 && !second; i++) {
    second = await capped.take('u-0007', { launcherBinary, uid: 'u-0007', socket: path.join(dir, 'none.sock'), runDir, lingerSeconds: 1 });
    if (!second) await sleep(20);
  }
  t.ok(second, 'taken');
  await waitFor('a spare despite a start that never ends', () => mine().length === 1);
  t.pass('made after the bound');
  process.kill(second!.pid, 'SIGKILL');
  await cgroups.remove('u-0007').catch(() => undefined);
});

t.test('a launcher that cannot start: spares stop after three failures, starts spawn as before', { skip }, async (t) => {
  const cgroups = new VmCgroups({ layout: layout!, parent });
  const warnings: string[] = [];
  const logger = pino({ level: 'warn' }, { write: (s: string) => warnings.push((JSON.parse(s) as { msg: string }).msg) });
  const spare = new LauncherSpare({ cgroups, launcherBinary: path.join(dir, 'no-such-launcher'), runDir: dir, log: logger });
  t.teardown(() => spare.close());
  await spare.start();
  await waitFor('three failures', () => warnings.some((w) => /keep failing/.test(w)));
  t.equal(warnings.filter((w) => /spare launcher/.test(w)).length, 3, 'three warnings, the last says spares stop');
  await sleep(300);
  t.equal(warnings.length, 3, 'no more tries');
  t.same(
    groups().filter((n) => n.startsWith(SPARE_PREFIX)),
    [],
    'no spare group is left',
  );
  t.equal(await spare.take('u-0004', { launcherBinary, uid: 'u-0004', socket: '/x', runDir: dir }), undefined, 'take finds none');
});

t.test("the spare's own refusals", { skip: skip || (process.getuid?.() !== 0 ? 'needs root' : false) }, async (t) => {
  const run = (args: string[], input?: string): Promise<{ code: number | null; stdout: string; stderr: string }> =>
    new Promise((resolve) => {
      const c = spawn(launcherBinary, args, { stdio: ['pipe', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      c.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
      c.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
      c.on('close', (code) => resolve({ code, stdout, stderr }));
      c.stdin.end(input);
    });
  const bad = await run(['--spare', 'yes', '--uid', 'x']);
  t.equal(bad.code, 120, 'usage error: --spare takes only --cgroup');
  t.match(bad.stderr, /--spare takes only --cgroup/);
  const released = await run(['--spare', 'yes']);
  t.same([released.code, released.stdout], [0, 'READY\n'], 'READY, then EOF without a handover: exits 0 (the daemon let it go, or died)');
  const noNul = await run(['--spare', 'yes'], `${path.join(dir, 'x.log')}\0/bin/true`);
  t.equal(noNul.code, 123, 'a handover not ending in NUL is a protocol error');
  t.match(noNul.stderr, /must end with NUL/);
  const relative = await run(['--spare', 'yes'], 'x.log\0/bin/true\0');
  t.equal(relative.code, 123, 'a relative log path is refused');
  mkdirSync(path.join(dir, 'nojoin'), { recursive: true });
  const noGroup = await run(['--spare', 'yes', '--cgroup', path.join(dir, 'nojoin')]);
  t.equal(noGroup.code, 121, 'a group it cannot join: EXIT_SANDBOX');
  t.match(noGroup.stdout, /^ERROR cgroup open .*cgroup\.procs: No such file/, 'and says why on stdout');
});
