// Forged HELLOs on a real daemon's launcher socket — from root processes that are not a VMI's launcher, and from another uid — while the VMI starts, runs, and after a daemon restart: each is refused, none gets argv or fds, and the VMI keeps its QEMU.
import { chmodSync, readFileSync, statSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tap from 'tap';
import { daemonSkipReason, isAlive, manifestVMI, qemuProcessesFor, sleep, startTestDaemon, vmiObject, waitFor, type KubeObj } from '../support/daemon.js';
import { forgeHello, NOBODY } from '../support/launcher-forger.js';

const skip = daemonSkipReason();
const VMIS_PATH = '/apis/vmlet.io/v1alpha1/namespaces/default/virtualmachineinstances';

/** One HELLO from this (root) process, which is no VMI's launcher, claiming its own pid; the first reply line ('' when closed without one). */
async function helloFromHere(socketPath: string, line: string): Promise<string> {
  const sock = net.connect(socketPath);
  let got = '';
  return new Promise((resolve) => {
    const timer = setTimeout(() => sock.destroy(), 20_000);
    const done = (): void => {
      clearTimeout(timer);
      resolve(got);
    };
    sock.on('connect', () => sock.write(`${line}\n`));
    sock.on('data', (c: Buffer) => {
      got += c.toString('latin1');
      if (got.includes('\n')) sock.destroy();
    });
    sock.on('close', done);
    sock.on('error', () => undefined);
  });
}

const claims = (uid: string, qemuPid: number, pid: number | string): string[] => [
  `HELLO 1 ${uid} ${pid} NEW`,
  `HELLO 1 ${uid} ${pid} RUNNING ${qemuPid}`,
  `HELLO 1 ${uid} ${pid} EXITED ${qemuPid} exit=0`,
];

/** The first word and code of a reply: `REJECT launcher-mismatch`, `ARGV`, `OK`, or `(closed)`. */
/** QEMU goes with the test even where its launcher's death does not take it along. */
function killQemuAtEnd(t: { teardown(fn: () => void): void }, uid: string): void {
  t.teardown(() => {
    for (const p of qemuProcessesFor(uid)) {
      try {
        process.kill(p.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  });
}

const kindOf = (reply: string): string =>
  reply === ''
    ? '(closed)'
    : reply
        .split(' ')
        .slice(0, reply.startsWith('REJECT') ? 2 : 1)
        .join(' ')
        .trim();

tap.test('forged HELLOs while a VMI is prepared, launched and running: all refused, no argv, one QEMU', { skip }, async (t) => {
  const d = await startTestDaemon(t);
  const sock = path.join(d.runDir, 'launcher.sock');
  const created = await d.http('POST', VMIS_PATH, JSON.stringify(vmiObject('forged')));
  t.equal(created.status, 201, created.text);
  const uid = (created.json() as KubeObj).metadata.uid;
  killQemuAtEnd(t, uid);

  // From the moment the VMI exists until a second after it runs, HELLO after HELLO in every form.
  const seen = new Map<string, number>();
  let runningAt = 0;
  let i = 0;
  for (const end = Date.now() + 60_000; Date.now() < end; i++) {
    const line = claims(uid, 4242, process.pid)[i % 3] ?? '';
    const kind = kindOf(await helloFromHere(sock, line));
    seen.set(kind, (seen.get(kind) ?? 0) + 1);
    if (kind === 'ARGV' || kind === 'OK') break;
    if (i % 20 === 0 && !runningAt && (await d.vmi('forged'))?.status?.phase === 'Running') runningAt = Date.now();
    if (runningAt && Date.now() - runningAt > 1_000) break;
    await sleep(2);
  }
  t.comment(`${i} forged HELLOs: ${[...seen].map(([k, n]) => `${k} ×${n}`).join(', ')}`);
  t.notOk(seen.has('ARGV'), 'no forged HELLO got QEMU argv and fds');
  t.notOk(seen.has('OK'), 'no forged HELLO was accepted');
  t.same(
    [...seen.keys()].filter((k) => !['REJECT unknown-uid', 'REJECT launcher-mismatch', 'REJECT duplicate'].includes(k)),
    [],
    'every answer is a refusal: unknown before the link, not the launcher, or the launcher is connected already',
  );
  t.ok((seen.get('REJECT launcher-mismatch') ?? 0) + (seen.get('REJECT duplicate') ?? 0) > 0, 'forged HELLOs reached the VMI');

  const v = await d.waitPhase('forged', 'Running', 30_000);
  const launcherPid = v.status!.vmlet!.launcherPid!;
  const qemuPid = v.status!.vmlet!.qemuPid!;
  t.not(launcherPid, process.pid, 'the launcher of record is not the forger');
  t.match(readFileSync(`/proc/${launcherPid}/cmdline`, 'utf8'), /vmlet-launch\0--uid\0/, 'it is the vmlet-launch the daemon spawned');
  t.same(
    qemuProcessesFor(uid).map((p) => p.pid),
    [qemuPid],
    'exactly one QEMU',
  );
  const ev = JSON.parse(await d.cliOk(['events', '-o', 'json'])) as { items: Array<{ reason: string }> };
  t.equal(ev.items.filter((e) => e.reason === 'Launched').length, 1, 'launched once');
  await sleep(1_000);
  t.equal((await d.vmi('forged'))?.status?.phase, 'Running', 'still Running a second later (no forged EXITED was taken)');
});

tap.test('after a daemon restart, before the launcher is back: forged HELLOs are refused and the VMI keeps its QEMU', { skip }, async (t) => {
  const d = await startTestDaemon(t);
  await d.apply(manifestVMI('readopt'));
  const v = await d.waitPhase('readopt', 'Running', 30_000);
  const uid = v.metadata.uid;
  killQemuAtEnd(t, uid);
  const qemuPid = v.status!.vmlet!.qemuPid!;
  const launcherPid = v.status!.vmlet!.launcherPid!;
  const sock = path.join(d.runDir, 'launcher.sock');

  // The launcher cannot reconnect while stopped: the forgers meet the new daemon first.
  await d.kill('SIGKILL');
  process.kill(launcherPid, 'SIGSTOP');
  t.teardown(() => {
    if (isAlive(launcherPid)) process.kill(launcherPid, 'SIGCONT');
  });
  const logFrom = statSync(d.logFile).size;
  await d.restart();

  let first = await forgeHello(sock, claims(uid, qemuPid, '{pid}')[2] ?? '');
  await waitFor(
    'the VMI to be known to the new daemon',
    async () => {
      if (!first.reply.startsWith('REJECT unknown-uid')) return true;
      first = await forgeHello(sock, claims(uid, qemuPid, '{pid}')[2] ?? '');
      return false;
    },
    30_000,
    50,
  );
  const mismatch = (pid: number): RegExp => new RegExp(`^REJECT launcher-mismatch pid ${pid} is not the launcher of VMI ${uid} \\(pid ${launcherPid}\\)\\n$`);
  t.match(first.reply, mismatch(first.pid), 'a root process saying HELLO … EXITED is not the recorded launcher');
  for (const line of claims(uid, qemuPid, '{pid}').slice(0, 2)) {
    const f = await forgeHello(sock, line);
    t.match(f.reply, mismatch(f.pid), `${line.split(' ')[4]}: refused`);
  }

  // Another uid: the socket (0600 in a 0700 folder) is opened up, so that only the daemon's own check stands.
  const modes = [d.root, d.runDir, sock].map((p) => [p, statSync(p).mode & 0o777] as const);
  chmodSync(d.root, 0o711);
  chmodSync(d.runDir, 0o711);
  chmodSync(sock, 0o666);
  const nobody = await forgeHello(sock, claims(uid, qemuPid, '{pid}')[2] ?? '', NOBODY);
  for (const [p, m] of modes) chmodSync(p, m);
  t.equal(nobody.uid, NOBODY);
  t.equal(
    nobody.reply,
    `REJECT peer-uid the socket peer (pid ${nobody.pid}) runs as uid ${NOBODY}, not 0\n`,
    'uid 65534 is refused though it can reach the socket',
  );
  const log = readFileSync(d.logFile, 'utf8').slice(logFrom);
  t.ok(
    log
      .split('\n')
      .some((l) => l.includes('"reject":"peer-uid"') && l.includes(`"launcherPeerPid":${nobody.pid}`) && l.includes(`"launcherPeerUid":${NOBODY}`)),
    "the refusal is logged with the peer's pid and uid",
  );

  const after = await d.waitPhase('readopt', 'Running', 30_000);
  t.equal(after.status?.vmlet?.qemuPid, qemuPid, 'the same QEMU');
  t.equal(after.status?.vmlet?.launcherPid, launcherPid, 'the same launcher of record');
  t.ok(isAlive(qemuPid), 'QEMU runs');
  t.same(
    qemuProcessesFor(uid).map((p) => p.pid),
    [qemuPid],
    'and no other',
  );

  // The real launcher comes back and is heard; the VM is driven as before.
  process.kill(launcherPid, 'SIGCONT');
  await waitFor(
    'the launcher to reconnect',
    () =>
      readFileSync(d.logFile, 'utf8')
        .slice(logFrom)
        .split('\n')
        .some((l) => l.includes('"msg":"launcher connected"') && l.includes(uid)),
    20_000,
  );
  t.pass('the recorded launcher reconnected');
  const r = JSON.parse(await d.cliOk(['qmp', 'readopt', '{"execute":"query-status"}'])) as { return: { status: string } };
  t.equal(r.return.status, 'running', 'QMP answers through the restarted daemon');
  await sleep(500);
  t.equal((await d.vmi('readopt'))?.status?.phase, 'Running', 'still Running');
});
