// NodeRegistration against fake client-node APIs: labels, Lease create and renew, an API outage (logged once, expiry reported once, recovery), unregister; and the pure leaseIsFresh.
import { ApiException } from '@kubernetes/client-node';
import pino from 'pino';
import t from 'tap';
import { leaseIsFresh, nodeLabelsPatch, NodeRegistration, type NodeRegistrationApis } from '../../src/daemon/kube-node-registration.js';
import type { VmletError } from '../../src/errors.js';

interface Call {
  op: string;
  body?: unknown;
  contentType?: string;
}

/** A fake API server: records calls, holds one Lease, fails while `down`. */
function fakeApis() {
  const s = { down: false, lease: undefined as Record<string, unknown> | undefined, calls: [] as Call[], labels: {} as Record<string, string> };
  const fail = (): void => {
    if (s.down) throw new Error('connect ECONNREFUSED');
  };
  const apis: NodeRegistrationApis = {
    core: {
      patchNode: async (p) => {
        fail();
        const body = p.body as { metadata: { labels: Record<string, string> } };
        s.calls.push({ op: 'patchNode', body });
        Object.assign(s.labels, body.metadata.labels);
        return {};
      },
    },
    coordination: {
      createNamespacedLease: async (p) => {
        fail();
        s.calls.push({ op: 'create', body: JSON.parse(JSON.stringify(p.body)) });
        s.lease = JSON.parse(JSON.stringify(p.body)) as Record<string, unknown>;
        return p.body;
      },
      patchNamespacedLease: async (p) => {
        fail();
        if (!s.lease) throw new ApiException(404, 'not found', {}, {});
        const body = JSON.parse(JSON.stringify(p.body)) as { spec: Record<string, unknown> };
        s.calls.push({ op: 'patch', body });
        s.lease = { ...s.lease, spec: { ...(s.lease.spec as object), ...body.spec } };
        return {};
      },
      deleteNamespacedLease: async () => {
        fail();
        s.calls.push({ op: 'delete' });
        if (!s.lease) throw new ApiException(404, 'not found', {}, {});
        s.lease = undefined;
        return {};
      },
    },
  };
  return { s, apis };
}

