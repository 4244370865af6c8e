// The probe's pure parts: QEMU help parsers, OVMF descriptor choice, the /dev/kvm open check, resolveAccel (with the KVM probe's reasons) and describeCaps.
import t from 'tap';
import {
  parseAccelHelp,
  parseCpuHelp,
  parseMachineHelp,
  parseVersion,
  pickOvmf,
  resolveAccel,
  checkKvm,
  findOvmf,
  describeCaps,
  type QemuCaps,
} from '../../src/qemu/probe.js';

t.test('parseVersion', async (t) => {
  t.match(parseVersion('QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright (c) 2003-2022 Fabrice Bellard\n'), {
    major: 7,
    minor: 2,
    micro: 22,
    text: 'QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)',
  });
  t.match(parseVersion('QEMU emulator version 8.1.0\n'), { major: 8, minor: 1, micro: 0 });
  t.match(parseVersion('QEMU emulator version 9.0\n'), { major: 9, minor: 0, micro: 0 });
  t.throws(() => parseVersion('garbage'), { code: 'QEMU_PROBE_FAILED' });
});

t.test('parseMachineHelp', async (t) => {
  const out = `Supported machines are:
microvm              microvm (i386)
pc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-7.2)
pc-i440fx-7.2        Standard PC (i440FX + PIIX, 1996) (default)
pc-i440fx-1.4        Standard PC (i440FX + PIIX, 1996) (deprecated)
q35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-7.2)
pc-q35-7.2           Standard PC (Q35 + ICH9, 2009)
none                 empty machine
`;
  const m = parseMachineHelp(out);
  t.same(
    m.map((x) => x.name),
    ['microvm', 'pc', 'pc-i440fx-7.2', 'pc-i440fx-1.4', 'q35', 'pc-q35-7.2', 'none'],
  );
  t.same(m[1], { name: 'pc', description: 'Standard PC (i440FX + PIIX, 1996)', isDefault: false, deprecated: false, aliasOf: 'pc-i440fx-7.2' });
  t.equal(m[2]?.isDefault, true);
  t.equal(m[3]?.deprecated, true);
  t.equal(m[4]?.aliasOf, 'pc-q35-7.2');
});

t.test('parseCpuHelp', async (t) => {
  const out = `Available CPUs:
x86 486                   (alias configured by machine type)
x86 Skylake-Client-v1     Intel Core Processor (Skylake)
x86 host                  KVM processor with all supported host features
x86 max                   Enables all features supported by the accelerator in the current host

Recognized CPUID flags:
  3dnow 3dnowext
`;
  t.same(parseCpuHelp(out), ['486', 'Skylake-Client-v1', 'host', 'max']);
});

t.test('parseAccelHelp', async (t) => {
  t.same(parseAccelHelp('Accelerators supported in QEMU binary:\ntcg\nkvm\n'), ['tcg', 'kvm']);
  t.same(parseAccelHelp(''), []);
});

t.test('pickOvmf', async (t) => {
  const desc = (file: string, features: string[], machines = ['pc-q35-*'], extra: Record<string, unknown> = {}): unknown => ({
    'interface-types': ['uefi'],
    mapping: {
      device: 'flash',
      executable: { filename: `/fw/${file}_CODE.fd`, format: 'raw' },
      'nvram-template': { filename: `/fw/${file}_VARS.fd`, format: 'raw' },
    },
    targets: [{ architecture: 'x86_64', machines }],
    features,
    ...extra,
  });
  const picked = pickOvmf([
    desc('SECENROLLED', ['secure-boot', 'enrolled-keys', 'requires-smm']),
    desc('SECURE', ['secure-boot', 'requires-smm']),
    desc('ARM', [], ['virt-*']),
    desc('BIOS', [], ['pc-q35-*'], { 'interface-types': ['bios'] }),
    desc('MEM', [], ['pc-q35-*'], { mapping: { device: 'memory', filename: '/fw/x.fd' } }),
    'junk',
    desc('PLAIN', ['acpi-s3', 'verbose-dynamic']),
  ]);
  t.same(picked, [{ code: '/fw/PLAIN_CODE.fd', vars: '/fw/PLAIN_VARS.fd' }]);
});

t.test('findOvmf with descriptor dir and fallbacks', async (t) => {
  const dir = t.testdir({
    fw: {
      '60-x.json': JSON.stringify({
        'interface-types': ['uefi'],
        mapping: { device: 'flash', executable: { filename: '/nonexistent/CODE.fd' }, 'nvram-template': { filename: '/nonexistent/VARS.fd' } },
        targets: [{ architecture: 'x86_64', machines: ['pc-q35-*'] }],
        features: [],
      }),
      'broken.json': '{',
    },
    files: { 'CODE.fd': 'c', 'VARS.fd': 'v' },
  });
  const fallback = { code: `${dir}/files/CODE.fd`, vars: `${dir}/files/VARS.fd` };
  t.same(await findOvmf([`${dir}/fw`], [fallback]), fallback, 'descriptor files missing → fallback');
  t.equal(await findOvmf([`${dir}/none`], []), undefined);
});

