// Node admission, pure parts and the lock: what VMIs count, each refusal naming its limit, the use and the ask, MACs in use, and concurrent admits that cannot overshoot.
import pino from 'pino';
import t from 'tap';
import type { VMISpec } from '../../src/api/types.js';
import { ADMISSION_REFUSALS, VmController } from '../../src/controller/vm-controller.js';
import type { NodeLimits } from '../../src/daemon/config.js';
import { claimOf, NodeAdmission, refusalOf, usageOf } from '../../src/daemon/node-admission.js';
import { isVmletError, VmletError } from '../../src/errors.js';
import type { KubeObject } from '../../src/source/source.js';

const NONE: NodeLimits = { maxVmis: 0, maxGuestMemory: 0, maxVcpus: 0, maxConnectionsPerClient: 0 };
const Mi = 1024 * 1024;

function spec(o: { memory?: string; cores?: number; sockets?: number; macs?: string[] } = {}): VMISpec {
  return {
    domain: {
      cpu: { cores: o.cores ?? 1, sockets: o.sockets ?? 1, threads: 1 },
      memory: { guest: o.memory ?? '128Mi' },
      devices: { interfaces: (o.macs ?? []).map((m, i) => ({ name: `n${i}`, masquerade: {}, macAddress: m })) },
    },
  } as VMISpec;
}

function stored(name: string, s: VMISpec, phase?: string, deleting = false): KubeObject {
  return {
    apiVersion: 'vmlet.io/v1alpha1',
    kind: 'VirtualMachineInstance',
    metadata: { name, namespace: 'default', uid: `uid-${name}`, resourceVersion: '1', ...(deleting ? { deletionTimestamp: '2024-01-01T00:00:00Z' } : {}) },
    spec: s as unknown as Record<string, unknown>,
    status: phase === undefined ? {} : { phase },
  } as KubeObject;
}

t.test('claim: vCPUs are sockets×cores×threads, memory is domain.memory.guest, MACs normalised', async (t) => {
  const c = claimOf('ns', 'a', spec({ memory: '1Gi', cores: 2, sockets: 2, macs: ['02-AA-bb-00-00-01'] }));
  t.same(c, { name: 'ns/a', vcpus: 4, guestBytes: 1024 * Mi, macs: ['02:aa:bb:00:00:01'] });
  const bad = claimOf('ns', 'b', { domain: { devices: {}, memory: { guest: 'lots' } } } as unknown as VMISpec);
  t.same([bad.vcpus, bad.guestBytes], [0, 0], 'a spec that cannot be sized claims nothing (it fails at start)');
});

t.test('usage: every VMI but Succeeded/Failed counts, deleting ones too (their QEMU still runs)', async (t) => {
  const u = usageOf([
    stored('run', spec({ memory: '256Mi', cores: 2, macs: ['02:00:00:00:00:01'] }), 'Running'),
    stored('new', spec(), undefined),
    stored('going', spec({ memory: '512Mi' }), 'Running', true),
    stored('done', spec({ memory: '4Gi', macs: ['02:00:00:00:00:02'] }), 'Succeeded'),
    stored('dead', spec({ memory: '4Gi' }), 'Failed'),
    { apiVersion: 'v1', kind: 'VirtualMachine', metadata: { name: 'vm', namespace: 'default', uid: 'x', resourceVersion: '1' }, spec: {} } as KubeObject,
  ]);
  t.equal(u.vmis, 3);
  t.equal(u.vcpus, 4);
  t.equal(u.guestBytes, (256 + 128 + 512) * Mi);
  t.same([...u.macs], [['02:00:00:00:00:01', 'default/run']], "a finished VMI's MAC is free again");
});

t.test('each refusal names the limit, the use and the ask; 0 is no limit', async (t) => {
  const usage = usageOf([stored('a', spec({ memory: '768Mi', cores: 3, macs: ['02:00:00:00:00:0a'] }), 'Running')]);
  const claim = claimOf('default', 'b', spec({ memory: '512Mi', cores: 2 }));
  t.equal(refusalOf(NONE, usage, claim), undefined, 'no limits: admitted');
  const vmis = refusalOf({ ...NONE, maxVmis: 1 }, usage, claim);
  t.equal(vmis?.code, 'NODE_LIMIT_VMIS');
  t.equal(vmis?.message, 'node limit limits.maxVmis is 1 VMI: 1 VMI in use, VirtualMachineInstance default/b asks for 1 VMI more');
  const mem = refusalOf({ ...NONE, maxGuestMemory: 1024 * Mi }, usage, claim);
  t.equal(mem?.code, 'NODE_LIMIT_MEMORY');
  t.equal(mem?.message, 'node limit limits.maxGuestMemory is 1Gi: 768Mi in use, VirtualMachineInstance default/b asks for 512Mi more');
  t.match(mem?.details, [{ field: 'spec.domain.memory.guest', limit: 1024 * Mi, used: 768 * Mi, requested: 512 * Mi }]);
  const cpu = refusalOf({ ...NONE, maxVcpus: 4 }, usage, claim);
  t.equal(cpu?.code, 'NODE_LIMIT_VCPUS');
  t.equal(cpu?.message, 'node limit limits.maxVcpus is 4 vCPUs: 3 vCPUs in use, VirtualMachineInstance default/b asks for 2 vCPUs more');
  t.equal(refusalOf({ ...NONE, maxVmis: 2, maxGuestMemory: 1280 * Mi, maxVcpus: 5 }, usage, claim), undefined, 'exactly at every limit: admitted');
  const mac = refusalOf(NONE, usage, claimOf('default', 'c', spec({ macs: ['02:00:00:00:00:0A'] })));
  t.equal(mac?.code, 'NET_MAC_IN_USE');
  t.match(mac?.message, /macAddress 02:00:00:00:00:0a is already used by VirtualMachineInstance default\/a/);
  for (const e of [vmis, mem, cpu, mac]) t.ok(e && ADMISSION_REFUSALS.includes(e.code), `${e?.code} is one the controller waits on`);
});

