// The real daemon under a stand-in for systemd's notify socket: READY=1 only once the VMs left running by a killed daemon are re-adopted (QMP connected), STATUS= with the VM count, WATCHDOG=1 pings that stop while the daemon is SIGSTOPped, STOPPING=1 on SIGTERM.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tap from 'tap';
import { daemonSkipReason, isAlive, manifestVMI, sleep, startTestDaemon, waitFor, type KubeObj, type TestDaemon } from '../support/daemon.js';
import { notifyReceiver, type Notification } from '../support/notify-receiver.js';

const skip = daemonSkipReason();
/** WATCHDOG_USEC: pings every 200 ms. */
const WATCHDOG_USEC = 400_000;

interface LogLine {
  time: number;
  msg: string;
  vmi?: { name?: string };
  everyMs?: number;
}

function logLines(d: TestDaemon): LogLine[] {
  return readFileSync(d.logFile, 'utf8')
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as LogLine);
}

async function running(d: TestDaemon, names: string[]): Promise<KubeObj[]> {
  return Promise.all(names.map((n) => d.waitPhase(n, 'Running', 60_000)));
}

tap.test('READY=1 waits for re-adoption; STATUS counts the VMs; the watchdog pings from the event loop', { skip }, async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'vsn-'));
  const rx = notifyReceiver(path.join(dir, 'notify.sock'));
  // The test daemon inherits this process's environment, as a unit's ExecStart inherits systemd's.
  const saved = { NOTIFY_SOCKET: process.env.NOTIFY_SOCKET, WATCHDOG_USEC: process.env.WATCHDOG_USEC, WATCHDOG_PID: process.env.WATCHDOG_PID };
  process.env.NOTIFY_SOCKET = rx.address;
  process.env.WATCHDOG_USEC = String(WATCHDOG_USEC);
  delete process.env.WATCHDOG_PID;
  const frozen: number[] = [];
  t.teardown(() => {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    for (const pid of frozen) if (isAlive(pid)) process.kill(pid, 'SIGCONT');
    rx.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const readyAfter = (from: number): Notification | undefined => rx.withLine('READY=1').find((m) => m.at >= from);
  const waitReady = (from: number, timeoutMs: number): Promise<Notification> => waitFor('READY=1', () => readyAfter(from), timeoutMs, 10);

  // 1. No VM: READY=1 right after the socket answers.
  const spawned0 = Date.now();
  const d = await startTestDaemon(t);
  const ready0 = await rx.waitLine('READY=1', 15_000, { past: true });
  t.equal(ready0.text, `READY=1\nSTATUS=0 VMs (0 running), serving on ${d.socket}`);
  t.comment(`0 VMs: spawn → /healthz ${d.startMs} ms, spawn → READY=1 ${ready0.at - spawned0} ms`);
  t.same(
    logLines(d)
      .filter((l) => l.msg === 'systemd watchdog: pinging')
      .map((l) => l.everyMs),
    [WATCHDOG_USEC / 2000],
    'the ping interval is logged once',
  );

  // 2. STATUS follows the count.
  const names = ['sda', 'sdb', 'sdc'];
  await d.apply(names.map((n) => manifestVMI(n)).join('---\n'));
  const before = await running(d, names);
  const status3 = await rx.waitLine('STATUS=3 VMs (3 running), serving on ' + d.socket, 10_000, { past: true });
  t.ok(status3, 'STATUS= says 3 VMs (3 running)');
  const statusLines = rx.messages.filter((m) => m.text.startsWith('STATUS=') && m.at >= ready0.at);
  t.ok(statusLines.length <= 8, `a few STATUS lines for 3 VMIs starting (${statusLines.map((m) => m.text.slice(7, 24)).join(' | ')})`);

  // 3. The watchdog: pings every 200 ms, none while the daemon is stopped, again once it runs.
  await sleep(1_000);
  const recent = rx.withLine('WATCHDOG=1').filter((m) => m.at > Date.now() - 1_000);
  t.ok(recent.length >= 3 && recent.length <= 7, `${recent.length} pings in the last second (every ${WATCHDOG_USEC / 2000} ms)`);
  const stopAt = Date.now();
  process.kill(d.pid, 'SIGSTOP');
  await sleep(1_500);
  const contAt = Date.now();
  process.kill(d.pid, 'SIGCONT');
  await sleep(700);
  const pings = rx.withLine('WATCHDOG=1').map((m) => m.at);
  t.same(
    pings.filter((p) => p > stopAt + 100 && p < contAt),
    [],
    'no ping while the daemon is SIGSTOPped',
  );
  t.ok(pings.filter((p) => p >= contAt).length >= 2, 'pings again after SIGCONT');

  // 4. kill -9 with one QEMU frozen: the restarted daemon answers, but READY=1 waits until that QEMU answers QMP.
  const sdc = before.find((v) => v.metadata.name === 'sdc')!;
  const frozenPid = sdc.status!.vmlet!.qemuPid!;
  await d.kill('SIGKILL');
  process.kill(frozenPid, 'SIGSTOP');
  frozen.push(frozenPid);
  const { spawnedAt } = await d.restart();
  await rx.waitLine('STATUS=re-adopting 3 VMs', 10_000, { past: true }).then((m) => t.ok(m.at >= spawnedAt, 'STATUS=re-adopting 3 VMs'));
  await waitFor('sda and sdb re-adopted', () => logLines(d).filter((l) => l.msg === 'VMI re-adopted' && l.time >= spawnedAt).length >= 2, 20_000);
  await sleep(2_000);
  t.equal(readyAfter(spawnedAt), undefined, 'no READY=1 while a VM is still being re-adopted');
  const early = await d.cli(['qmp', 'sdc', '{"execute":"query-status"}']);
  t.not(early.code, 0, `sdc is not re-adopted yet: vmlet qmp refuses (${early.stderr.trim()})`);
  const thawAt = Date.now();
  process.kill(frozenPid, 'SIGCONT');
  const ready1 = await waitReady(spawnedAt, 15_000);
  t.ok(ready1.at >= thawAt, `READY=1 after the frozen QEMU was let go (${ready1.at - thawAt} ms after)`);
  // Right at READY: every VMI Running with its old QEMU, and the last one's QMP works through the new daemon.
  const atReady = await Promise.all(names.map((n) => d.vmi(n)));
  for (const v of atReady) {
    const old = before.find((b) => b.metadata.name === v?.metadata.name);
    t.equal(v?.status?.phase, 'Running', `${v?.metadata.name} Running at READY`);
    t.equal(v?.status?.vmlet?.qemuPid, old?.status?.vmlet?.qemuPid, `${v?.metadata.name} keeps QEMU ${old?.status?.vmlet?.qemuPid}`);
  }
  const q = JSON.parse(await d.cliOk(['qmp', 'sdc', '{"execute":"query-status"}'])) as { return: { status: string } };
  t.equal(q.return.status, 'running', 'QMP of the thawed VM answers through the new daemon');
  const adoptedSdc = logLines(d).find((l) => l.msg === 'VMI re-adopted' && l.vmi?.name === 'sdc' && l.time >= spawnedAt);
  t.ok(adoptedSdc && adoptedSdc.time <= ready1.at, 'the daemon logged sdc re-adopted before READY=1');
  t.equal(ready1.text, `READY=1\nSTATUS=3 VMs (3 running), serving on ${d.socket}`);
  t.ok(
    logLines(d).some((l) => l.msg === 'every VM found running is re-adopted' && l.time >= spawnedAt),
    'the daemon says every VM is re-adopted',
  );

  // 5. A plain restart with three VMs, for the time it takes.
  await d.kill('SIGKILL');
  const r2 = await d.restart();
  const ready2 = await waitReady(r2.spawnedAt, 30_000);
  t.comment(
    `3 VMs: spawn → /healthz ${r2.healthyAt - r2.spawnedAt} ms, spawn → READY=1 ${ready2.at - r2.spawnedAt} ms (re-adoption ${ready2.at - r2.healthyAt} ms after /healthz)`,
  );

  // 6. SIGTERM: STOPPING=1.
  const stopAsked = Date.now();
  await d.stop();
  await waitFor('STOPPING=1', () => rx.withLine('STOPPING=1').find((m) => m.at >= stopAsked), 5_000, 10);
  t.pass('STOPPING=1 on SIGTERM');
});
