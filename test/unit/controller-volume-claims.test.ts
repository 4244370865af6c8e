// A VMI's claims before its launcher pod (pure): missing, unbound, bound, Block, readOnly, ephemeral, local volumes, the condition it waits with and the volumeStatus written.
import t from 'tap';
import type { V1PersistentVolume, V1PersistentVolumeClaim } from '@kubernetes/client-node';
import type { Condition, Volume, VolumeStatus } from '../../src/api/types.js';
import {
  checkClaims,
  claimStep,
  claimVolumes,
  decimalString,
  isClaimsCondition,
  withClaimVolumeStatus,
  type ClaimCheck,
} from '../../src/controller/volume-claims.js';

const NOW = Date.parse('2026-01-01T00:00:00Z');

function pvc(
  name: string,
  o: { phase?: string; mode?: 'Block' | 'Filesystem'; capacity?: string | null; request?: string; pv?: string; modes?: string[]; deleting?: boolean } = {},
): V1PersistentVolumeClaim {
  return {
    metadata: { name, namespace: 'apps', ...(o.deleting ? { deletionTimestamp: new Date(NOW) } : {}) },
    spec: {
      accessModes: ['ReadWriteOnce'],
      ...(o.mode ? { volumeMode: o.mode } : {}),
      ...(o.request ? { resources: { requests: { storage: o.request } } } : {}),
      ...(o.pv !== undefined ? { volumeName: o.pv } : { volumeName: `pv-${name}` }),
    },
    status: {
      phase: o.phase ?? 'Bound',
      ...(o.modes ? { accessModes: o.modes } : {}),
      ...(o.capacity === null ? {} : { capacity: { storage: o.capacity ?? '10Gi' } }),
    },
  };
}

function pv(name: string, terms?: Array<{ key: string; values: string[] }>): V1PersistentVolume {
  return {
    metadata: { name },
    spec: {
      ...(terms
        ? { nodeAffinity: { required: { nodeSelectorTerms: terms.map((x) => ({ matchExpressions: [{ key: x.key, operator: 'In', values: x.values }] })) } } }
        : {}),
    },
  };
}

const VOLUMES: Volume[] = [
  { name: 'root', containerDisk: { image: 'quay.io/containerdisks/debian:12' } },
  { name: 'data', persistentVolumeClaim: { claimName: 'web-data' } },
  { name: 'raw', persistentVolumeClaim: { claimName: 'web-raw', readOnly: true } },
  { name: 'base', ephemeral: { persistentVolumeClaim: { claimName: 'golden' } } },
];

function check(claims: V1PersistentVolumeClaim[], volumes: V1PersistentVolume[] = [], vols: Volume[] = VOLUMES): ClaimCheck {
  const byName = new Map(claims.map((c) => [c.metadata!.name!, c]));
  const pvs = new Map(volumes.map((v) => [v.metadata!.name!, v]));
  return checkClaims({ namespace: 'apps', volumes: vols, claim: (n) => byName.get(n), volume: (n) => pvs.get(n) });
}

const ALL_PVS = [pv('pv-web-data'), pv('pv-web-raw'), pv('pv-golden')];

t.test('claimVolumes: persistentVolumeClaim and ephemeral, read-only as mounted', async (t) => {
  t.same(claimVolumes(VOLUMES), [
    { volume: 'data', claimName: 'web-data', readOnly: false, ephemeral: false },
    { volume: 'raw', claimName: 'web-raw', readOnly: true, ephemeral: false },
    { volume: 'base', claimName: 'golden', readOnly: true, ephemeral: true },
  ]);
  t.same(claimVolumes(undefined), []);
});

t.test('bound claims: their mode, capacity and access modes', async (t) => {
  const c = check(
    [pvc('web-data'), pvc('web-raw', { mode: 'Block', capacity: '1Gi', modes: ['ReadWriteMany'] }), pvc('golden', { mode: 'Filesystem', capacity: '2Gi' })],
    ALL_PVS,
  );
  t.same(c, {
    ready: true,
    claims: {
      data: { claimName: 'web-data', volumeMode: 'Filesystem', capacity: '10Gi', capacityBytes: 10 * 1024 ** 3, accessModes: ['ReadWriteOnce'] },
      raw: { claimName: 'web-raw', volumeMode: 'Block', capacity: '1Gi', capacityBytes: 1024 ** 3, accessModes: ['ReadWriteMany'] },
      base: { claimName: 'golden', volumeMode: 'Filesystem', capacity: '2Gi', capacityBytes: 2 * 1024 ** 3, accessModes: ['ReadWriteOnce'] },
    },
    nodeTerms: [],
  });
  t.same(check([], [], [{ name: 'root', containerDisk: { image: 'x:1' } }]), { ready: true, claims: {}, nodeTerms: [] }, 'no claims: ready');
  const fromSpec = check([pvc('web-data', { capacity: null, request: '5Gi' })], [pv('pv-web-data')], VOLUMES.slice(0, 2));
  t.match(fromSpec, { ready: true, claims: { data: { capacity: '5Gi' } } }, 'the requested size when the status has none');
  const noPv = check([pvc('web-data', { pv: '' })], [], VOLUMES.slice(0, 2));
  t.match(noPv, { ready: true }, 'a claim that names no volume needs no PersistentVolume');
});

