// The cluster controller's pure rules: what happens to a VMI given its launcher pods, who may take the leader Lease, and how the cluster config is read.
import type { V1Lease, V1Pod } from '@kubernetes/client-node';
import t from 'tap';
import { parseClusterConfig } from '../../src/controller/cluster-config.js';
import { decideLauncher, type LauncherDecideInput } from '../../src/controller/launcher-decide.js';
import { decideLease, microTime } from '../../src/controller/leader-election.js';

const meta = { name: 'vm1', namespace: 'ns', uid: 'u1' };

function pod(name: string, extra: { phase?: string; deleting?: boolean; reason?: string; message?: string; created?: string } = {}): V1Pod {
  return {
    metadata: {
      name,
      ...(extra.deleting ? { deletionTimestamp: new Date() } : {}),
      ...(extra.created ? { creationTimestamp: new Date(extra.created) } : {}),
    },
    status: {
      ...(extra.phase ? { phase: extra.phase } : {}),
      ...(extra.reason ? { reason: extra.reason } : {}),
      ...(extra.message ? { message: extra.message } : {}),
    },
  };
}

function input(o: { phase?: string; nodeName?: string; deleting?: boolean; pods?: V1Pod[]; expected?: string; finalizer?: boolean }): LauncherDecideInput {
  return {
    vmi: {
      metadata: { ...meta, ...(o.deleting ? { deletionTimestamp: '2026-01-01T00:00:00Z' } : {}) },
      status: { ...(o.phase ? { phase: o.phase as 'Pending' } : {}), ...(o.nodeName ? { nodeName: o.nodeName } : {}) },
    },
    pods: o.pods ?? [],
    expectedPod: o.expected,
    hasFinalizer: o.finalizer ?? true,
  };
}

t.test('launcher decisions', async (t) => {
  t.same(decideLauncher(input({})), { action: 'assign' }, 'a new VMI gets a node and a pod');
  t.same(decideLauncher(input({ phase: 'Pending' })), { action: 'assign' }, 'a Pending (unschedulable) VMI is tried again');
  t.same(decideLauncher(input({ expected: 'p1' })), { action: 'none' }, 'a pod just created is not created twice before the cache shows it');
  t.same(decideLauncher(input({ phase: 'Scheduled', nodeName: 'n1', pods: [pod('p1', { phase: 'Running' })] })), { action: 'none' });
  const lost = decideLauncher(input({ phase: 'Running', nodeName: 'n1' }));
  t.equal(lost.action, 'fail', 'a VMI whose pod vanished fails');
  t.match(lost, { reason: 'PodDeleted' });
  t.same(
    decideLauncher(input({ phase: 'Running', nodeName: 'n1', pods: [pod('p1', { deleting: true })] })),
    { action: 'none' },
    'a terminating pod is waited for',
  );
  const oom = decideLauncher(
    input({ phase: 'Scheduled', nodeName: 'n1', pods: [pod('p1', { phase: 'Failed', reason: 'OutOfmemory', message: 'Node didn’t have enough memory' })] }),
  );
  t.match(oom, { action: 'fail', reason: 'OutOfmemory' }, "the kubelet's refusal becomes the VMI's reason");
  t.match(oom, { message: /p1 failed: Node didn’t have enough memory/ });
  t.same(
    decideLauncher(input({ phase: 'Failed', nodeName: 'n1', pods: [pod('p1', { phase: 'Running' })] })),
    { action: 'deletePods', pods: ['p1'] },
    "a finished VMI's pod goes",
  );
  t.same(
    decideLauncher(input({ phase: 'Scheduled', nodeName: 'n1', pods: [pod('new', { created: '2026-01-02' }), pod('old', { created: '2026-01-01' })] })),
    { action: 'deletePods', pods: ['new'] },
    'of two launchers the older stays',
  );
  t.same(
    decideLauncher(input({ deleting: true, pods: [pod('p1', { phase: 'Running' })] })),
    { action: 'deletePods', pods: ['p1'] },
    'a deleted VMI loses its pod',
  );
  t.same(decideLauncher(input({ deleting: true, pods: [pod('p1', { deleting: true })] })), { action: 'none' }, 'the finalizer stays while the pod terminates');
  t.same(decideLauncher(input({ deleting: true, expected: 'p1' })), { action: 'none' }, 'and while a pod just created may still appear');
  t.same(decideLauncher(input({ deleting: true })), { action: 'release' }, 'with nothing left the finalizer goes');
  t.same(decideLauncher(input({ deleting: true, finalizer: false })), { action: 'none' });
});

