// The KVM device plugin on the real kubelet: the node advertises devices.vmlet.io/kvm, a pod that asks for one sees /dev/kvm, a pod running as the launcher opens it once the node's mode allows, health changes reach allocatable, the kubelet's refusal of a launcher pod fails its VMI with the kubelet's reason, and stopping the plugin takes the devices away.
import fs from 'node:fs';
import path from 'node:path';
import {
  CoordinationV1Api,
  CoreV1Api,
  CustomObjectsApi,
  KubeConfig,
  PatchStrategy,
  setHeaderOptions,
  type V1Pod,
  type V1PodSpec,
} from '@kubernetes/client-node';
import pino from 'pino';
import t from 'tap';
import { parseQuantity } from '../../src/api/quantity.js';
import { heartbeatLeaseName, KVM_LABEL, SCHEDULABLE_LABEL, VMLET_NAMESPACE } from '../../src/controller/cluster-names.js';
import { KubeInformer } from '../../src/controller/kube-informer.js';
import { renderLauncherPod } from '../../src/controller/launcher-pod.js';
import { microTime } from '../../src/controller/leader-election.js';
import { runController } from '../../src/controller/main.js';
import type { PlacedVmi } from '../../src/controller/placement.js';
import { KvmDevicePlugin } from '../../src/daemon/device-plugin.js';
import { ensureKvmAccess, octalMode } from '../../src/daemon/kvm-access.js';
import { clusterSkipReason, testCluster, type Cluster } from '../support/cluster.js';

const RESOURCE = 'devices.vmlet.io/kvm';
const COUNT = 1000;
const NS = `h5-dp-${process.pid}`;
const BUSYBOX = 'localhost/vmlet-busybox:1';
const HOST_KVM = '/dev/kvm';
const MERGE = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);
const GROUP = { group: 'vmlet.io', version: 'v1alpha1', plural: 'virtualmachineinstances' };
const log = pino({ level: process.env.VMLET_TEST_LOG ?? 'silent' });

/** The host's /dev/kvm permission bits before this file touched anything; put back in teardown and, should the process die first, at exit. */
const hostKvmMode = fs.existsSync(HOST_KVM) ? fs.statSync(HOST_KVM).mode & 0o7777 : undefined;
function restoreHostKvmMode(): void {
  if (hostKvmMode === undefined || !fs.existsSync(HOST_KVM)) return;
  if ((fs.statSync(HOST_KVM).mode & 0o7777) !== hostKvmMode) fs.chmodSync(HOST_KVM, hostKvmMode);
}
process.once('exit', restoreHostKvmMode);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * The kubelet's device plugin folder. The kubelet compiles in /var/lib/kubelet/device-plugins
 * (pluginapi.DevicePluginPath) and does not move it with --root-dir, so the test cluster's kubelet
 * (root dir c.paths.kubeletRoot) listens there; use <root>/device-plugins only if a kubelet does.
 */
function devicePluginDir(c: Cluster): string {
  const underRoot = path.join(c.paths.kubeletRoot, 'device-plugins');
  return fs.existsSync(path.join(underRoot, 'kubelet.sock')) ? underRoot : '/var/lib/kubelet/device-plugins';
}

/** The node's capacity and allocatable of the resource as numbers (the API server writes 1000 as "1k"); undefined when absent. */
async function resources(c: Cluster): Promise<{ capacity: number | undefined; allocatable: number | undefined }> {
  const n = (await c.api('GET', `/api/v1/nodes/${c.config.node}`)).json() as {
    status: { capacity: Record<string, string>; allocatable: Record<string, string> };
  };
  const num = (q: string | undefined): number | undefined => (q === undefined ? undefined : Number(parseQuantity(q)));
  return { capacity: num(n.status.capacity[RESOURCE]), allocatable: num(n.status.allocatable[RESOURCE]) };
}

async function waitFor(what: string, ms: number, check: () => Promise<boolean>, everyMs = 250): Promise<number> {
  const t0 = Date.now();
  while (!(await check())) {
    if (Date.now() - t0 > ms) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(everyMs);
  }
  return Date.now() - t0;
}

async function ensureNamespace(c: Cluster, ns: string): Promise<void> {
  const have = await c.kubectl(['get', 'namespace', ns, '--ignore-not-found', '-o', 'name']);
  if (have.trim() === '') await c.kubectl(['create', 'namespace', ns]);
}