t.test('claims not ready: missing, Pending, Lost, deleting, no capacity, PersistentVolume unknown', async (t) => {
  const missing = check([pvc('web-data'), pvc('golden', { phase: 'Pending' })], ALL_PVS);
  t.same(
    missing,
    {
      ready: false,
      reason: 'FailedPvcNotFound',
      message:
        'PersistentVolumeClaim "web-raw" of volume "raw" does not exist; PersistentVolumeClaim "golden" of volume "base" is Pending, not Bound (no PersistentVolume bound to it yet) (namespace "apps")',
    },
    'FailedPvcNotFound wins; every claim that is not ready is named',
  );
  const pending = check([pvc('web-data', { phase: 'Pending', pv: '' }), pvc('web-raw'), pvc('golden')], ALL_PVS);
  t.same(pending, {
    ready: false,
    reason: 'PVCNotReady',
    message: 'PersistentVolumeClaim "web-data" of volume "data" is Pending, not Bound (no PersistentVolume bound to it yet) (namespace "apps")',
  });
  const one = (c: V1PersistentVolumeClaim, pvs = ALL_PVS): ClaimCheck => check([c], pvs, VOLUMES.slice(1, 2));
  t.match(one(pvc('web-data', { phase: 'Lost' })), { ready: false, reason: 'PVCNotReady', message: /is Lost, not Bound \(its PersistentVolume is gone\)/ });
  t.match(one(pvc('web-data', { deleting: true })), { ready: false, reason: 'PVCNotReady', message: /"web-data" of volume "data" is being deleted/ });
  t.match(one(pvc('web-data', { capacity: null })), { ready: false, reason: 'PVCNotReady', message: /no readable capacity/ });
  t.match(one(pvc('web-data', { capacity: 'lots' })), {
    ready: false,
    reason: 'PVCNotReady',
    message: /no readable capacity \(status\.capacity\.storage: "lots"\)/,
  });
  t.match(one(pvc('web-data'), []), { ready: false, reason: 'PVCNotReady', message: /is Bound to PersistentVolume "pv-web-data", which is not found/ });
  const noStatus: V1PersistentVolumeClaim = { metadata: { name: 'web-data' }, spec: {} };
  t.match(one(noStatus), { ready: false, reason: 'PVCNotReady', message: /is Pending, not Bound/ }, 'a claim without status is Pending');
});

t.test('local volumes: the required node affinity of each bound PersistentVolume', async (t) => {
  const c = check(
    [pvc('web-data'), pvc('web-raw'), pvc('golden')],
    [
      pv('pv-web-data', [{ key: 'kubernetes.io/hostname', values: ['n1'] }]),
      pv('pv-web-raw'),
      pv('pv-golden', [
        { key: 'zone', values: ['a'] },
        { key: 'zone', values: ['b'] },
      ]),
    ],
  );
  t.same(c.ready && c.nodeTerms, [
    [{ matchExpressions: [{ key: 'kubernetes.io/hostname', operator: 'In', values: ['n1'] }] }],
    [{ matchExpressions: [{ key: 'zone', operator: 'In', values: ['a'] }] }, { matchExpressions: [{ key: 'zone', operator: 'In', values: ['b'] }] }],
  ]);
});

