import { existsSync } from 'node:fs';
import t from 'tap';
import { clearProbeCache, probeQemu, resolveAccel } from '../../src/qemu/probe.js';

const QEMU = process.env['VMLET_QEMU'] ?? '/usr/bin/qemu-system-x86_64';

if (!existsSync(QEMU)) {
  t.plan(0, `skip: no QEMU binary at ${QEMU}`);
} else {
  t.test('probe the real binary', async (t) => {
    clearProbeCache();
    const caps = await probeQemu(QEMU);
    t.ok(caps.version.major >= 6, `version ${caps.version.text}`);
    t.ok(caps.machineTypeNames.includes('q35'), 'q35');
    t.ok(caps.machineTypeNames.includes('pc'), 'pc');
    t.ok(caps.machineTypes.some((m) => m.name === 'q35' && m.aliasOf?.startsWith('pc-q35-')), 'q35 is an alias');
    t.ok(caps.cpuModels.includes('max'), 'cpu model max');
    t.ok(caps.accelerators.includes('tcg'), 'tcg');
    t.type(caps.seccomp, 'boolean');
    t.equal(caps.kvm.usable, existsSync('/dev/kvm') ? caps.kvm.usable : false, 'no /dev/kvm → not usable');
    if (!caps.kvm.usable) t.match(caps.kvm.reason, /kvm/);
    if (existsSync('/usr/share/OVMF/OVMF_CODE_4M.fd')) {
      t.ok(caps.ovmf, 'OVMF found');
      t.notMatch(caps.ovmf?.code ?? '', /secboot|\.ms\./, 'not a secure-boot build');
    }
    const again = await probeQemu(QEMU);
    t.equal(again, caps, 'cached: same object');
    const choice = resolveAccel('auto', true, caps);
    t.equal(choice.accel, caps.kvm.usable ? 'kvm' : 'tcg');
  });

  t.test('missing binary', async (t) => {
    await t.rejects(probeQemu('/nonexistent/qemu-system-x86_64'), { code: 'QEMU_NOT_FOUND' });
  });

  t.test('not a QEMU binary', async (t) => {
    await t.rejects(probeQemu('/bin/true'), { code: 'QEMU_PROBE_FAILED' });
  });
}
