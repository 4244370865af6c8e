import t from 'tap';
import { mkdir, readdir, readFile, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic } from '../../src/source/atomic-file.js';
import { LocalStore } from '../../src/source/local-store.js';
import { captureLogger, steppingClock, vm } from '../support/store-helpers.js';

const vmDir = (dir: string, ns = 'default'): string => path.join(dir, 'objects/virtualmachines', ns);

async function seeded(dir: string): Promise<void> {
  const s = await LocalStore.open({ dir, logger: captureLogger().logger, now: steppingClock() });
  await s.create(vm('good'));
  await s.create(vm('other'));
  await s.close();
}

t.test('a file that does not parse is quarantined with a log line, the rest loads', async (t) => {
  const dir = t.testdir({});
  await seeded(dir);
  await writeFile(path.join(vmDir(dir), 'torn.json'), '{"apiVersion": "vmlet.io/v1alpha1", "kind": "Virtual');
  await writeFile(path.join(vmDir(dir), 'other.json'), '');
  const log = captureLogger();
  const s = await LocalStore.open({ dir, logger: log.logger });
  t.teardown(() => s.close());
  t.same(
    (await s.list('VirtualMachine')).map((o) => o.metadata.name),
    ['good'],
  );
  const q = (await readdir(path.join(dir, 'quarantine'))).sort();
  t.equal(q.length, 2);
  t.match(q[0], /^virtualmachines__default__other\.json\.[0-9a-f]+$/);
  t.match(q[1], /^virtualmachines__default__torn\.json\.[0-9a-f]+$/);
  t.same((await readdir(vmDir(dir))).sort(), ['good.json']);
  const warns = log.lines.filter((l) => l['msg'] === 'store: quarantined a file that is not a valid object');
  t.equal(warns.length, 2);
  t.match(warns.map((w) => w['reason']).sort(), ['not valid JSON', 'not valid JSON']);
  t.equal(
    await readFile(path.join(dir, 'quarantine', q[1] ?? ''), 'utf8'),
    '{"apiVersion": "vmlet.io/v1alpha1", "kind": "Virtual',
    'content kept for inspection',
  );
  t.ok(await s.create(vm('torn')), 'the name is usable again');
});

t.test('valid JSON that is not a valid object, or sits at the wrong path, is quarantined too', async (t) => {
  const dir = t.testdir({});
  await seeded(dir);
  const good = JSON.parse(await readFile(path.join(vmDir(dir), 'good.json'), 'utf8')) as Record<string, unknown>;
  await writeFile(path.join(vmDir(dir), 'moved.json'), JSON.stringify(good)); // name inside says "good"
  await writeFile(path.join(vmDir(dir), 'norv.json'), JSON.stringify({ ...good, metadata: { name: 'norv', namespace: 'default', uid: 'u' } }));
  await writeFile(path.join(vmDir(dir), 'array.json'), '[]');
  await writeFile(path.join(vmDir(dir), 'notes.txt'), 'hello');
  await mkdir(path.join(vmDir(dir), 'subdir'));
  await writeFile(path.join(dir, 'objects/virtualmachines/stray-file'), 'x');
  await mkdir(vmDir(dir, 'bad..ns'), { recursive: true });
  await symlink('/etc/passwd', path.join(vmDir(dir), 'link.json'));
  const log = captureLogger();
  const s = await LocalStore.open({ dir, logger: log.logger });
  t.teardown(() => s.close());
  t.same(
    (await s.list('VirtualMachine')).map((o) => o.metadata.name),
    ['good', 'other'],
  );
  t.same((await readdir(vmDir(dir))).sort(), ['good.json', 'other.json']);
  const q = await readdir(path.join(dir, 'quarantine'));
  t.equal(q.length, 8, 'moved, norv, array, notes, subdir, stray-file, bad..ns, link');
  t.equal(log.lines.filter((l) => l['level'] === 40).length, 8);
  t.equal(await readFile('/etc/passwd', 'utf8').then((x) => x.length > 0), true, 'the symlink target is untouched');
});

t.test('temp files left by interrupted writes are removed on open', async (t) => {
  const dir = t.testdir({});
  await seeded(dir);
  await writeFile(path.join(vmDir(dir), '.tmp-0123456789abcdef'), '{"half":');
  await writeFile(path.join(dir, 'objects', '.tmp-feedfacefeedface'), '');
  const log = captureLogger();
  const s = await LocalStore.open({ dir, logger: log.logger });
  t.teardown(() => s.close());
  t.same((await readdir(vmDir(dir))).sort(), ['good.json', 'other.json']);
  t.notOk((await readdir(path.join(dir, 'objects'))).some((n) => n.startsWith('.tmp-')));
  t.equal(log.lines.filter((l) => l['msg'] === 'store: removed a temp file left by an interrupted write').length, 2);
  t.same((await readdir(dir)).sort(), ['objects'], 'nothing quarantined');
});

t.test('a corrupt resourceVersion floor is quarantined and the store still opens above its objects', async (t) => {
  const dir = t.testdir({});
  await seeded(dir);
  await writeFile(path.join(dir, 'objects/resource-version.json'), 'garbage');
  const s = await LocalStore.open({ dir, logger: captureLogger().logger });
  t.teardown(() => s.close());
  t.equal(s.resourceVersion, '2');
  t.equal((await readdir(path.join(dir, 'quarantine'))).length, 1);
});

t.test('writeFileAtomic replaces content and leaves no temp file', async (t) => {
  const dir = t.testdir({ 'f.json': 'old' });
  await writeFileAtomic(path.join(dir, 'f.json'), 'new');
  t.equal(await readFile(path.join(dir, 'f.json'), 'utf8'), 'new');
  t.same(await readdir(dir), ['f.json']);
  await t.rejects(writeFileAtomic(path.join(dir, 'missing-dir/f.json'), 'x'), { code: 'ENOENT' });
  t.same(await readdir(dir), ['f.json']);
});

t.test('open fails cleanly when the directory cannot be used', async (t) => {
  const dir = t.testdir({ 'a-file': 'x' });
  await t.rejects(LocalStore.open({ dir: path.join(dir, 'a-file'), logger: captureLogger().logger }), { code: 'STORE_OPEN_FAILED' });
});