t.test('checkKvm', async (t) => {
  const st = await checkKvm('/nonexistent/kvm');
  t.equal(st.usable, false);
  t.match(st.reason, /does not exist/);
  const dir = t.testdir({ kvm: '' });
  t.same(await checkKvm(`${dir}/kvm`), { usable: true, reason: 'ok' }, 'an openable file counts');
});

t.test('resolveAccel', async (t) => {
  const withKvm = { kvm: { usable: true, reason: 'ok' }, accelerators: ['tcg', 'kvm'] };
  const noKvm = { kvm: { usable: false, reason: '/dev/kvm does not exist' }, accelerators: ['tcg', 'kvm'] };
  const kvmOnly = { kvm: { usable: false, reason: 'x' }, accelerators: ['kvm'] };
  t.same(resolveAccel('auto', false, withKvm), { accel: 'kvm', softwareEmulation: false });
  t.same(resolveAccel('kvm', false, withKvm), { accel: 'kvm', softwareEmulation: false });
  t.same(resolveAccel('tcg', false, withKvm), { accel: 'tcg', softwareEmulation: true, emulationReason: 'EmulationRequested' }, 'explicit tcg is consent');
  t.same(resolveAccel('auto', true, noKvm), {
    accel: 'tcg',
    softwareEmulation: true,
    emulationReason: 'KvmUnusable',
    emulationMessage: '/dev/kvm does not exist',
  });
  t.throws(() => resolveAccel('auto', false, noKvm), { code: 'KVM_UNAVAILABLE', message: /--accel tcg/ });
  t.throws(() => resolveAccel('kvm', true, noKvm), { code: 'KVM_UNAVAILABLE', message: /does not exist/ });
  t.throws(() => resolveAccel('tcg', true, kvmOnly), { code: 'ACCEL_UNAVAILABLE' });
  t.throws(() => resolveAccel('auto', true, kvmOnly), { code: 'ACCEL_UNAVAILABLE' });
  t.throws(() => resolveAccel('kvm', true, { kvm: { usable: true, reason: 'ok' }, accelerators: ['tcg'] }), {
    code: 'KVM_UNAVAILABLE',
    message: /no KVM support/,
  });
  t.same(resolveAccel('auto', true, { kvm: { usable: true, reason: 'ok' }, accelerators: ['tcg'] }), {
    accel: 'tcg',
    softwareEmulation: true,
    emulationReason: 'KvmUnusable',
    emulationMessage: 'this QEMU binary has no KVM support',
  });
});

t.test('resolveAccel with a KVM that opens but does not run guest code', async (t) => {
  const msr =
    'qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69; qemu-system-x86_64: kvm.c:3183: kvm_buf_set_msrs: Assertion failed. (QEMU died by SIGABRT under -machine q35,accel=kvm -cpu host; reached: nothing)';
  const caps = { kvm: { usable: false, reason: msr, stage: 'qemu' as const, durationMs: 40 }, accelerators: ['tcg', 'kvm'] };
  t.same(resolveAccel('auto', true, caps), { accel: 'tcg', softwareEmulation: true, emulationReason: 'KvmUnusable', emulationMessage: msr });
  t.throws(() => resolveAccel('kvm', true, caps), { code: 'KVM_UNAVAILABLE', message: /failed to set MSR 0x10a to 0x69/ });
  t.throws(() => resolveAccel('auto', false, caps), { code: 'KVM_UNAVAILABLE', message: /failed to set MSR 0x10a.*--accel tcg/ });
  const stalled = {
    kvm: { usable: false, reason: 'guest code did not run within 500 ms under -machine q35,accel=kvm -cpu host (reached: P32)', stage: 'guest' as const },
    accelerators: ['tcg', 'kvm'],
  };
  t.throws(() => resolveAccel('kvm', false, stalled), { code: 'KVM_UNAVAILABLE', message: /did not run within 500 ms .*reached: P32/ });
});

t.test('describeCaps shows the KVM verdict', async (t) => {
  const base: QemuCaps = {
    binary: '/usr/bin/qemu-system-x86_64',
    version: { major: 7, minor: 2, micro: 22, text: 'QEMU emulator version 7.2.22' },
    machineTypes: [],
    machineTypeNames: [],
    cpuModels: [],
    accelerators: ['tcg', 'kvm'],
    seccomp: true,
    kvm: { usable: true, reason: 'ok', stage: 'ok', durationMs: 81 },
    ovmf: undefined,
  };
  t.equal(describeCaps(base), 'QEMU 7.2.22 at qemu-system-x86_64 (kvm: yes, the probe guest ran, probed in 81 ms; ovmf: none)');
  t.equal(
    describeCaps({ ...base, kvm: { usable: false, reason: 'failed to set MSR 0x10a to 0x69', stage: 'qemu', durationMs: 37 } }),
    'QEMU 7.2.22 at qemu-system-x86_64 (kvm: no (qemu, probed in 37 ms): failed to set MSR 0x10a to 0x69; ovmf: none)',
  );
  t.equal(
    describeCaps({ ...base, kvm: { usable: false, reason: '/dev/kvm does not exist' } }),
    'QEMU 7.2.22 at qemu-system-x86_64 (kvm: no: /dev/kvm does not exist; ovmf: none)',
  );
});
