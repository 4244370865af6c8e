// Chaos: kill -9 of QEMU or of its launcher is seen at once and reported; a full state directory refuses writes cleanly and recovers.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import tap from 'tap';
import YAML from 'yaml';
import { daemonSkipReason, isAlive, sleep, startTestDaemon, vmiObject, waitFor, type KubeObj } from '../support/daemon.js';

const skip = daemonSkipReason();

const vmletStatus = (o: KubeObj | undefined): { qemuPid?: number; launcherPid?: number } =>
  (o?.status as { vmlet?: { qemuPid?: number; launcherPid?: number } } | undefined)?.vmlet ?? {};
const phaseOf = (o: KubeObj | undefined): string | undefined => (o?.status as { phase?: string } | undefined)?.phase;
const reasonOf = (o: KubeObj | undefined): string | undefined => (o?.status as { reason?: string } | undefined)?.reason;

tap.test('kill -9 of QEMU: the VMI is Failed within 1 s', { skip }, async (t) => {
  const d = await startTestDaemon(t);
  await d.apply(YAML.stringify(vmiObject('victim')));
  const vmi = await d.waitPhase('victim', 'Running', 60_000);
  const { qemuPid } = vmletStatus(vmi);
  const t0 = Date.now();
  process.kill(qemuPid!, 'SIGKILL');
  const failed = await waitFor(
    'Failed',
    async () => {
      const o = await d.vmi('victim');
      return phaseOf(o) === 'Failed' ? o : undefined;
    },
    5_000,
    20,
  );
  const ms = Date.now() - t0;
  t.ok(ms <= 1_000, `Failed after ${ms} ms`);
  t.equal(reasonOf(failed), 'QemuCrashed', 'reason QemuCrashed');
});

tap.test('kill -9 of the launcher: reported, and QEMU goes with it', { skip }, async (t) => {
  const d = await startTestDaemon(t);
  await d.apply(YAML.stringify(vmiObject('orphan')));
  const vmi = await d.waitPhase('orphan', 'Running', 60_000);
  const { qemuPid, launcherPid } = vmletStatus(vmi);
  t.ok(qemuPid && launcherPid, 'pids recorded');
  process.kill(launcherPid!, 'SIGKILL');
  const failed = await waitFor(
    'Failed',
    async () => {
      const o = await d.vmi('orphan');
      return phaseOf(o) === 'Failed' ? o : undefined;
    },
    10_000,
    50,
  );
  t.ok(['LauncherLost', 'QemuCrashed'].includes(reasonOf(failed) ?? ''), `reason ${reasonOf(failed)}`);
  await waitFor('QEMU gone', () => !isAlive(qemuPid!), 5_000);
  t.notOk(isAlive(qemuPid!), 'QEMU died with its launcher (PDEATHSIG), no orphan');
  const events = await d.cli(['events', 'orphan']);
  t.match(events.stdout, /Failed/, 'an event says the VMI failed');
});

tap.test('a full state directory: clear error, no torn files, recovery', { skip }, async (t) => {
  const d = await startTestDaemon(t);
  // The state dir becomes a small tmpfs of its own, so filling it fills nothing else.
  await d.stop();
  const objects = `${d.stateDir}/objects`;
  fs.mkdirSync(d.stateDir, { recursive: true });
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'vmlet-chaos', d.stateDir]);
  t.teardown(() => {
    try {
      execFileSync('umount', ['-l', d.stateDir]);
    } catch {
      /* already */
    }
  });
  await d.restart();
  await d.apply(YAML.stringify(vmiObject('first')));
  await d.waitPhase('first', 'Running', 60_000);
  const filler = `${d.stateDir}/filler`;
  try {
    execFileSync('dd', ['if=/dev/zero', `of=${filler}`, 'bs=4k', 'count=1000'], { stdio: 'ignore' });
  } catch {
    /* ENOSPC is the point */
  }
  const r = await d.cli(['apply', '-f', '-'], { input: YAML.stringify(vmiObject('second')) });
  t.not(r.code, 0, 'apply fails on a full disk');
  t.match(r.stderr, /STORE_WRITE_FAILED/, `with STORE_WRITE_FAILED (${r.stderr.trim()})`);
  const leftovers = (function walk(dir: string): string[] {
    return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(`${dir}/${e.name}`) : [`${dir}/${e.name}`]));
  })(objects);
  for (const f of leftovers.filter((f) => f.endsWith('.json'))) {
    t.doesNotThrow(() => JSON.parse(fs.readFileSync(f, 'utf8')), `${f.slice(objects.length)} parses`);
  }
  t.same(
    leftovers.filter((f) => /\.tmp|~|\.vmlet-tmp/.test(f)),
    [],
    'no temp files left',
  );
  t.equal((await d.http('GET', '/healthz')).status, 200, 'the daemon is still up');
  fs.rmSync(filler);
  await sleep(100);
  const again = await d.cli(['apply', '-f', '-'], { input: YAML.stringify(vmiObject('second')) });
  t.equal(again.code, 0, `apply works once there is space (${again.stderr.trim()})`);
  await d.waitPhase('second', 'Running', 60_000);
});
