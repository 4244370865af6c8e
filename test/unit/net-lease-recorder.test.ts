// When a DHCP event is worth a lease-file write (a new client, a release, a renewal past the lag, the first one a process sees) and the per-interface rate limit, against a real lease file.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import type { DhcpEvent } from '../../src/net/dhcp-server.js';
import { Ipam, IPAM_FILE } from '../../src/net/ipam.js';
import { LeaseRecorder, writeReason, type DhcpRecord } from '../../src/net/lease-recorder.js';
import type { LeaseInterface } from '../../src/net/types.js';

const MAC = '02:00:00:00:00:01';
const L = 600;
const T0 = Date.parse('2024-05-01T10:00:00Z');
const silent = { info: () => undefined, warn: () => undefined, debug: () => undefined };

const rec = (atMs: number, mac = MAC): DhcpRecord => ({
  acquiredAt: new Date(atMs).toISOString(),
  expiresAt: new Date(atMs + L * 1000).toISOString(),
  clientMac: mac,
});

t.test('writeReason', async (t) => {
  t.equal(writeReason(undefined, rec(T0), true, L), 'new-client', 'no lease recorded yet');
  t.equal(writeReason(rec(T0), rec(T0 + 1000, '02:00:00:00:00:02'), true, L), 'new-client', 'another client MAC');
  t.equal(writeReason(rec(T0), undefined, true, L), 'released');
  t.equal(writeReason(undefined, undefined, true, L), null, 'a release of nothing recorded');
  t.equal(writeReason(rec(T0), rec(T0 + 1000), false, L), 'first-seen', 'the first renewal after a restart is written once');
  t.equal(writeReason(rec(T0), rec(T0 + 1000), true, L), null, 'a renewal a second later is not');
  t.equal(writeReason(rec(T0), rec(T0 + (L / 4) * 1000 - 1), true, L), null, 'nor one just under a quarter lease later');
  t.equal(writeReason(rec(T0), rec(T0 + (L / 4) * 1000), true, L), 'renewal', 'a quarter lease later it is');
  t.equal(writeReason(rec(T0), rec(T0 + (L / 2) * 1000), true, L), 'renewal', 'a client renewing at T1 has each renewal written');
  t.equal(writeReason({ ...rec(T0), expiresAt: 'garbage' }, rec(T0 + 1000), true, L), 'renewal', 'an unreadable record is rewritten');
});

async function setup(
  t: { teardown(fn: () => void): void },
  minWriteIntervalMs: number,
): Promise<{ ipam: Ipam; r: LeaseRecorder; file: string; clock: { now: number } }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-lr-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const ipam = await Ipam.open({ stateDir: dir, subnet: '10.213.0.0/16' });
  await ipam.allocate('u1');
  const li: LeaseInterface = {
    name: 'default',
    binding: 'masquerade',
    mac: MAC,
    model: 'virtio',
    queues: 1,
    tap: 'tap0',
    bridge: 'k6t-eth0',
    guestIp: '10.0.2.2',
    prefix: 24,
    router: '10.0.2.1',
    serverIp: '10.0.2.1',
    mtu: 1500,
  } as LeaseInterface;
  await ipam.update('u1', { interfaces: [li] });
  const clock = { now: T0 };
  const r = new LeaseRecorder({ leases: () => ipam, log: silent, minWriteIntervalMs, now: () => clock.now });
  return { ipam, r, file: path.join(dir, IPAM_FILE), clock };
}

const lease = (atMs: number, mac = MAC): DhcpEvent => ({
  type: 'lease',
  key: 'u1/default',
  clientMac: mac,
  ip: '10.0.2.2',
  leaseSeconds: L,
  at: new Date(atMs),
});
const release = (atMs: number): DhcpEvent => ({ type: 'release', key: 'u1/default', clientMac: MAC, ip: '10.0.2.2', at: new Date(atMs) });
const recorded = (ipam: Ipam): DhcpRecord | undefined => ipam.get('u1')?.interfaces?.[0]?.dhcp;