t.test('leader Lease rules', async (t) => {
  const now = Date.parse('2026-12-01T10:00:00Z');
  const lease = (holder: string, renewedSecondsAgo: number, duration = 15): V1Lease => ({
    spec: { holderIdentity: holder, leaseDurationSeconds: duration, renewTime: new Date(now - renewedSecondsAgo * 1000) },
  });
  t.same(decideLease(undefined, 'a', now, 15_000), { action: 'create' });
  t.same(decideLease(lease('a', 5), 'a', now, 15_000), { action: 'renew' });
  t.same(decideLease(lease('b', 5), 'a', now, 15_000), { action: 'wait', holder: 'b' });
  t.same(decideLease(lease('b', 15), 'a', now, 15_000), { action: 'take' }, 'an expired holder is replaced');
  t.same(decideLease(lease('', 1), 'a', now, 15_000), { action: 'take' }, 'a released Lease is taken at once');
  t.same(decideLease({ spec: { holderIdentity: 'b' } }, 'a', now, 15_000), { action: 'take' }, 'a holder that never renewed is not waited for');
  const asString: V1Lease = { spec: { holderIdentity: 'b', leaseDurationSeconds: 15, renewTime: microTime(now - 1000) as unknown as Date } };
  t.same(decideLease(asString, 'a', now, 15_000), { action: 'wait', holder: 'b' }, 'MicroTime strings as the client returns them are read');
  t.equal(microTime(Date.parse('2026-12-01T10:00:00.123Z')), '2026-12-01T10:00:00.123000Z', 'six fraction digits, as the API server wants');
});

t.test('cluster config', async (t) => {
  t.same(
    parseClusterConfig(undefined),
    { useEmulation: false, hostPathsAllow: [], filesystemOverhead: 0.055 },
    "nothing allowed by default; KubeVirt's overhead",
  );
  t.same(parseClusterConfig('useEmulation: true\nhostPaths: {allow: [/srv/vms]}\nkubeletRootDir: /x\n'), {
    useEmulation: true,
    hostPathsAllow: ['/srv/vms'],
    filesystemOverhead: 0.055,
  });
  t.equal(parseClusterConfig('filesystemOverhead: 0.1').filesystemOverhead, 0.1);
  t.equal(parseClusterConfig('filesystemOverhead: 0').filesystemOverhead, 0, 'no overhead: disk.img as large as the claim');
  t.equal(parseClusterConfig('filesystemOverhead: null').filesystemOverhead, 0.055, 'null is the default');
  for (const bad of ['1', '1.5', '-0.1', '"0.055"', '.nan', '[0.1]']) {
    t.throws(
      () => parseClusterConfig(`filesystemOverhead: ${bad}`),
      { code: 'CONFIG_INVALID', message: /"filesystemOverhead" must be a number from 0 up to \(not including\) 1/ },
      bad,
    );
  }
  t.throws(() => parseClusterConfig('useEmulation: yes please'), { code: 'CONFIG_INVALID', message: /useEmulation/ });
  t.throws(() => parseClusterConfig('hostPaths: {allow: [relative/dir]}'), { code: 'CONFIG_INVALID', message: /hostPaths\.allow/ });
  t.throws(() => parseClusterConfig('[1, 2'), { code: 'CONFIG_INVALID', message: /not valid YAML/ });
  t.throws(() => parseClusterConfig('- a\n- b\n'), { code: 'CONFIG_INVALID', message: /mapping/ });
});