async function until(what: string, fn: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

t.test('leaseIsFresh', async (t) => {
  const now = Date.parse('2026-01-01T00:01:00Z');
  t.ok(leaseIsFresh({ spec: { renewTime: '2026-01-01T00:00:30.123456Z', leaseDurationSeconds: 40 } }, now), 'renewed 30 s ago, duration 40 s');
  t.notOk(leaseIsFresh({ spec: { renewTime: '2026-01-01T00:00:10.000000Z', leaseDurationSeconds: 40 } }, now), 'renewed 50 s ago');
  t.ok(leaseIsFresh({ spec: { renewTime: new Date(now - 1000), leaseDurationSeconds: 40 } }, new Date(now)), 'Date objects too');
  t.notOk(leaseIsFresh({ spec: { leaseDurationSeconds: 40 } }, now), 'never renewed');
  t.notOk(leaseIsFresh({ spec: { renewTime: 'garbage', leaseDurationSeconds: 40 } }, now), 'unparsable time');
  t.notOk(leaseIsFresh(undefined, now), 'no lease');
  t.same(nodeLabelsPatch(false), { metadata: { labels: { 'vmlet.io/schedulable': 'false' } } }, 'unregistering leaves the kvm label alone');
});

t.test('labels, create, renew, outage, recovery, unregister', async (t) => {
  const { s, apis } = fakeApis();
  let clock = 1_000_000;
  const lines: Array<{ msg: string; level: number }> = [];
  const logger = pino({ level: 'info' }, { write: (l: string) => void lines.push(JSON.parse(l) as { msg: string; level: number }) });
  const expired: VmletError[] = [];
  const reg = new NodeRegistration({
    apis,
    nodeName: 'n1',
    kvm: { usable: false, reason: 'no /dev/kvm' },
    renewIntervalMs: 30,
    leaseDurationSeconds: 1,
    retryInitialMs: 5,
    clock: { now: () => clock },
    logger,
    onLeaseExpired: (e) => expired.push(e),
  });
  t.equal(s.calls.length, 0, 'the constructor does nothing');
  t.equal(reg.leaseName, 'vmlet-node-n1');
  t.equal(reg.namespace, 'vmlet');
  await reg.start();
  t.same(s.labels, { 'vmlet.io/schedulable': 'true', 'vmlet.io/kvm': 'false' });
  t.match(s.lease, { metadata: { name: 'vmlet-node-n1', namespace: 'vmlet' }, spec: { holderIdentity: 'n1', leaseDurationSeconds: 1 } });
  t.match((s.lease?.spec as { renewTime: string }).renewTime, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/, 'renewTime is a MicroTime');
  t.equal(reg.lastRenewed?.getTime(), clock);

  clock += 500;
  await until('a renewal', () => s.calls.some((c) => c.op === 'patch'));
  await until('lastRenewed moves', () => reg.lastRenewed?.getTime() === clock);
  t.ok(leaseIsFresh(s.lease as never, clock), 'fresh after renewal');

  s.down = true;
  const failedAt = clock;
  await new Promise((r) => setTimeout(r, 150));
  t.equal(lines.filter((l) => /renewing the Lease failed/.test(l.msg)).length, 1, 'one warning per outage, not per try');
  t.equal(expired.length, 0, 'not yet past the lease duration');
  clock += 1500;
  await until('expiry reported', () => expired.length > 0);
  await new Promise((r) => setTimeout(r, 100));
  t.equal(expired.length, 1, 'reported once per outage');
  t.equal(expired[0]?.code, 'NODE_LEASE_EXPIRED');
  t.equal(reg.lastRenewed?.getTime(), failedAt, 'lastRenewed stays at the last success');

  const labelPatches = s.calls.filter((c) => c.op === 'patchNode').length;
  s.down = false;
  await until('renewed again', () => reg.lastRenewed?.getTime() === clock);
  t.ok(
    lines.some((l) => /renewed again after an outage/.test(l.msg)),
    'recovery logged',
  );
  await until('labels set again after the outage', () => s.calls.filter((c) => c.op === 'patchNode').length > labelPatches);

  s.lease = undefined;
  clock += 10;
  await until('Lease created again when deleted behind our back', () => s.lease !== undefined);

  await reg.stop({ unregister: true });
  t.same(s.labels, { 'vmlet.io/schedulable': 'false', 'vmlet.io/kvm': 'false' }, 'schedulable=false, kvm kept');
  t.equal(s.lease, undefined, 'Lease deleted');
  const n = s.calls.length;
  await new Promise((r) => setTimeout(r, 100));
  t.equal(s.calls.length, n, 'nothing renewed after stop');
});

t.test('labels retried with backoff when the API server is down at start; unregister failure is an error', async (t) => {
  const { s, apis } = fakeApis();
  s.down = true;
  const reg = new NodeRegistration({
    apis,
    nodeName: 'n2',
    leaseName: 'test-lease',
    kvm: { usable: true },
    renewIntervalMs: 20,
    retryInitialMs: 5,
    logger: pino({ level: 'silent' }),
  });
  await reg.start();
  t.equal(reg.labelled, false);
  t.equal(reg.lastRenewed, undefined);
  s.down = false;
  await until('labelled', () => reg.labelled);
  await until('renewed', () => reg.lastRenewed !== undefined);
  t.same(s.labels, { 'vmlet.io/schedulable': 'true', 'vmlet.io/kvm': 'true' });
  t.match(s.lease, { metadata: { name: 'test-lease' } });
  s.down = true;
  await t.rejects(reg.stop({ unregister: true }), { code: 'NODE_UNREGISTER_FAILED' });
});
