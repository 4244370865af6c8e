// The accelerator that tests and benchmarks boot guests with: VMLET_TEST_ACCEL when set, else the verdict of vmlet's own KVM probe (never "does /dev/kvm open").
import { probeQemu } from '../../src/qemu/probe.js';
import { which } from './which.js';
import type { Accel } from '../../src/api/vocabulary.js';

export type TestAccel = Accel;

/** VMLET_TEST_ACCEL=kvm|tcg, or undefined when unset; anything else is a mistake worth stopping for. */
export function accelFromEnv(env: NodeJS.ProcessEnv = process.env): TestAccel | undefined {
  const v = env['VMLET_TEST_ACCEL'];
  if (v === undefined || v === '' || v === 'auto') return undefined;
  if (v === 'kvm' || v === 'tcg') return v;
  throw new Error(`VMLET_TEST_ACCEL must be kvm, tcg or auto, not ${JSON.stringify(v)}`);
}

/** KVM only when the probe saw guest code run under it; the reason goes to `note` when it did not. */
export async function testAccel(qemu = process.env['VMLET_QEMU'] ?? 'qemu-system-x86_64', note?: (msg: string) => void): Promise<TestAccel> {
  const forced = accelFromEnv();
  if (forced !== undefined) return forced;
  const caps = await probeQemu(qemu.includes('/') ? qemu : (which(qemu) ?? qemu));
  if (caps.kvm.usable && caps.accelerators.includes('kvm')) return 'kvm';
  note?.(`booting under TCG: KVM is not usable (${caps.kvm.reason})`);
  return 'tcg';
}
