// QEMU's last stderr lines for a failed VMI: timestamps and program name dropped, the last few non-empty lines, long lines cut; a missing log gives none.
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { qemuErrorLines, readQemuErrors } from '../../src/qemu/qemu-log.js';

const MSR = [
  '2026-12-01T03:58:58.130268Z qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69',
  "qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed.",
  '',
].join('\n');

t.test('pure: lines as a person wants to read them', async (t) => {
  t.same(qemuErrorLines(MSR), [
    'error: failed to set MSR 0x10a to 0x69',
    "../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed.",
  ]);
  t.same(qemuErrorLines('a\n\nb\nc\nd\n', 2), ['c', 'd'], 'the last N non-empty lines');
  t.same(qemuErrorLines('/usr/local/bin/qemu-system-x86_64: -drive x: bad\n'), ['-drive x: bad'], 'a path as program name goes too');
  t.equal(qemuErrorLines('x'.repeat(1000))[0]?.length, 300, 'long lines are cut');
  t.same(qemuErrorLines(''), []);
});

t.test('from a run directory', async (t) => {
  const dir = t.testdir({ 'qemu.log': MSR });
  t.same(await readQemuErrors(dir, 1), ["../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed."]);
  t.same(await readQemuErrors(path.join(dir, 'nowhere')), [], 'no log: nothing to say');
  // Only the tail is read: a partial first line is dropped.
  writeFileSync(path.join(dir, 'qemu.log'), `${'y'.repeat(40_000)}\nlast words\n`);
  t.same(await readQemuErrors(dir), ['last words']);
});
