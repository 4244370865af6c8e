// MAC validation and the stable, locally administered MAC derived from a uid.
import t from 'tap';
import { bytesToMac, deriveMac, macToBytes, normalizeMac } from '../../src/net/mac.js';

t.test('normalizeMac', async (t) => {
  t.equal(normalizeMac('DE:AD:BE:EF:00:01'), 'de:ad:be:ef:00:01');
  t.equal(normalizeMac('02-00-00-00-00-0a'), '02:00:00:00:00:0a');
  for (const bad of [
    '02:00:00:00:00',
    '02:00:00:00:00:00:00',
    '02:00-00:00:00:00',
    'zz:00:00:00:00:00',
    '01:00:5e:00:00:01',
    'ff:ff:ff:ff:ff:ff',
    '00:00:00:00:00:00',
    '',
  ]) {
    t.throws(() => normalizeMac(bad), { code: 'NET_INVALID_MAC' }, bad);
  }
});

t.test('deriveMac', async (t) => {
  const m = deriveMac('3f2a9c1e-7b4d-4e2a-9f00-123456789abc', 'default');
  t.equal(m, deriveMac('3f2a9c1e-7b4d-4e2a-9f00-123456789abc', 'default'), 'stable');
  t.not(m, deriveMac('3f2a9c1e-7b4d-4e2a-9f00-123456789abd', 'default'), 'differs per uid');
  t.not(m, deriveMac('3f2a9c1e-7b4d-4e2a-9f00-123456789abc', 'other'), 'differs per interface');
  const first = parseInt(m.slice(0, 2), 16);
  t.equal(first & 1, 0, 'unicast');
  t.equal(first & 2, 2, 'locally administered');
  t.equal(normalizeMac(m), m, 'valid');
  // fixed value: a change of the derivation would change every VM's MAC (and its DHCP identity)
  t.equal(deriveMac('00000000-0000-0000-0000-000000000000', 'default'), '02:1f:22:ff:52:e6', '02 + sha256(uid/iface)[0..5]');
  t.same(bytesToMac(macToBytes(m)), m);
});
