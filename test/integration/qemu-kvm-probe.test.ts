// The KVM probe with a real QEMU: the payload under tcg reaches long mode and "OK", the fake QEMUs (MSR abort, guest never runs) give their verdicts and are reaped, and this host's /dev/kvm gets a verdict consistent with a plain run.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { children, shortDir } from '../support/short-dir.js';
import { DEFAULT_KVM_PROBE_PAYLOAD, probeKvm } from '../../src/qemu/kvm-probe.js';
import { qemuErrorLines } from '../../src/qemu/qemu-log.js';
import { which } from '../support/which.js';
import type { Accel } from '../../src/api/vocabulary.js';

const root = path.resolve(import.meta.dirname, '..', '..');
const FAKES = path.join(root, 'test', 'support', 'fake-qemu');
const QEMU = which('qemu-system-x86_64');
const PAYLOAD = DEFAULT_KVM_PROBE_PAYLOAD;

type Tap = Parameters<Parameters<typeof t.test>[0]>[0];

/** Runs QEMU with the payload and no QMP, as a second opinion: console output, exit status, stderr. */
function runPayload(args: {
  accel: Accel;
  cpu: string;
  timeoutMs: number;
}): Promise<{ console: string; code: number | null; signal: string | null; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(
      QEMU ?? 'qemu-system-x86_64',
      [
        '-no-user-config',
        '-nodefaults',
        '-display',
        'none',
        '-no-reboot',
        '-machine',
        `q35,accel=${args.accel}`,
        '-cpu',
        args.cpu,
        '-m',
        '32M',
        '-chardev',
        'stdio,id=dbg',
        '-device',
        'isa-debugcon,iobase=0x402,chardev=dbg,readback=0',
        '-device',
        'isa-debug-exit,iobase=0xf4,iosize=0x04',
        '-kernel',
        PAYLOAD,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), args.timeoutMs);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ console: out, code, signal, stderr: err });
    });
  });
}

const skip =
  QEMU === undefined
    ? 'qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)'
    : !existsSync(PAYLOAD)
      ? `the probe payload ${PAYLOAD} is not built (make -C native)`
      : false;