t.test('10,000 renewals from one client: one write, the right record', async (t) => {
  const { ipam, r, file } = await setup(t, 50);
  const before = ipam.writes;
  // As packets come: a batch per turn of the event loop.
  for (let i = 0; i < 10_000; i++) {
    r.onEvent(lease(T0 + i));
    if (i % 100 === 99) await new Promise((res) => setImmediate(res));
  }
  await r.flush();
  t.equal(ipam.writes - before, 1, 'one lease-file write');
  t.match(r.stats, { events: 10_000, writes: 1, deferred: 0 });
  t.ok(r.stats.skipped >= 9_000, `${r.stats.skipped} events needed no write`);
  const got = recorded(ipam);
  t.equal(got?.clientMac, MAC);
  t.ok(got && Date.parse(got.acquiredAt) >= T0 && Date.parse(got.acquiredAt) < T0 + 100, 'a lease of the first batch is what the file holds');
  t.equal(got && Date.parse(got.expiresAt) - Date.parse(got.acquiredAt), L * 1000, 'expiring a lease time later');
  const onDisk = JSON.parse(fs.readFileSync(file, 'utf8')) as { leases: { u1: { interfaces: LeaseInterface[] } } };
  t.same(onDisk.leases.u1.interfaces[0]?.dhcp, got, 'and it is on disk');
  // Past a quarter lease the renewal is recorded.
  const later = T0 + (L / 4) * 1000 + 1000;
  r.onEvent(lease(later));
  await r.settled();
  t.equal(ipam.writes - before, 2);
  t.equal(recorded(ipam)?.acquiredAt, new Date(later).toISOString());
});

t.test('changes are rate-limited per interface; the last state wins and lands', async (t) => {
  const interval = 200;
  const { ipam, r, clock } = await setup(t, interval);
  const before = ipam.writes;
  const started = Date.now();
  // Release / lease / another MAC, over and over: each a change.
  let i = 0;
  while (Date.now() - started < 1_000) {
    clock.now = Date.now();
    r.onEvent(i % 3 === 0 ? lease(clock.now) : i % 3 === 1 ? release(clock.now) : lease(clock.now, '02:00:00:00:00:02'));
    i++;
    if (i % 100 === 0) await new Promise((res) => setTimeout(res, 5));
  }
  const last = i - 1;
  clock.now = Date.now();
  await r.flush();
  const elapsed = Date.now() - started;
  const writes = ipam.writes - before;
  const bound = 1 + Math.ceil(elapsed / interval) + 1;
  t.ok(i > 1_000, `${i} changing events in ${elapsed} ms`);
  t.ok(writes <= bound, `${writes} writes ≤ ${bound} (one per ${interval} ms, plus the first and the flush)`);
  t.ok(writes >= 2, 'but the changes are written');
  const want = last % 3 === 1 ? undefined : last % 3 === 0 ? MAC : '02:00:00:00:00:02';
  t.equal(recorded(ipam)?.clientMac, want, 'the file holds the last event');
});

t.test('a deferred write lands by itself after the interval; a failed one is tried again', async (t) => {
  const { ipam, r, clock } = await setup(t, 100);
  r.onEvent(lease(T0));
  await r.settled();
  clock.now = T0 + 10;
  r.onEvent(release(T0 + 10));
  t.equal(r.stats.deferred, 1, 'the release waits for the interval');
  t.ok(recorded(ipam), 'not written yet');
  clock.now = T0 + 200;
  await r.settled();
  t.equal(recorded(ipam), undefined, 'written after the interval, without a flush');

  // The lease file cannot be written: the record is kept and tried again.
  const patch = ipam.patchInterface.bind(ipam);
  let fail = 1;
  ipam.patchInterface = (uid, name, fn) => (fail-- > 0 ? Promise.reject(new Error('disk full')) : patch(uid, name, fn));
  clock.now = T0 + 400;
  r.onEvent(lease(T0 + 400));
  await r.settled();
  t.equal(recorded(ipam)?.acquiredAt, new Date(T0 + 400).toISOString(), 'written on the second try');
});

t.test('events for a lease that is gone, or before start, are dropped', async (t) => {
  const { ipam, r } = await setup(t, 50);
  await ipam.release('u1');
  const before = ipam.writes;
  r.onEvent(lease(T0));
  await r.flush();
  t.equal(ipam.writes, before);
  const early = new LeaseRecorder({ leases: () => null, log: silent });
  early.onEvent(lease(T0));
  await early.flush();
  t.equal(early.stats.writes, 0);
});
