// ensureKvmAccess against a plain file standing in for /dev/kvm: o+rw added once and logged, left alone when present or kept by config, a missing device is nothing, a refusal is a warning.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import t from 'tap';
import { defaultConfig, mergeConfig } from '../../src/daemon/config.js';
import { ensureKvmAccess, octalMode, withOthersRw } from '../../src/daemon/kvm-access.js';

type Tap = Parameters<Parameters<typeof t.test>[0]>[0];

/** A logger whose entries are kept as parsed JSON. */
function capture(): { logger: pino.Logger; entries: Array<Record<string, unknown>> } {
  const entries: Array<Record<string, unknown>> = [];
  const logger = pino({ level: 'debug' }, { write: (s: string) => void entries.push(JSON.parse(s) as Record<string, unknown>) });
  return { logger, entries };
}

function fakeDevice(t: Tap, mode: number): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-kvm-access-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'kvm');
  fs.writeFileSync(file, '');
  fs.chmodSync(file, mode);
  return file;
}

const modeOf = (p: string): number => fs.statSync(p).mode & 0o7777;

t.test('pure helpers', async (t) => {
  t.equal(withOthersRw(0o600), 0o606, '0600: only the bits for others are added (KubeVirt: chmod o+rw)');
  t.equal(withOthersRw(0o660), 0o666, "Debian's 0660 root:kvm becomes systemd's 0666");
  t.equal(withOthersRw(0o020600), 0o606, 'the file type bits of st_mode are ignored');
  t.equal(withOthersRw(0o604), 0o606, 'o+r alone is not enough: QEMU opens the device read-write');
  t.equal(withOthersRw(0o666), undefined, 'nothing to add');
  t.equal(withOthersRw(0o607), undefined, 'o+x does no harm and is left');
  t.equal(octalMode(0o600), '0600');
  t.equal(octalMode(0o020666), '0666');
  t.equal(octalMode(0o4755), '04755');
});

t.test('0600: o+rw added, old and new mode logged once', async (t) => {
  const dev = fakeDevice(t, 0o600);
  const { logger, entries } = capture();
  t.same(await ensureKvmAccess({ devicePath: dev, keep: false, logger }), { outcome: 'changed', from: 0o600, to: 0o606 });
  t.equal(modeOf(dev), 0o606, 'the file now has o+rw');
  t.equal(entries.length, 1, 'one log line');
  t.match(entries[0], { level: 30, device: dev, from: '0600', to: '0606', msg: /o\+rw/ });
  t.same(await ensureKvmAccess({ devicePath: dev, keep: false, logger }), { outcome: 'unchanged', mode: 0o606 }, 'a second run finds it done');
  t.equal(entries.length, 1, 'and logs nothing');
});

t.test('0660 becomes 0666; 0666 is left alone', async (t) => {
  const dev = fakeDevice(t, 0o660);
  const { logger, entries } = capture();
  t.same(await ensureKvmAccess({ devicePath: dev, keep: false, logger }), { outcome: 'changed', from: 0o660, to: 0o666 });
  t.equal(modeOf(dev), 0o666);
  const open = fakeDevice(t, 0o666);
  t.same(await ensureKvmAccess({ devicePath: open, keep: false, logger }), { outcome: 'unchanged', mode: 0o666 });
  t.equal(entries.length, 1, 'only the change is logged');
});

t.test('keep: the mode stays, with a warning naming the ways out', async (t) => {
  const dev = fakeDevice(t, 0o600);
  const { logger, entries } = capture();
  t.same(await ensureKvmAccess({ devicePath: dev, keep: true, logger }), { outcome: 'kept', mode: 0o600 });
  t.equal(modeOf(dev), 0o600, 'untouched');
  t.equal(entries.length, 1);
  t.match(entries[0], { level: 40, mode: '0600', msg: /device_ownership_from_security_context/ });
  const open = fakeDevice(t, 0o666);
  t.same(await ensureKvmAccess({ devicePath: open, keep: true, logger }), { outcome: 'unchanged', mode: 0o666 }, 'nothing to say when it is open');
  t.equal(entries.length, 1);
});

t.test('a missing device is nothing to do', async (t) => {
  const { logger, entries } = capture();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-kvm-access-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  t.same(await ensureKvmAccess({ devicePath: path.join(dir, 'kvm'), keep: false, logger }), { outcome: 'missing' });
  t.same(entries, [], 'not even a log line');
});

t.test('a refusal (EPERM, EROFS) is a warning, never a throw', async (t) => {
  for (const code of ['EPERM', 'EROFS']) {
    const dev = fakeDevice(t, 0o600);
    const { logger, entries } = capture();
    const chmod = (): Promise<void> => Promise.reject(Object.assign(new Error(`${code}: operation refused`), { code }));
    t.same(await ensureKvmAccess({ devicePath: dev, keep: false, logger, chmod }), { outcome: 'refused', mode: 0o600, errno: code });
    t.equal(modeOf(dev), 0o600, `${code}: the mode is as it was`);
    t.equal(entries.length, 1);
    t.match(entries[0], { level: 40, mode: '0600', err: { code }, msg: /cannot add o\+rw/ });
  }
});

t.test('a stat that fails other than ENOENT is a warning too', async (t) => {
  const dev = fakeDevice(t, 0o600);
  const { logger, entries } = capture();
  // A path through a regular file: ENOTDIR, not ENOENT.
  t.same(await ensureKvmAccess({ devicePath: path.join(dev, 'kvm'), keep: false, logger }), { outcome: 'refused', mode: undefined, errno: 'ENOTDIR' });
  t.equal(entries.length, 1);
  t.match(entries[0], { level: 40, msg: /cannot read the mode/ });
});

t.test('config key kvmWorldAccessible: default true, a boolean', async (t) => {
  const base = defaultConfig('/repo');
  t.equal(base.kvmWorldAccessible, true, 'on by default, as on systemd hosts and under KubeVirt');
  t.equal(mergeConfig(base, { kvmWorldAccessible: false }, 'f.yaml').kvmWorldAccessible, false);
  t.throws(() => mergeConfig(base, { kvmWorldAccessible: 'keep' }, 'f.yaml'), { code: 'CONFIG_INVALID', message: /"kvmWorldAccessible" must be a boolean/ });
});
