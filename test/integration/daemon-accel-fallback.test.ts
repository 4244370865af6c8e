// A broken KVM is detected at daemon start and survived: with fake QEMUs that abort under KVM (the MSR failure) or whose guest never runs, `auto` + useEmulation runs VMs under TCG with the condition reason KvmUnusable, `kvm` fails them with the probe's reason, and `vmlet version` shows the verdict.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { daemonSkipReason, manifestVMI, repoRoot, startTestDaemon, type KubeObj } from '../support/daemon.js';

const skip = daemonSkipReason();
const FAKES = path.join(repoRoot, 'test', 'support', 'fake-qemu');

const condition = (o: KubeObj | undefined, type: string): { status: string; reason?: string; message?: string } | undefined =>
  o?.status?.conditions?.find((c) => c.type === type);

/** A plain file stands in for /dev/kvm, so the probe goes on to run QEMU on hosts without KVM too. */
function fakeKvmDevice(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'vmlet-fakekvm-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const p = path.join(dir, 'kvm');
  writeFileSync(p, '');
  return p;
}

t.test('QEMU aborts under KVM (failed to set MSR)', { skip }, async (t) => {
  await t.test('auto + useEmulation: the VM runs under TCG and says why', async (t) => {
    const d = await startTestDaemon(t, {
      accel: 'auto',
      config: { qemuBinary: path.join(FAKES, 'qemu-msr-abort'), useEmulation: true, kvmDevice: fakeKvmDevice(t) },
    });
    t.comment(`daemon start (with the KVM probe) took ${d.startMs} ms`);
    await d.apply(manifestVMI('fallback'));
    const vmi = await d.waitPhase('fallback', 'Running', 60_000);
    const c = condition(vmi, 'SoftwareEmulation');
    t.equal(c?.status, 'True', 'SoftwareEmulation=True');
    t.equal(c?.reason, 'KvmUnusable', 'reason KvmUnusable');
    t.match(c?.message ?? '', /failed to set MSR 0x10a to 0x69/, `the message carries QEMU's own words (${c?.message})`);
    const version = await d.cliOk(['version']);
    t.match(version, /KVM:\s+not usable: .*failed to set MSR 0x10a/, `vmlet version shows the verdict:\n${version}`);
    const log = readFileSync(d.logFile, 'utf8');
    const warned = log.split('\n').filter((l) => l.includes('KVM is not usable'));
    t.equal(warned.length, 1, 'the verdict is logged once');
    t.match(warned[0] ?? '', /software emulation/);
  });

  await t.test("accel kvm: VMIs fail with the probe's reason", async (t) => {
    const d = await startTestDaemon(t, { accel: 'kvm', config: { qemuBinary: path.join(FAKES, 'qemu-msr-abort'), kvmDevice: fakeKvmDevice(t) } });
    await d.apply(manifestVMI('needkvm'));
    const vmi = await d.waitPhase('needkvm', 'Failed', 60_000);
    t.equal(vmi.status?.reason, 'KvmUnavailable', 'reason KvmUnavailable');
    t.match(vmi.status?.message ?? '', /KVM is not usable \(.*failed to set MSR 0x10a/, `status.message says why (${vmi.status?.message})`);
    const described = await d.cliOk(['describe', 'vmi', 'needkvm']);
    t.match(described, /failed to set MSR 0x10a/, 'describe shows it');
    t.match(described, /Failed/, 'and the phase');
  });
});

t.test('QEMU starts under KVM but the guest never runs', { skip }, async (t) => {
  const d = await startTestDaemon(t, {
    accel: 'auto',
    config: { qemuBinary: path.join(FAKES, 'qemu-guest-never-runs'), useEmulation: true, kvmDevice: fakeKvmDevice(t) },
  });
  t.comment(`daemon start (with the KVM probe waiting out its deadline) took ${d.startMs} ms`);
  await d.apply(manifestVMI('stall'));
  const vmi = await d.waitPhase('stall', 'Running', 60_000);
  const c = condition(vmi, 'SoftwareEmulation');
  t.equal(c?.reason, 'KvmUnusable');
  t.match(c?.message ?? '', /guest code did not run within 500 ms/, `the probe's verdict (${c?.message})`);
});

t.test('no KVM device at all: auto + useEmulation runs the VM under TCG and says so', { skip }, async (t) => {
  const d = await startTestDaemon(t, { accel: 'auto', config: { useEmulation: true, kvmDevice: path.join(os.tmpdir(), 'vmlet-no-such-kvm') } });
  await d.apply(manifestVMI('nokvm'));
  const vmi = await d.waitPhase('nokvm', 'Running', 60_000);
  const c = condition(vmi, 'SoftwareEmulation');
  t.equal(c?.reason, 'KvmUnusable');
  t.match(c?.message ?? '', /vmlet-no-such-kvm does not exist/, `the device check's reason (${c?.message})`);
});
