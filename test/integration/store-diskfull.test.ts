import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { mkdtemp, open as openFile, readdir, readFile, rm, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { errnoCode } from '../../src/source/atomic-file.js';
import { LocalStore } from '../../src/source/local-store.js';
import { captureLogger, steppingClock, vm } from '../support/store-helpers.js';

function mountTmpfs(dir: string): string | undefined {
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k,mode=0700', 'vmlet-store-test', dir], { encoding: 'utf8' });
  return r.status === 0 ? undefined : (r.stderr || String(r.error)).trim();
}

/** Why this test cannot run here, or false. Probes with a real mount so a container without CAP_SYS_ADMIN skips too. */
function skipReason(): string | false {
  if (process.getuid?.() !== 0) return 'needs root to mount a tiny tmpfs';
  const probe = mkdtempSync(path.join(tmpdir(), 'vmlet-store-probe-'));
  try {
    const err = mountTmpfs(probe);
    if (err !== undefined) return `cannot mount tmpfs here: ${err}`;
    spawnSync('umount', [probe]);
    return false;
  } finally {
    rmSync(probe, { recursive: true, force: true });
  }
}

async function tempFiles(dir: string): Promise<string[]> {
  const found: string[] = [];
  const walk = async (d: string): Promise<void> => {
    for (const ent of await readdir(d, { withFileTypes: true })) {
      const p = path.join(d, ent.name);
      if (ent.isDirectory()) await walk(p);
      else if (ent.name.startsWith('.tmp-')) found.push(p);
    }
  };
  await walk(dir);
  return found;
}

/** Write to `file` until the file system says ENOSPC. */
async function fill(file: string): Promise<void> {
  const fh = await openFile(file, 'w');
  try {
    for (const chunk of [Buffer.alloc(4096, 1), Buffer.alloc(1, 1)]) {
      for (;;) {
        try {
          await fh.write(chunk);
        } catch (e) {
          if (errnoCode(e) === 'ENOSPC') break;
          throw e;
        }
      }
    }
  } finally {
    await fh.close().catch(() => undefined);
  }
}

t.test('a full disk fails writes cleanly with STORE_WRITE_FAILED, and the store recovers when space returns', { skip: skipReason() }, async (t) => {
  const mnt = await mkdtemp(path.join(tmpdir(), 'vmlet-store-full-'));
  const mountErr = mountTmpfs(mnt);
  if (mountErr !== undefined) {
    await rm(mnt, { recursive: true, force: true });
    throw new Error(`mount failed after the probe succeeded: ${mountErr}`);
  }
  let store: LocalStore | undefined;
  t.teardown(async () => {
    await store?.close();
    spawnSync('umount', [mnt]);
    await rm(mnt, { recursive: true, force: true });
  });

  const dir = path.join(mnt, 'state');
  const s = await LocalStore.open({ dir, logger: captureLogger().logger, now: steppingClock() });
  store = s;
  const a = await s.create({ ...vm('a'), status: { phase: 'Running' } });
  const vmFile = path.join(dir, 'objects/virtualmachines/default/a.json');
  const before = await readFile(vmFile, 'utf8');

  const filler = path.join(mnt, 'filler');
  await fill(filler);

  const big = { runStrategy: 'Halted', pad: 'z'.repeat(6000) };
  const failures = [
    ['update', () => s.update({ ...a, spec: big })],
    ['updateStatus', () => s.updateStatus('VirtualMachine', 'default', 'a', () => ({ phase: 'Stopped', pad: 'z'.repeat(6000) }))],
    ['create', () => s.create(vm('b', 'default', big))],
    ['create in a new namespace', () => s.create(vm('c', 'fresh', big))],
    [
      'recordEvent',
      () =>
        s.recordEvent({
          involvedObject: { kind: 'VirtualMachine', namespace: 'default', name: 'a', uid: a.metadata.uid },
          type: 'Normal',
          reason: 'R',
          message: 'm'.repeat(900),
        }),
    ],
    ['delete', () => s.delete('VirtualMachine', 'default', 'a')],
  ] as const;
  for (const [what, op] of failures) {
    const err = await (op() as Promise<unknown>).then(
      () => undefined,
      (e: unknown) => e,
    );
    t.match(err, { code: 'STORE_WRITE_FAILED' }, `${what} fails with STORE_WRITE_FAILED`);
    t.equal(errnoCode((err as { cause?: unknown } | undefined)?.cause), 'ENOSPC', `${what}: the cause is ENOSPC`);
  }
  t.equal(await readFile(vmFile, 'utf8'), before, 'the previous version is intact on disk');
  t.same(await s.get('VirtualMachine', 'default', 'a'), a, 'and in memory');
  t.equal(await s.get('VirtualMachine', 'default', 'b'), undefined);
  t.same(await s.listEvents(), []);
  t.same(await tempFiles(mnt), [], 'no temp file left behind');

  await unlink(filler);
  const a2 = await s.update({ ...a, spec: big });
  t.equal(a2.metadata.generation, 2, 'writes work again once space returns');
  t.ok(await s.create(vm('b', 'default', big)));
  t.ok(await s.create(vm('c', 'fresh')));
  t.ok(await s.delete('VirtualMachine', 'default', 'b'));
  await s.close();

  const reopened = await LocalStore.open({ dir, logger: captureLogger().logger });
  store = reopened;
  t.same(
    (await reopened.list('VirtualMachine')).map((o) => `${o.metadata.namespace}/${o.metadata.name}`),
    ['default/a', 'fresh/c'],
  );
  t.same((await reopened.get('VirtualMachine', 'default', 'a'))?.spec, big);
  t.ok(Number(reopened.resourceVersion) > Number(a2.metadata.resourceVersion));
});
