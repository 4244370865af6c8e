// The folder lock: one holder at a time (another open of the same file is refused, naming the holder), released on release() or when the holder dies; one lock for a folder named twice.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { VmletError } from '../../src/errors.js';
import { LOCK_FILE, lockDir, lockDirs, lockDirsWaiting } from '../../src/sys/dir-lock.js';
import { which } from '../support/which.js';

const tmp = (): string => fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-lock-'));

t.test('one holder; the second is refused with the holder named; release frees it', async (t) => {
  const dir = tmp();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const a = lockDir(dir, 'the state folder');
  t.equal(fs.readFileSync(path.join(dir, LOCK_FILE), 'utf8'), `${process.pid}\n`, 'the lock file names the holder');
  const e = t.throws(() => lockDir(dir, 'the state folder')) as unknown;
  t.ok(e instanceof VmletError && e.code === 'DAEMON_ALREADY_RUNNING', 'DAEMON_ALREADY_RUNNING');
  t.match((e as Error).message, new RegExp(`the state folder ${dir} is in use by another vmlet daemon \\(pid ${process.pid}\\)`));
  t.match((e as VmletError).details, { dir, holderPid: process.pid });
  a.release();
  a.release();
  const b = lockDir(dir, 'the state folder');
  t.pass('taken again after release (and a second release is harmless)');
  b.release();
});

t.test('a folder named twice is locked once; a refusal releases what was taken', async (t) => {
  const d1 = tmp();
  const d2 = tmp();
  t.teardown(() => {
    fs.rmSync(d1, { recursive: true, force: true });
    fs.rmSync(d2, { recursive: true, force: true });
  });
  const both = lockDirs([
    { dir: d1, what: 'the state folder' },
    { dir: `${d1}/.`, what: 'the run folder' },
  ]);
  t.equal(both.length, 1, 'one lock');
  const held = lockDir(d2, 'the run folder');
  const d3 = tmp();
  t.teardown(() => fs.rmSync(d3, { recursive: true, force: true }));
  t.throws(() =>
    lockDirs([
      { dir: d3, what: 'x' },
      { dir: d2, what: 'the run folder' },
    ]),
  );
  for (const l of both) l.release();
  held.release();
});

t.test("a lock held by another process, and freed by that process's death", { skip: which('flock') ? false : 'needs util-linux flock(1)' }, async (t) => {
  const dir = tmp();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, LOCK_FILE);
  fs.writeFileSync(file, '');
  const holder = spawn('flock', ['-x', '-n', '-o', file, 'sleep', '60'], { stdio: 'ignore' });
  // flock(1) takes the lock before it runs sleep; -o: only flock itself holds it, not sleep.
  await new Promise((r) => setTimeout(r, 300));
  const e = t.throws(() => lockDir(dir, 'the run folder')) as unknown;
  t.ok(e instanceof VmletError && e.code === 'DAEMON_ALREADY_RUNNING', 'refused while another process holds it');
  t.notMatch((e as Error).message, /pid/, 'no pid named when the holder wrote none');
  holder.kill('SIGKILL');
  await new Promise((r) => holder.once('exit', r));
  const l = lockDir(dir, 'the run folder');
  t.pass('free once the holder died');
  l.release();
});

t.test('waiting for the holder to let go (a DaemonSet pod starting beside its terminating predecessor)', async (t) => {
  const dir = tmp();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const first = lockDir(dir, 'the run folder');
  const waits: string[] = [];
  const second = lockDirsWaiting([{ dir, what: 'the run folder' }], 5_000, (e) => waits.push(e.code), 20);
  await new Promise((r) => setTimeout(r, 200));
  first.release();
  const locks = await second;
  t.equal(locks.length, 1, 'taken once the first let go');
  t.same(waits, ['DAEMON_ALREADY_RUNNING'], 'the wait was reported once');
  for (const l of locks) l.release();
  const held = lockDir(dir, 'the run folder');
  await t.rejects(
    lockDirsWaiting([{ dir, what: 'the run folder' }], 100, () => undefined, 20),
    { code: 'DAEMON_ALREADY_RUNNING' },
    'and gives up after the wait',
  );
  held.release();
});
