// The KVM probe without QEMU: its pure helpers, the verdicts that come before QEMU runs, and a "QEMU" that exits or hangs is reaped and its temp dir removed.
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { children, shortDir } from '../support/short-dir.js';
import { DEFAULT_KVM_PROBE_PAYLOAD, parseConsole, probeKvm, reachedText, stderrReason } from '../../src/qemu/kvm-probe.js';

type Tap = Parameters<Parameters<typeof t.test>[0]>[0];

t.test('stderrReason keeps QEMU lines, drops -msg timestamp prefixes and blanks', async (t) => {
  const stderr = [
    '2024-05-01T10:11:12.123456Z qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69',
    '',
    "2024-05-01T10:11:12.123999Z qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed.",
    '',
  ].join('\n');
  t.equal(
    stderrReason(stderr),
    "error: failed to set MSR 0x10a to 0x69; ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed.",
  );
  t.equal(stderrReason(''), '');
  t.equal(stderrReason('a\nb\nc\nd\ne\nf\n'), 'a; b; c; d; e', 'at most 5 lines');
  t.ok(stderrReason('x'.repeat(2000)).length <= 600, 'bounded length');
});

t.test('parseConsole and reachedText', async (t) => {
  const seabios = 'SeaBIOS (version 1.16.2-debian-1.16.2-1)\nBUILD: gcc: ...\nNo Xen hypervisor found.\n';
  t.same(parseConsole(`${seabios}P32\nP64\nOK\n`), { markers: ['P32', 'P64', 'OK'], failure: undefined, firmware: true });
  t.same(parseConsole('P32\nP64\nFAIL mem\n'), { markers: ['P32', 'P64'], failure: 'FAIL mem', firmware: false });
  t.equal(reachedText(''), 'nothing');
  t.equal(reachedText(seabios), 'firmware output only, payload not entered');
  t.equal(reachedText(`${seabios}P32\n`), 'P32');
  t.equal(reachedText(`${seabios}P32\nP64\n`), 'P64');
  t.equal(reachedText('P3'), 'firmware output only, payload not entered', 'half a marker is not a marker');
});

t.test('default payload path is native/build/kvm-probe.elf of this checkout', async (t) => {
  t.equal(DEFAULT_KVM_PROBE_PAYLOAD, path.resolve(import.meta.dirname, '..', '..', 'native', 'build', 'kvm-probe.elf'));
});

t.test('no /dev/kvm: the open check decides, nothing runs', async (t) => {
  const st = await probeKvm({ qemuBinary: '/nonexistent/qemu', devKvm: '/nonexistent/kvm' });
  t.equal(st.usable, false);
  t.equal(st.stage, 'device');
  t.match(st.reason, /\/nonexistent\/kvm does not exist/);
  t.type(st.durationMs, 'number');
});

t.test('missing payload: unusable with the build hint, no crash', async (t) => {
  const dir = t.testdir({ kvm: '' });
  const st = await probeKvm({ qemuBinary: '/nonexistent/qemu', devKvm: `${dir}/kvm`, payload: `${dir}/nope.elf` });
  t.equal(st.usable, false);
  t.equal(st.stage, 'payload');
  t.match(st.reason, `${dir}/nope.elf`);
  t.match(st.reason, /make -C native/);
});

t.test('a binary that exits at once: its stderr is the reason; temp dir removed', async (t) => {
  const dir = shortDir(
    t,
    {
      kvm: '',
      'payload.elf': 'not really',
      'qemu-exits': '#!/bin/sh\necho "qemu-system-x86_64: -machine q35,accel=kvm: failed to initialize kvm: Permission denied" >&2\nexit 1\n',
    },
    { tmp: true },
  );
  const st = await probeKvm({ qemuBinary: `${dir}/qemu-exits`, devKvm: `${dir}/kvm`, payload: `${dir}/payload.elf`, tmpDir: `${dir}/tmp` });
  t.equal(st.usable, false);
  t.equal(st.stage, 'qemu');
  t.match(
    st.reason,
    /^-machine q35,accel=kvm: failed to initialize kvm: Permission denied \(QEMU exited with status 1 under -machine q35,accel=kvm -cpu host; reached: nothing\)$/,
  );
  t.same(readdirSync(`${dir}/tmp`), [], 'temp dir removed');
  t.same(children(/qemu/), [], 'reaped');
});

t.test('a binary that never answers QMP: killed after startTimeoutMs and reaped', async (t) => {
  const dir = shortDir(t, { kvm: '', 'payload.elf': 'x', 'qemu-hangs': '#!/bin/sh\nexec sleep 30\n' }, { tmp: true });
  const t0 = Date.now();
  const st = await probeKvm({
    qemuBinary: `${dir}/qemu-hangs`,
    devKvm: `${dir}/kvm`,
    payload: `${dir}/payload.elf`,
    tmpDir: `${dir}/tmp`,
    startTimeoutMs: 200,
  });
  const took = Date.now() - t0;
  t.equal(st.usable, false);
  t.equal(st.stage, 'qemu');
  t.match(st.reason, /did not take QMP commands/);
  t.ok(took < 5_000, `gave up in ${took} ms`);
  t.same(readdirSync(`${dir}/tmp`), [], 'temp dir removed');
  t.same(children(/sleep|qemu/), [], 'killed and reaped');
});

t.test('a temp dir too deep for a unix socket path: KVM_PROBE_FAILED, nothing left behind', async (t) => {
  const dir = shortDir(t, { kvm: '', 'payload.elf': 'x' }, { tmp: true });
  const deep = path.join(dir, 'tmp', 'd'.repeat(100));
  mkdirSync(deep);
  await t.rejects(probeKvm({ qemuBinary: '/bin/true', devKvm: `${dir}/kvm`, payload: `${dir}/payload.elf`, tmpDir: deep }), {
    code: 'KVM_PROBE_FAILED',
    message: /longer than a unix socket allows/,
  });
  t.same(readdirSync(deep), []);
});

t.test('a binary that cannot be spawned: KVM_PROBE_FAILED, temp dir removed', async (t) => {
  const dir = shortDir(t, { kvm: '', 'payload.elf': 'x' }, { tmp: true });
  await t.rejects(probeKvm({ qemuBinary: `${dir}/missing-qemu`, devKvm: `${dir}/kvm`, payload: `${dir}/payload.elf`, tmpDir: `${dir}/tmp` }), {
    code: 'KVM_PROBE_FAILED',
  });
  t.same(readdirSync(`${dir}/tmp`), []);
  t.notOk(existsSync(`${dir}/tmp/qmp.sock`));
});