if (skip !== false) {
  t.plan(0, `skip: ${skip}`);
} else {
  const qemu = QEMU ?? '';

  t.test('the payload itself, under tcg: P32, P64, OK and debug-exit status 85', async (t) => {
    const r = await runPayload({ accel: 'tcg', cpu: 'max', timeoutMs: 30_000 });
    t.match(r.console, /(^|\n)P32\nP64\nOK\n$/, 'markers in order, OK last');
    t.equal(r.code, 85, 'isa-debug-exit with 0x2a');
  });

  t.test('probeKvm under tcg: usable, and fast', async (t) => {
    const tmp = shortDir(t);
    const st = await probeKvm({ qemuBinary: qemu, accel: 'tcg', deadlineMs: 20_000, tmpDir: tmp });
    t.same({ usable: st.usable, reason: st.reason, stage: st.stage }, { usable: true, reason: 'ok', stage: 'ok' });
    t.comment(`probe under tcg took ${st.durationMs} ms`);
    t.ok((st.durationMs ?? Infinity) < 20_000);
    t.same(readdirSync(tmp), [], 'temp dir removed');
    t.same(children(/qemu/), [], 'QEMU reaped');
  });

  t.test('probeKvm under tcg with a payload QEMU refuses (a plain file, not ELF)', async (t) => {
    const tmp = shortDir(t, { 'not-elf': 'hello' });
    const st = await probeKvm({ qemuBinary: qemu, accel: 'tcg', payload: `${tmp}/not-elf`, deadlineMs: 300, tmpDir: tmp });
    t.equal(st.usable, false);
    t.equal(st.stage, 'qemu', 'QEMU refuses the file');
    t.match(
      st.reason,
      /^[^:]*kernel.* \(QEMU exited with status 1 under -machine q35,accel=tcg -cpu max; reached: nothing\)$/,
      'QEMU\'s complaint (7.2: "qemu: invalid kernel header")',
    );
    t.same(readdirSync(tmp), ['not-elf']);
  });

  t.test('fake QEMU that aborts on an MSR under KVM', async (t) => {
    const tmp = shortDir(t, { kvm: '' });
    const st = await probeKvm({ qemuBinary: path.join(FAKES, 'qemu-msr-abort'), devKvm: `${tmp}/kvm`, tmpDir: tmp });
    t.equal(st.usable, false);
    t.equal(st.stage, 'qemu');
    t.match(st.reason, /^error: failed to set MSR 0x10a to 0x69; /, "QEMU's own line first, without its program name");
    t.match(st.reason, /kvm_buf_set_msrs: Assertion/);
    t.match(st.reason, /QEMU died by SIGABRT under -machine q35,accel=kvm -cpu host; reached: nothing/);
    t.comment(`verdict in ${st.durationMs} ms`);
    t.ok((st.durationMs ?? Infinity) < 5_000);
    t.same(readdirSync(tmp), ['kvm'], 'temp dir removed');
    t.same(children(/qemu/), [], 'QEMU reaped');
  });

  t.test('fake QEMU that runs but whose guest never reaches the payload', async (t) => {
    const tmp = shortDir(t, { kvm: '' });
    const st = await probeKvm({ qemuBinary: path.join(FAKES, 'qemu-guest-never-runs'), devKvm: `${tmp}/kvm`, tmpDir: tmp, deadlineMs: 800 });
    t.equal(st.usable, false);
    t.equal(st.stage, 'guest');
    t.match(
      st.reason,
      /^guest code did not run within 800 ms under -machine q35,accel=kvm -cpu host \(reached: (nothing|firmware output only, payload not entered)\)$/,
    );
    t.ok((st.durationMs ?? 0) >= 800, `took ${st.durationMs} ms, at least the deadline`);
    t.same(readdirSync(tmp), ['kvm'], 'temp dir removed');
    t.same(children(/qemu/), [], 'QEMU killed and reaped');
  });

  t.test('missing payload with a QEMU that would run: build hint', async (t) => {
    const tmp = shortDir(t, { kvm: '' });
    const st = await probeKvm({ qemuBinary: path.join(FAKES, 'qemu-guest-never-runs'), devKvm: `${tmp}/kvm`, payload: `${tmp}/kvm-probe.elf` });
    t.equal(st.usable, false);
    t.equal(st.stage, 'payload');
    t.match(st.reason, /is missing; build it with "make -C native"/);
  });

  t.test("this host's /dev/kvm: the verdict agrees with a plain run of the payload", async (t) => {
    const tmp = shortDir(t);
    const st = await probeKvm({ qemuBinary: qemu, tmpDir: tmp });
    t.comment(`this host: ${JSON.stringify(st)}`);
    t.same(readdirSync(tmp), [], 'temp dir removed');
    t.same(children(/qemu/), [], 'QEMU reaped');
    if (!existsSync('/dev/kvm')) {
      t.same({ usable: st.usable, stage: st.stage }, { usable: false, stage: 'device' });
      t.match(st.reason, /\/dev\/kvm does not exist/);
      return;
    }
    if (st.stage === 'device') {
      t.match(st.reason, /permission|cannot open/, '/dev/kvm exists but does not open');
      return;
    }
    // Second opinion without QMP or deadline games: the same machine, CPU and payload.
    const plain = await runPayload({ accel: 'kvm', cpu: 'host', timeoutMs: 30_000 });
    t.comment(
      `plain run: status ${plain.code} signal ${plain.signal}, console ${JSON.stringify(plain.console.slice(-40))}, stderr ${JSON.stringify(plain.stderr.slice(0, 200))}`,
    );
    if (st.usable) {
      t.equal(st.stage, 'ok');
      t.equal(plain.code, 85, 'a usable KVM runs the payload to its end');
      t.ok((st.durationMs ?? Infinity) < 1_000, `probe took ${st.durationMs} ms`);
    } else if (st.stage === 'qemu') {
      t.not(plain.code, 85, 'QEMU fails the plain run too');
      const first = qemuErrorLines(plain.stderr, Infinity)[0];
      t.ok(first !== undefined && st.reason.startsWith(first), 'the probe reason starts with what QEMU says');
    } else {
      t.equal(st.stage, 'guest');
      t.match(st.reason, /did not run within|check failed|reset itself|QEMU exited/);
    }
  });
}