/** A store of VMIs whose list and create take a tick, so that unserialised admits would interleave. */
function fakeStore(): { vmis: KubeObject[]; list: () => Promise<KubeObject[]>; create: (name: string, s: VMISpec) => Promise<string> } {
  const vmis: KubeObject[] = [];
  const tick = (): Promise<void> => new Promise((r) => setImmediate(r));
  return {
    vmis,
    list: async () => {
      await tick();
      return [...vmis];
    },
    create: async (name, s) => {
      await tick();
      vmis.push(stored(name, s, 'Scheduled'));
      return name;
    },
  };
}

t.test('admit: check and create under one lock, so parallel creates cannot overshoot', async (t) => {
  const store = fakeStore();
  const adm = new NodeAdmission({ limits: { ...NONE, maxVmis: 2 }, listVmis: store.list });
  const names = ['a', 'b', 'c', 'd', 'e'];
  const res = await Promise.allSettled(names.map((n) => adm.admit({ namespace: 'default', name: n, spec: spec() }, () => store.create(n, spec()))));
  t.equal(res.filter((r) => r.status === 'fulfilled').length, 2, 'exactly two admitted');
  t.equal(store.vmis.length, 2, 'two stored');
  for (const r of res) if (r.status === 'rejected') t.ok(isVmletError(r.reason, 'NODE_LIMIT_VMIS'), 'the others: NODE_LIMIT_VMIS');
  // A finished VMI frees its room.
  store.vmis[0]!.status = { phase: 'Succeeded' };
  t.equal(await adm.admit({ namespace: 'default', name: 'f', spec: spec() }, () => store.create('f', spec())), 'f', 'room again once one finished');

  const macStore = fakeStore();
  const macAdm = new NodeAdmission({ limits: NONE, listVmis: macStore.list });
  const same = spec({ macs: ['02:00:00:00:00:77'] });
  const both = await Promise.allSettled(['x', 'y'].map((n) => macAdm.admit({ namespace: 'default', name: n, spec: same }, () => macStore.create(n, same))));
  t.same(
    both.map((r) => r.status),
    ['fulfilled', 'rejected'],
    'two parallel VMIs with one MAC: the second is NET_MAC_IN_USE',
  );
  t.equal(macStore.vmis.length, 1);
});

t.test('check reserves nothing; without limits or MACs nothing is listed', async (t) => {
  let lists = 0;
  const adm = new NodeAdmission({
    limits: NONE,
    listVmis: async () => {
      lists++;
      return [];
    },
  });
  await adm.check({ namespace: 'default', name: 'a', spec: spec() });
  t.equal(await adm.admit({ namespace: 'default', name: 'a', spec: spec() }, async () => 'made'), 'made');
  t.equal(lists, 0, 'the fast path: no list, no lock');
  const limited = new NodeAdmission({ limits: { ...NONE, maxVcpus: 1 }, listVmis: async () => [stored('a', spec(), 'Running')] });
  await t.rejects(limited.check({ namespace: 'default', name: 'b', spec: spec() }), { code: 'NODE_LIMIT_VCPUS' });
});

t.test('the VM controller turns a refusal into one FailedCreate Warning and a retry, not a crash loop', async (t) => {
  const events: Array<{ reason: string; type: string; message: string }> = [];
  const vm = {
    apiVersion: 'vmlet.io/v1alpha1',
    kind: 'VirtualMachine',
    metadata: { name: 'web', namespace: 'default', uid: 'vm-uid', resourceVersion: '1' },
    spec: { runStrategy: 'Always', template: { spec: spec() } },
    status: {},
  };
  let creates = 0;
  let admits = 0;
  const source = {
    get: async (kind: string) => (kind === 'VirtualMachine' ? vm : undefined),
    list: async () => [],
    create: async () => {
      creates++;
      return vm;
    },
    updateStatus: async () => vm,
    delete: async () => vm,
    watch: () => ({ close: () => undefined, [Symbol.asyncIterator]: async function* () {} }),
    recordEvent: async (e: { reason: string; type: string; message: string }) => {
      events.push(e);
    },
  };
  const refusal = new VmletError('NODE_LIMIT_VMIS', 'node limit limits.maxVmis is 1 VMI: 1 VMI in use, VirtualMachineInstance default/web asks for 1 VMI more');
  let now = 1_000_000;
  const c = new VmController({
    source: source as unknown as ConstructorParameters<typeof VmController>[0]['source'],
    nodeName: 'n1',
    logger: pino({ level: 'silent' }),
    now: () => now,
    admit: async () => {
      admits++;
      throw refusal;
    },
  });
  c.start();
  t.teardown(() => c.stop());
  c.enqueue('default', 'web');
  await c.idle();
  c.enqueue('default', 'web');
  await c.idle();
  now += 10_000;
  t.equal(admits, 2, 'each reconcile asks admission');
  t.equal(creates, 0, 'nothing created');
  t.same(
    events.map((e) => [e.type, e.reason, e.message]),
    [['Warning', 'FailedCreate', `${refusal.message} (NODE_LIMIT_VMIS)`]],
    'one Warning for the same refusal',
  );
});
