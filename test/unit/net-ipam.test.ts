// IPAM: one address per uid, never twice, persisted atomically across restarts, released on delete.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { Ipam, IPAM_FILE, writeFileAtomic } from '../../src/net/ipam.js';

function dir(t: { teardown(fn: () => void): void }): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-ipam-'));
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

t.test('allocate, idempotent, persisted, released', async (t) => {
  const d = dir(t);
  const ipam = await Ipam.open({ stateDir: d, subnet: '10.213.0.0/16' });
  const a = await ipam.allocate('uid-a', { hostname: 'a' });
  t.equal(a.address, '10.213.0.2', 'first address after the gateway');
  t.equal((await ipam.allocate('uid-a')).address, '10.213.0.2', 'same uid, same address');
  const b = await ipam.allocate('uid-b');
  t.equal(b.address, '10.213.0.3');
  const reopened = await Ipam.open({ stateDir: d, subnet: '10.213.0.0/16' });
  t.equal(reopened.get('uid-a')?.address, '10.213.0.2', 'survives a restart');
  t.equal(reopened.get('uid-a')?.hostname, 'a');
  t.equal(reopened.byAddress('10.213.0.3')?.uid, 'uid-b');
  t.equal(await reopened.release('uid-a'), true);
  t.equal(await reopened.release('uid-a'), false, 'release twice is fine');
  const c = await reopened.allocate('uid-c');
  t.equal(c.address, '10.213.0.4', 'a released address is not handed out again at once (round robin)');
  t.same(fs.readdirSync(d), [IPAM_FILE], 'no temp files left');
  const onDisk = JSON.parse(fs.readFileSync(path.join(d, IPAM_FILE), 'utf8')) as { leases: object };
  t.same(Object.keys(onDisk.leases).sort(), ['uid-b', 'uid-c']);
  t.equal(fs.statSync(path.join(d, IPAM_FILE)).mode & 0o777, 0o600);
});

t.test('concurrent allocations never share an address; exhaustion', async (t) => {
  const d = dir(t);
  const ipam = await Ipam.open({ stateDir: d, subnet: '192.168.77.0/29' });
  // /29: .1 gateway, .2-.6 free, .0/.7 network/broadcast
  const got = await Promise.all(['a', 'b', 'c', 'd', 'e'].map((u) => ipam.allocate(u)));
  t.same(got.map((l) => l.address).sort(), ['192.168.77.2', '192.168.77.3', '192.168.77.4', '192.168.77.5', '192.168.77.6']);
  await t.rejects(ipam.allocate('f'), { code: 'IPAM_EXHAUSTED' });
  await ipam.release('c');
  t.equal((await ipam.allocate('f')).address, '192.168.77.4', 'wraps around to the freed address');
});

t.test('update keeps address, refuses unknown uid', async (t) => {
  const ipam = await Ipam.open({ stateDir: dir(t), subnet: '10.0.0.0/24' });
  await ipam.allocate('u');
  const l = await ipam.update('u', { netns: 'vmlet-x', interfaces: [] });
  t.equal(l.address, '10.0.0.2');
  t.equal(l.netns, 'vmlet-x');
  await t.rejects(ipam.update('nope', {}), { code: 'IPAM_NO_LEASE' });
});

t.test('corrupt or foreign state is refused', async (t) => {
  const d = dir(t);
  fs.writeFileSync(path.join(d, IPAM_FILE), '{not json');
  await t.rejects(Ipam.open({ stateDir: d, subnet: '10.0.0.0/24' }), { code: 'IPAM_STATE_CORRUPT' });
  fs.writeFileSync(
    path.join(d, IPAM_FILE),
    JSON.stringify({
      version: 1,
      subnet: '10.0.0.0/24',
      next: '10.0.0.2',
      leases: { a: { uid: 'a', address: '10.0.0.2' }, b: { uid: 'b', address: '10.0.0.2' } },
    }),
  );
  await t.rejects(Ipam.open({ stateDir: d, subnet: '10.0.0.0/24' }), { code: 'IPAM_STATE_CORRUPT', message: /leased to both/ });
  fs.writeFileSync(
    path.join(d, IPAM_FILE),
    JSON.stringify({ version: 1, subnet: '10.0.0.0/24', next: '10.0.0.3', leases: { a: { uid: 'a', address: '10.0.0.2' } } }),
  );
  await t.rejects(Ipam.open({ stateDir: d, subnet: '10.1.0.0/24' }), { code: 'IPAM_SUBNET_CHANGED' });
  await t.rejects(Ipam.open({ stateDir: d, subnet: '10.1.0.1/24' }), { code: 'NET_INVALID_SUBNET' });
});

t.test('a failed write leaves memory and disk unchanged', async (t) => {
  const d = dir(t);
  const ipam = await Ipam.open({ stateDir: d, subnet: '10.0.0.0/24' });
  await ipam.allocate('a');
  fs.chmodSync(d, 0o500);
  t.teardown(() => fs.chmodSync(d, 0o700));
  if (process.getuid?.() === 0) {
    // root ignores directory permissions: make the target a directory so the rename fails instead
    fs.chmodSync(d, 0o700);
    fs.rmSync(path.join(d, IPAM_FILE));
    fs.mkdirSync(path.join(d, IPAM_FILE));
    fs.writeFileSync(path.join(d, IPAM_FILE, 'x'), '');
  }
  await t.rejects(ipam.allocate('b'), { code: 'IPAM_WRITE_FAILED' });
  t.equal(ipam.get('b'), undefined, 'not allocated in memory');
  t.same(
    fs.readdirSync(d).filter((f) => f.includes('.tmp-')),
    [],
    'temp file removed',
  );
});

t.test('writeFileAtomic replaces the file', async (t) => {
  const f = path.join(dir(t), 'x.json');
  await writeFileAtomic(f, 'one');
  await writeFileAtomic(f, 'two');
  t.equal(fs.readFileSync(f, 'utf8'), 'two');
});