t.test('volumeStatus: an entry per claim, the overhead as a decimal string for Filesystem claims, other fields kept', async (t) => {
  const c = check([pvc('web-data'), pvc('web-raw', { mode: 'Block', capacity: '1Gi' }), pvc('golden', { capacity: '2Gi' })], ALL_PVS);
  if (!c.ready) throw new Error('not ready');
  const existing: VolumeStatus[] = [
    { name: 'root', target: 'vda', format: 'qcow2' },
    { name: 'base', target: 'vdc', size: 5, persistentVolumeClaimInfo: { claimName: 'old' } },
  ];
  const out = withClaimVolumeStatus(existing, c.claims, 0.055);
  t.same(out, [
    { name: 'root', target: 'vda', format: 'qcow2' },
    {
      name: 'base',
      target: 'vdc',
      size: 5,
      persistentVolumeClaimInfo: {
        claimName: 'golden',
        accessModes: ['ReadWriteOnce'],
        volumeMode: 'Filesystem',
        capacity: { storage: '2Gi' },
        filesystemOverhead: '0.055',
      },
    },
    {
      name: 'data',
      target: '',
      persistentVolumeClaimInfo: {
        claimName: 'web-data',
        accessModes: ['ReadWriteOnce'],
        volumeMode: 'Filesystem',
        capacity: { storage: '10Gi' },
        filesystemOverhead: '0.055',
      },
    },
    {
      name: 'raw',
      target: '',
      persistentVolumeClaimInfo: { claimName: 'web-raw', accessModes: ['ReadWriteOnce'], volumeMode: 'Block', capacity: { storage: '1Gi' } },
    },
  ]);
  t.same(existing[1]?.persistentVolumeClaimInfo, { claimName: 'old' }, 'the input is not changed');
  t.equal(decimalString(0.055), '0.055');
  t.equal(decimalString(0), '0');
  t.equal(decimalString(1e-7), '0.0000001', 'never an exponent');
});

t.test('claimStep: wait with KubeVirt’s condition, written once; place with the volumeStatus to write', async (t) => {
  const notFound = check([], ALL_PVS, VOLUMES.slice(1, 2));
  const unschedulable: Condition = { type: 'PodScheduled', status: 'False', reason: 'Unschedulable', message: '0/1 nodes are available.' };
  const other: Condition = { type: 'SoftwareEmulation', status: 'True' };
  const w = claimStep({ vmi: { status: { phase: 'Pending', conditions: [unschedulable, other] } }, check: notFound, filesystemOverhead: 0.055, now: NOW });
  const message = 'PersistentVolumeClaim "web-data" of volume "data" does not exist (namespace "apps")';
  t.same(
    w,
    {
      action: 'wait',
      status: {
        phase: 'Pending',
        conditions: [other, { type: 'Synchronized', status: 'False', reason: 'FailedPvcNotFound', message, lastTransitionTime: '2026-01-01T00:00:00.000Z' }],
      },
    },
    'Pending, Synchronized=False FailedPvcNotFound naming the claim; the old Unschedulable goes (no node was tried)',
  );
  if (w.action !== 'wait' || w.status === undefined) throw new Error('no status');
  t.ok(isClaimsCondition(w.status.conditions[1]!));
  t.same(
    claimStep({ vmi: { status: w.status }, check: notFound, filesystemOverhead: 0.055, now: NOW + 1000 }),
    { action: 'wait', status: undefined },
    'not written twice',
  );
  const unbound = check([pvc('web-data', { phase: 'Pending' })], ALL_PVS, VOLUMES.slice(1, 2));
  const w2 = claimStep({ vmi: { status: w.status }, check: unbound, filesystemOverhead: 0.055, now: NOW + 5000 });
  t.match(
    w2,
    {
      action: 'wait',
      status: { conditions: [other, { type: 'Synchronized', status: 'False', reason: 'PVCNotReady', lastTransitionTime: '2026-01-01T00:00:00.000Z' }] },
    },
    'PVCNotReady once the claim exists; still False, so its lastTransitionTime stays',
  );
  t.same(claimStep({ vmi: {}, check: unbound, filesystemOverhead: 0.055, now: NOW }).action, 'wait', 'a VMI without status waits too');

  const bound = check([pvc('web-data')], ALL_PVS, VOLUMES.slice(1, 2));
  const p = claimStep({ vmi: { status: w.status }, check: bound, filesystemOverhead: 0.1, now: NOW });
  const entry: VolumeStatus = {
    name: 'data',
    target: '',
    persistentVolumeClaimInfo: {
      claimName: 'web-data',
      accessModes: ['ReadWriteOnce'],
      volumeMode: 'Filesystem',
      capacity: { storage: '10Gi' },
      filesystemOverhead: '0.1',
    },
  };
  t.match(p, { action: 'place', claims: { data: { claimName: 'web-data' } }, nodeTerms: [], volumeStatus: [entry] }, "the config's overhead is written");
  t.same(
    claimStep({ vmi: { status: { volumeStatus: [entry] } }, check: bound, filesystemOverhead: 0.1, now: NOW }),
    {
      action: 'place',
      claims: bound.ready ? bound.claims : {},
      nodeTerms: [],
      volumeStatus: undefined,
    },
    'a current volumeStatus is not written again',
  );
  t.same(
    claimStep({ vmi: {}, check: check([], [], []), filesystemOverhead: 0.1, now: NOW }),
    { action: 'place', claims: {}, nodeTerms: [], volumeStatus: undefined },
    'no claims, no write',
  );
});