/** Runs a pod to completion and returns its log (stdout and stderr). */
async function podLog(c: Cluster, name: string, spec: V1PodSpec): Promise<string> {
  await c.kubectl(['apply', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'Pod', metadata: { name, namespace: NS }, spec }));
  await c.kubectl(['wait', '-n', NS, '--for=jsonpath={.status.phase}=Succeeded', `pod/${name}`, '--timeout=90s']);
  return c.kubectl(['logs', '-n', NS, name]);
}

/** A pod as the controller renders a launcher (uid/gid 107, every capability dropped, RuntimeDefault seccomp, one KVM share) that tries to open /dev/kvm read-write. */
function launcherLikePod(c: Cluster): V1PodSpec {
  const vmi = {
    apiVersion: 'vmlet.io/v1alpha1',
    kind: 'VirtualMachineInstance',
    metadata: { name: 'kvm-open', namespace: NS, uid: '00000000-0000-0000-0000-000000000107' },
    spec: { domain: { resources: { requests: { memory: '64Mi' } } } },
  } as PlacedVmi;
  const launcher = renderLauncherPod({ vmi, nodeName: c.config.node, nameSuffix: 'kvm01', image: BUSYBOX, imagePullPolicy: 'Never' });
  const compute = launcher.spec!.containers[0]!;
  return {
    restartPolicy: 'Never',
    terminationGracePeriodSeconds: 1,
    automountServiceAccountToken: false,
    securityContext: launcher.spec!.securityContext!,
    containers: [
      {
        name: 'main',
        image: BUSYBOX,
        imagePullPolicy: 'Never',
        // In a subshell: ash exits at once when `exec`'s redirection fails, before `||` could speak.
        command: ['sh', '-c', 'id; (exec 3<>/dev/kvm) && echo KVM_OPEN_OK || echo KVM_OPEN_FAILED'],
        securityContext: compute.securityContext!,
        resources: { limits: { [RESOURCE]: compute.resources!.limits![RESOURCE]! } },
      },
    ],
  };
}

/** Resolves right after the kubelet's next node status write (Ready's lastHeartbeatTime moves; every ~10 s here, nodeStatusReportFrequency). */
async function nextNodeStatusWrite(core: CoreV1Api, node: string): Promise<void> {
  const beat = async (): Promise<string> =>
    JSON.stringify((await core.readNode({ name: node })).status?.conditions?.find((x) => x.type === 'Ready')?.lastHeartbeatTime ?? null);
  const first = await beat();
  await waitFor('a node status write by the kubelet', 30_000, async () => (await beat()) !== first, 50);
}

