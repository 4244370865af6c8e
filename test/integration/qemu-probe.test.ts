// The capability probe against the real QEMU binary and the fake QEMUs: versions, machine types, the KVM verdict (with its cache key) and the accelerator it leads to.
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { DEFAULT_KVM_PROBE_PAYLOAD } from '../../src/qemu/kvm-probe.js';
import { clearProbeCache, describeCaps, probeQemu, resolveAccel } from '../../src/qemu/probe.js';

const QEMU = process.env['VMLET_QEMU'] ?? '/usr/bin/qemu-system-x86_64';
const FAKES = path.resolve(import.meta.dirname, '..', 'support', 'fake-qemu');

type Tap = Parameters<Parameters<typeof t.test>[0]>[0];

/** A plain file that "opens" as /dev/kvm, in a temp dir removed in teardown. */
function fakeDevKvm(t: Tap): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'vmlet-probe-it-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(path.join(dir, 'kvm'), '');
  return path.join(dir, 'kvm');
}

if (!existsSync(QEMU)) {
  t.plan(0, `skip: no QEMU binary at ${QEMU}`);
} else {
  t.test('probe the real binary', async (t) => {
    clearProbeCache();
    const t0 = performance.now();
    const caps = await probeQemu(QEMU);
    t.comment(`probeQemu took ${Math.round(performance.now() - t0)} ms: ${describeCaps(caps)}`);
    t.ok(caps.version.major >= 6, `version ${caps.version.text}`);
    t.ok(caps.machineTypeNames.includes('q35'), 'q35');
    t.ok(caps.machineTypeNames.includes('pc'), 'pc');
    t.ok(
      caps.machineTypes.some((m) => m.name === 'q35' && m.aliasOf?.startsWith('pc-q35-')),
      'q35 is an alias',
    );
    t.ok(caps.cpuModels.includes('max'), 'cpu model max');
    t.ok(caps.accelerators.includes('tcg'), 'tcg');
    t.type(caps.seccomp, 'boolean');
    if (!existsSync('/dev/kvm')) {
      t.same({ usable: caps.kvm.usable, stage: caps.kvm.stage }, { usable: false, stage: 'device' }, 'no /dev/kvm → not usable, decided by the open');
      t.match(caps.kvm.reason, /\/dev\/kvm does not exist/);
    } else if (caps.kvm.usable) {
      t.equal(caps.kvm.stage, 'ok', 'usable only after the probe guest ran');
    } else {
      t.ok(caps.kvm.stage !== undefined && caps.kvm.stage !== 'ok', `unusable at stage ${caps.kvm.stage}`);
      t.match(caps.kvm.reason, /kvm|make -C native/i);
    }
    if (existsSync(DEFAULT_KVM_PROBE_PAYLOAD) && existsSync('/dev/kvm')) t.not(caps.kvm.stage, 'payload', 'the built payload is found by default');
    t.match(describeCaps(caps), caps.kvm.usable ? /kvm: yes/ : /kvm: no/);
    if (existsSync('/usr/share/OVMF/OVMF_CODE_4M.fd')) {
      t.ok(caps.ovmf, 'OVMF found');
      t.notMatch(caps.ovmf?.code ?? '', /secboot|\.ms\./, 'not a secure-boot build');
    }
    const again = await probeQemu(QEMU);
    t.equal(again, caps, 'cached: same object');
    const choice = resolveAccel('auto', true, caps);
    t.equal(choice.accel, caps.kvm.usable ? 'kvm' : 'tcg');
    if (!caps.kvm.usable) t.same({ r: choice.emulationReason, m: choice.emulationMessage }, { r: 'KvmUnusable', m: caps.kvm.reason });
  });

  t.test('a QEMU that aborts under KVM (MSR): KVM unusable with its message, tcg fallback', async (t) => {
    clearProbeCache();
    const devKvm = fakeDevKvm(t);
    const caps = await probeQemu(path.join(FAKES, 'qemu-msr-abort'), { devKvm });
    t.ok(caps.accelerators.includes('kvm'), 'the fake lists kvm');
    t.equal(caps.kvm.usable, false);
    t.equal(caps.kvm.stage, 'qemu');
    t.match(caps.kvm.reason, /failed to set MSR 0x10a to 0x69/);
    t.match(describeCaps(caps), /kvm: no \(qemu, probed in \d+ ms\): error: failed to set MSR 0x10a/);
    t.match(resolveAccel('auto', true, caps), {
      accel: 'tcg',
      softwareEmulation: true,
      emulationReason: 'KvmUnusable',
      emulationMessage: /failed to set MSR 0x10a/,
    });
    t.throws(() => resolveAccel('kvm', true, caps), { code: 'KVM_UNAVAILABLE', message: /failed to set MSR 0x10a to 0x69/ });
    t.throws(() => resolveAccel('auto', false, caps), { code: 'KVM_UNAVAILABLE', message: /failed to set MSR 0x10a to 0x69/ });
  });

  t.test('a QEMU whose guest never runs: KVM unusable after the deadline', async (t) => {
    clearProbeCache();
    const devKvm = fakeDevKvm(t);
    const caps = await probeQemu(path.join(FAKES, 'qemu-guest-never-runs'), { devKvm, kvmProbeDeadlineMs: 700 });
    t.equal(caps.kvm.usable, false);
    t.equal(caps.kvm.stage, 'guest');
    t.match(caps.kvm.reason, /^guest code did not run within 700 ms under -machine q35,accel=kvm -cpu host/);
    t.equal(resolveAccel('auto', true, caps).accel, 'tcg');
  });

  t.test('probe options are part of the cache key', async (t) => {
    clearProbeCache();
    const devKvm = fakeDevKvm(t);
    const fake = path.join(FAKES, 'qemu-msr-abort');
    const missing = await probeQemu(fake, { devKvm, kvmProbePayload: '/nonexistent/kvm-probe.elf' });
    t.equal(missing.kvm.stage, 'payload');
    t.match(missing.kvm.reason, /\/nonexistent\/kvm-probe\.elf is missing; build it with "make -C native"/);
    const other = await probeQemu(fake, { devKvm, kvmProbePayload: '/nonexistent/other.elf' });
    t.not(other, missing, 'another payload → another probe');
    t.match(other.kvm.reason, /other\.elf/);
    const cpu = await probeQemu(fake, { devKvm, kvmProbePayload: '/nonexistent/other.elf', kvmProbeCpu: 'max' });
    t.not(cpu, other, 'another cpu → another probe');
    t.equal(await probeQemu(fake, { devKvm, kvmProbePayload: '/nonexistent/other.elf' }), other, 'same options → cached');
  });

  t.test('no /dev/kvm: the probe guest is not started', async (t) => {
    clearProbeCache();
    const t0 = performance.now();
    const caps = await probeQemu(path.join(FAKES, 'qemu-msr-abort'), { devKvm: '/nonexistent/kvm' });
    t.same({ usable: caps.kvm.usable, stage: caps.kvm.stage }, { usable: false, stage: 'device' });
    t.match(caps.kvm.reason, /\/nonexistent\/kvm does not exist/);
    t.comment(`probeQemu without KVM took ${Math.round(performance.now() - t0)} ms`);
  });

  t.test('missing binary', async (t) => {
    await t.rejects(probeQemu('/nonexistent/qemu-system-x86_64'), { code: 'QEMU_NOT_FOUND' });
  });

  t.test('not a QEMU binary', async (t) => {
    await t.rejects(probeQemu('/bin/true'), { code: 'QEMU_PROBE_FAILED' });
  });
}