t.test('KVM device plugin on the real kubelet', { skip: clusterSkipReason() ?? false }, async (t) => {
  const c = await testCluster(t);
  if (!c) return;
  const dir = devicePluginDir(c);
  t.comment(`device plugin folder: ${dir}`);
  const plugin = new KvmDevicePlugin({ kubeletRootDir: c.paths.kubeletRoot, devicePluginDir: dir, kvmUsable: true, count: COUNT, logger: log });
  t.teardown(async () => {
    restoreHostKvmMode();
    await plugin.stop();
    await c.kubectl(['delete', 'namespace', NS, '--wait=false', '--ignore-not-found']).catch(() => '');
  });

  await t.test('registers; the node advertises the count', async (t) => {
    await plugin.start();
    t.equal(plugin.lastError, undefined, 'no serve or register error');
    t.ok(plugin.registered, 'the kubelet accepted the registration');
    const ms = await waitFor(`capacity ${COUNT}`, 60_000, async () => {
      const r = await resources(c);
      return r.capacity === COUNT && r.allocatable === COUNT;
    });
    t.pass(`capacity and allocatable ${COUNT} after ${ms} ms`);
  });

  await t.test('a pod with devices.vmlet.io/kvm: 1 sees /dev/kvm', { skip: fs.existsSync('/dev/kvm') ? false : 'this host has no /dev/kvm' }, async (t) => {
    await ensureNamespace(c, NS);
    const pod = {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'kvm', namespace: NS },
      spec: {
        restartPolicy: 'Never',
        terminationGracePeriodSeconds: 1,
        automountServiceAccountToken: false,
        containers: [
          {
            name: 'main',
            image: 'localhost/vmlet-busybox:1',
            imagePullPolicy: 'Never',
            command: ['ls', '-l', '/dev/kvm'],
            resources: { limits: { [RESOURCE]: '1' } },
          },
        ],
      },
    };
    await c.kubectl(['apply', '-f', '-'], JSON.stringify(pod));
    await c.kubectl(['wait', '-n', NS, '--for=jsonpath={.status.phase}=Succeeded', 'pod/kvm', '--timeout=90s']);
    const out = await c.kubectl(['logs', '-n', NS, 'kvm']);
    t.comment(out.trim());
    t.match(out, /^c\S+\s+1 (root|0)\s+(root|0)\s+10,\s+232 .*\/dev\/kvm$/m, 'the KVM character device (10:232), as on the host');
    const requests = JSON.parse(await c.kubectl(['get', 'pod', '-n', NS, 'kvm', '-o', 'jsonpath={.spec.containers[0].resources.requests}'])) as Record<
      string,
      string
    >;
    t.equal(requests[RESOURCE], '1', 'the request defaults to the limit');
  });

  await t.test(
    'a pod running as the launcher (uid 107, no capabilities) opens /dev/kvm once ensureKvmAccess gave the host node o+rw',
    { skip: hostKvmMode === undefined ? 'this host has no /dev/kvm' : false },
    async (t) => {
      t.teardown(restoreHostKvmMode);
      await ensureNamespace(c, NS);
      const spec = launcherLikePod(c);
      t.match(spec.securityContext, { runAsNonRoot: true, runAsUser: 107, seccompProfile: { type: 'RuntimeDefault' } }, "the launcher's pod security context");
      t.match(spec.containers[0]!.securityContext, { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } }, "and its container's");
      const before = hostKvmMode!;
      t.comment(`host ${HOST_KVM}: ${octalMode(before)} (restored at the end)`);
      const out1 = await podLog(c, 'kvm-uid107-before', spec);
      t.comment(out1.trim());
      t.match(out1, /uid=107/, 'the pod runs as uid 107');
      if ((before & 0o006) !== 0o006) {
        t.match(out1, /KVM_OPEN_FAILED/, `negative control: with the host's ${octalMode(before)} the pod cannot open it`);
      } else {
        t.comment(`the host's mode ${octalMode(before)} has o+rw already: no negative control on this machine`);
      }
      const r = await ensureKvmAccess({ devicePath: HOST_KVM, keep: false, logger: log });
      t.comment(`ensureKvmAccess: ${JSON.stringify(r)}; ${HOST_KVM} now ${octalMode(fs.statSync(HOST_KVM).mode)}`);
      t.ok(r.outcome === 'changed' || r.outcome === 'unchanged', `o+rw in place (${r.outcome})`);
      t.equal(fs.statSync(HOST_KVM).mode & 0o006, 0o006, 'the host node has o+rw');
      const out2 = await podLog(c, 'kvm-uid107-after', spec);
      t.comment(out2.trim());
      t.match(out2, /KVM_OPEN_OK/, 'a new launcher-like pod opens /dev/kvm read-write');
      t.notMatch(out2, /KVM_OPEN_FAILED/, 'and no failure');
    },
  );

  await t.test("the kubelet refuses a launcher pod while KVM is unhealthy: the VMI fails with the kubelet's reason", async (t) => {
    const kc = new KubeConfig();
    kc.loadFromFile(c.kubeconfigPath);
    const core = kc.makeApiClient(CoreV1Api);
    const custom = kc.makeApiClient(CustomObjectsApi);
    const coord = kc.makeApiClient(CoordinationV1Api);
    const node = c.config.node;
    await ensureNamespace(c, NS);
    await ensureNamespace(c, VMLET_NAMESPACE);
    await c.installCrds();
    // What the node daemon would do: the labels and a heartbeat (one renewal that outlasts this subtest). KVM, not emulation.
    await core.patchNode({ name: node, body: { metadata: { labels: { [SCHEDULABLE_LABEL]: 'true', [KVM_LABEL]: 'true' } } } }, MERGE);
    const leaseName = heartbeatLeaseName(node);
    await coord.deleteNamespacedLease({ name: leaseName, namespace: VMLET_NAMESPACE }).catch(() => undefined);
    await coord.createNamespacedLease({ namespace: VMLET_NAMESPACE, body: { metadata: { name: leaseName }, spec: { holderIdentity: node } } });
    // renewTime is a MicroTime, which client-node would send as a Date with milliseconds: patch it as the string.
    const renewal = { spec: { holderIdentity: node, leaseDurationSeconds: 600, renewTime: microTime(Date.now()) } };
    await coord.patchNamespacedLease({ name: leaseName, namespace: VMLET_NAMESPACE, body: renewal }, MERGE);
    const cfg = { metadata: { name: 'vmlet-config' }, data: { 'vmlet.yaml': 'useEmulation: false\n' } };
    const madeConfig = await core.createNamespacedConfigMap({ namespace: VMLET_NAMESPACE, body: cfg }).then(
      () => true,
      async () => {
        await core.patchNamespacedConfigMap({ name: 'vmlet-config', namespace: VMLET_NAMESPACE, body: { data: cfg.data } }, MERGE);
        return false;
      },
    );
    // Every version of every pod in the namespace: the controller deletes the refused pod soon after it failed the VMI.
    const seen: V1Pod[] = [];
    const pods = new KubeInformer<V1Pod>({
      kubeConfig: kc,
      path: `/api/v1/namespaces/${NS}/pods`,
      list: () => core.listNamespacedPod({ namespace: NS }),
      onChange: (_ev, p) => void seen.push(structuredClone(p)),
      logger: log,
    });
    await pods.start();
    const ctl = await runController({
      kubeconfig: c.kubeconfigPath,
      identity: 'device-plugin-test',
      image: BUSYBOX,
      imagePullPolicy: 'Never',
      healthPort: 0,
      webhook: false,
      election: { leaseDurationMs: 4000, renewDeadlineMs: 3000, retryPeriodMs: 500 },
      logger: log.child({ part: 'controller' }),
    });
    t.teardown(async () => {
      plugin.setKvmUsable(true);
      const vmis = (await custom.listNamespacedCustomObject({ ...GROUP, namespace: NS }).catch(() => ({ items: [] }))) as {
        items: Array<{ metadata: { name: string } }>;
      };
      for (const { metadata } of vmis.items) {
        await custom.deleteNamespacedCustomObject({ ...GROUP, namespace: NS, name: metadata.name }).catch(() => undefined);
        // No node daemon runs here to release a node-side finalizer: let the VMI go.
        await custom
          .patchNamespacedCustomObject({ ...GROUP, namespace: NS, name: metadata.name, body: { metadata: { finalizers: null } } }, MERGE)
          .catch(() => undefined);
      }
      await ctl.close().catch(() => undefined);
      await pods.stop();
      await core.patchNode({ name: node, body: { metadata: { labels: { [SCHEDULABLE_LABEL]: null, [KVM_LABEL]: null } } } }, MERGE).catch(() => undefined);
      await coord.deleteNamespacedLease({ name: leaseName, namespace: VMLET_NAMESPACE }).catch(() => undefined);
      await coord.deleteNamespacedLease({ name: 'vmlet-controller', namespace: VMLET_NAMESPACE }).catch(() => undefined);
      if (madeConfig) await core.deleteNamespacedConfigMap({ name: 'vmlet-config', namespace: VMLET_NAMESPACE }).catch(() => undefined);
    });
    await waitFor('the controller leads', 15_000, async () => ctl.election.isLeader);
    type Vmi = { metadata: { uid: string }; status?: { phase?: string; reason?: string; message?: string; conditions?: Array<Record<string, string>> } };
    const getVmi = async (name: string): Promise<Vmi> => (await custom.getNamespacedCustomObject({ ...GROUP, namespace: NS, name })) as Vmi;
    const unschedulable = (v: Vmi): string | undefined => v.status?.conditions?.find((x) => x.type === 'PodScheduled' && x.reason === 'Unschedulable')?.message;
    const createVmi = (name: string, spec: Record<string, unknown> = {}): Promise<unknown> =>
      custom.createNamespacedCustomObject({
        ...GROUP,
        namespace: NS,
        body: {
          apiVersion: 'vmlet.io/v1alpha1',
          kind: 'VirtualMachineInstance',
          metadata: { name, namespace: NS },
          spec: { domain: { resources: { requests: { memory: '64Mi' } } }, ...spec },
        },
      });
    // Warm-up: a VMI that fits nowhere comes back Unschedulable once the controller's caches are filled and it reconciles.
    await createVmi('warmup', { nodeSelector: { 'vmlet.io/test': 'nowhere' } });
    let ms = await waitFor('VMI warmup Unschedulable', 30_000, async () => unschedulable(await getVmi('warmup')) !== undefined);
    t.comment(`the controller answered a first VMI after ${ms} ms`);
    await custom.deleteNamespacedCustomObject({ ...GROUP, namespace: NS, name: 'warmup' });
    t.equal((await resources(c)).allocatable, COUNT, `the API shows allocatable ${COUNT} before`);

    // Why the sync: the kubelet refuses at admission from its own device state (Allocate: no healthy devices), while
    // the Node's allocatable in the API, which the controller places by, changes only at the kubelet's next status
    // write. Those come every nodeStatusUpdateFrequency (10 s, jittered upwards), so right after one the controller
    // has ~10 s in which the API still shows the old allocatable; it needs well under a second. The race can be lost
    // one way only, a controller slower than that, and the VMI then says so (Unschedulable): that attempt is retried.
    let refused: { name: string; pod: V1Pod } | undefined;
    for (let attempt = 1; attempt <= 3 && refused === undefined; attempt++) {
      const name = `refused-${attempt}`;
      await nextNodeStatusWrite(core, node);
      const wroteAt = Date.now();
      plugin.setKvmUsable(false);
      // The health update goes out on the open ListAndWatch stream; give the kubelet a moment to take it in.
      await sleep(300);
      await createVmi(name);
      const createdAt = Date.now();
      const podOf = (): V1Pod | undefined => seen.find((p) => p.metadata?.labels?.['vmlet.io/vmi-name'] === name && p.status?.reason !== undefined);
      let lost: string | undefined;
      await waitFor(`the kubelet to refuse the launcher pod of ${name}`, 60_000, async () => {
        lost = unschedulable(await getVmi(name));
        return lost !== undefined || podOf() !== undefined;
      });
      t.comment(
        `attempt ${attempt}: VMI created ${createdAt - wroteAt} ms after the kubelet's status write; ` +
          (lost === undefined ? `its launcher pod refused ${Date.now() - createdAt} ms later` : `the controller saw allocatable 0 first: ${lost}`),
      );
      if (lost === undefined) {
        refused = { name, pod: podOf()! };
      } else {
        plugin.setKvmUsable(true);
        await custom.deleteNamespacedCustomObject({ ...GROUP, namespace: NS, name });
        await waitFor(`allocatable ${COUNT} again`, 60_000, async () => (await resources(c)).allocatable === COUNT);
      }
    }
    if (refused === undefined) throw new Error('three times the controller saw the new allocatable 0 before it placed the VMI');
    const { pod } = refused;
    t.comment(`pod ${pod.metadata?.name}: phase ${pod.status?.phase}, reason ${pod.status?.reason}, message ${pod.status?.message}`);
    t.equal(pod.spec?.nodeName, node, 'the controller bound the pod to the node');
    t.equal(pod.spec?.containers[0]?.resources?.limits?.[RESOURCE], '1', 'with one KVM share (not emulation)');
    t.equal(pod.status?.phase, 'Failed', 'the kubelet failed the pod');
    t.equal(pod.status?.reason, 'UnexpectedAdmissionError', "the kubelet's reason");
    t.match(
      pod.status?.message,
      /Allocate failed due to no healthy devices present; cannot allocate unhealthy devices devices\.vmlet\.io\/kvm/,
      'the device manager',
    );
    ms = await waitFor(`VMI ${refused.name} Failed`, 30_000, async () => (await getVmi(refused.name)).status?.phase === 'Failed');
    const st = (await getVmi(refused.name)).status!;
    t.comment(`VMI Failed ${ms} ms later: ${st.reason}: ${st.message}`);
    t.equal(st.reason, pod.status?.reason, "the VMI's reason is the kubelet's");
    t.ok(st.message?.includes(pod.status!.message!), "its message carries the kubelet's message");
    t.match(
      st.conditions?.find((x) => x.type === 'Ready'),
      { status: 'False', reason: 'UnexpectedAdmissionError' },
      'and its Ready condition',
    );
    plugin.setKvmUsable(true);
    ms = await waitFor(`allocatable ${COUNT} again`, 60_000, async () => (await resources(c)).allocatable === COUNT);
    t.pass(`allocatable ${COUNT} again after ${ms} ms`);
  });

  await t.test('KVM unusable: allocatable 0, capacity kept; usable again: back', async (t) => {
    plugin.setKvmUsable(false);
    let ms = await waitFor('allocatable 0', 60_000, async () => (await resources(c)).allocatable === 0);
    t.equal((await resources(c)).capacity, COUNT, 'capacity still shows the devices (unhealthy)');
    t.pass(`allocatable 0 after ${ms} ms`);
    plugin.setKvmUsable(true);
    ms = await waitFor(`allocatable ${COUNT}`, 60_000, async () => (await resources(c)).allocatable === COUNT);
    t.pass(`allocatable ${COUNT} again after ${ms} ms`);
  });

  await t.test('stop: socket gone, allocatable 0 (capacity stays until the kubelet drops the resource)', async (t) => {
    await plugin.stop();
    t.notOk(fs.existsSync(plugin.socketPath), 'socket removed');
    const ms = await waitFor('allocatable 0', 60_000, async () => (await resources(c)).allocatable === 0);
    const r = await resources(c);
    t.pass(`allocatable 0 after ${ms} ms; capacity ${r.capacity ?? 'gone'}`);
  });
});
