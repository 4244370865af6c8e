// The launcher pod (pure render): the contract of docs/cluster-mode.md, its name, resources, host paths, containerDisk containers, claims, and the restricted Pod Security Standard.
import t from 'tap';
import type { V1Container, V1Pod } from '@kubernetes/client-node';
import { OVERHEAD, memoryOverhead, tcgTbSizeMiB } from '../../src/api/overhead.js';
import YAML from 'yaml';
import { hostPathAllowed, launcherHostname, launcherPodName, renderLauncherPod, type LauncherPodInput } from '../../src/controller/launcher-pod.js';
import { defaultPullPolicy, uniqueVolumeName, type LauncherClaim } from '../../src/controller/launcher-volumes.js';
import { podRequests } from '../../src/controller/node-usage.js';
import type { PlacedVmi } from '../../src/controller/placement.js';

const Mi = 1024 ** 2;

function vmi(
  over: { spec?: Record<string, unknown>; domain?: Record<string, unknown>; name?: string; uid?: string | null; annotations?: Record<string, string> } = {},
): PlacedVmi {
  return {
    apiVersion: 'vmlet.io/v1alpha1',
    kind: 'VirtualMachineInstance',
    metadata: {
      name: over.name ?? 'web',
      namespace: 'apps',
      labels: { app: 'web', 'vmlet.io/component': 'spoofed' },
      ...(over.uid === null ? {} : { uid: over.uid ?? '1b4e28ba-2fa1-11d2-883f-0016d3cca427' }),
      ...(over.annotations ? { annotations: over.annotations } : {}),
    },
    spec: {
      terminationGracePeriodSeconds: 180,
      domain: {
        cpu: { sockets: 1, cores: 2, threads: 1 },
        memory: { guest: '1Gi' },
        machine: { type: 'q35' },
        devices: { autoattachSerialConsole: true, autoattachGraphicsDevice: false },
        ...over.domain,
      },
      ...over.spec,
    },
  } as PlacedVmi;
}

const render = (over: Partial<LauncherPodInput> = {}): V1Pod =>
  renderLauncherPod({ vmi: vmi(), nodeName: 'node-1', nameSuffix: 'x7k2p', image: 'ghcr.io/vmlet/vmlet:1.0', ...over });
const compute = (p: V1Pod): V1Container => p.spec!.containers[0]!;

t.test('the pod follows docs/cluster-mode.md', async (t) => {
  const placement = {
    nodeSelector: { disk: 'ssd' },
    affinity: {
      nodeAffinity: {
        requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: [{ matchExpressions: [{ key: 'zone', operator: 'In', values: ['a'] }] }] },
      },
    },
    tolerations: [{ key: 'kwok.x-k8s.io/node', operator: 'Exists', effect: 'NoSchedule' }],
  };
  const v = vmi({ spec: placement });
  const p = renderLauncherPod({ vmi: v, nodeName: 'node-1', nameSuffix: 'x7k2p', image: 'ghcr.io/vmlet/vmlet:1.0', imagePullPolicy: 'Always' });
  t.equal(p.apiVersion, 'v1');
  t.equal(p.kind, 'Pod');
  t.equal(p.metadata?.name, 'vmlet-launcher-web-x7k2p');
  t.equal(p.metadata?.namespace, 'apps', "in the VMI's namespace");
  t.same(p.metadata?.labels, {
    app: 'web',
    'vmlet.io/component': 'launcher',
    'vmlet.io/vmi-name': 'web',
    'vmlet.io/vmi-uid': '1b4e28ba-2fa1-11d2-883f-0016d3cca427',
  });
  t.same(p.metadata?.ownerReferences, [
    {
      apiVersion: 'vmlet.io/v1alpha1',
      kind: 'VirtualMachineInstance',
      name: 'web',
      uid: '1b4e28ba-2fa1-11d2-883f-0016d3cca427',
      controller: true,
      blockOwnerDeletion: true,
    },
  ]);
  const s = p.spec!;
  t.equal(s.nodeName, 'node-1');
  t.same(s.nodeSelector, placement.nodeSelector);
  t.same(s.affinity, placement.affinity);
  t.same(s.tolerations, placement.tolerations);
  t.not(s.tolerations, placement.tolerations, 'copied, not shared');
  t.same(s.securityContext, { runAsNonRoot: true, runAsUser: 107, runAsGroup: 107, fsGroup: 107, seccompProfile: { type: 'RuntimeDefault' } });
  t.equal(s.automountServiceAccountToken, false);
  t.equal(s.enableServiceLinks, false);
  t.equal(s.restartPolicy, 'Never');
  t.equal(s.hostname, 'web');
  t.equal(s.terminationGracePeriodSeconds, 195, "the VMI's 180 + 15");
  t.equal(s.containers.length, 1);
  const c = compute(p);
  t.equal(c.name, 'compute');
  t.equal(c.image, 'ghcr.io/vmlet/vmlet:1.0');
  t.equal(c.imagePullPolicy, 'Always');
  t.same(c.command, ['/usr/libexec/vmlet/vmlet-launch']);
  t.same(c.args, [
    '--uid',
    '1b4e28ba-2fa1-11d2-883f-0016d3cca427',
    '--socket',
    '/var/run/vmlet/launcher.sock',
    '--run-dir',
    '/var/run/vmlet',
    '--linger',
    '600',
  ]);
  t.same(c.securityContext, { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] }, runAsNonRoot: true });
  t.same(c.volumeMounts, [{ name: 'vmlet-run', mountPath: '/var/run/vmlet' }]);
  t.same(s.volumes, [{ name: 'vmlet-run', emptyDir: {} }]);
  // 1Gi guest, 2 vCPUs, KVM: 96 + 2×8 + 1024/64 = 128 MiB overhead.
  t.same(
    c.resources,
    { requests: { cpu: '200m', memory: '1152Mi', 'devices.vmlet.io/kvm': '1' }, limits: { memory: '1152Mi', 'devices.vmlet.io/kvm': '1' } },
    'memory request = limit: guest + overhead; 100m per vCPU requested and no cpu limit; one KVM device',
  );
  t.equal(render().spec?.containers[0]?.imagePullPolicy, 'IfNotPresent', 'default pull policy');
  t.notOk('nodeSelector' in render().spec! || 'affinity' in render().spec! || 'tolerations' in render().spec!, 'no placement fields when the VMI has none');
});

t.test('resources: emulation, cpu request, limits, the overhead annotation, grace default', async (t) => {
  const tcg = compute(render({ emulation: true })).resources!;
  const tcgBytes = 1024 * Mi + memoryOverhead({ guestBytes: 1024 * Mi, vcpus: 2, accel: 'tcg' });
  t.equal(tcgBytes, (1024 + 128 + OVERHEAD.tcgBytes / Mi + tcgTbSizeMiB(1024 * Mi)) * Mi, 'TCG adds its translation cache and data');
  t.same(tcg.requests, { cpu: '200m', memory: `${tcgBytes / Mi}Mi` }, 'no KVM device under emulation');
  t.same(tcg.limits, { memory: `${tcgBytes / Mi}Mi` });
  const cpuReq = compute(render({ vmi: vmi({ domain: { resources: { requests: { cpu: '500m' } } } }) })).resources!;
  t.equal(cpuReq.requests?.['cpu'], '500m', "the VMI's cpu request wins over its vCPU count");
  t.equal(cpuReq.limits?.['cpu'], undefined, 'no cpu limit unless the VMI sets one');
  const cpuLim = compute(render({ vmi: vmi({ domain: { resources: { limits: { cpu: '3' } } } }) })).resources!;
  t.equal(cpuLim.limits?.['cpu'], '3', "the VMI's cpu limit is the pod's");
  const limit = compute(render({ vmi: vmi({ domain: { resources: { limits: { memory: '2Gi' } } } }) })).resources!;
  t.equal(limit.requests?.['memory'], `${2048 + 128}Mi`, 'a memory limit above the guest is kept, plus overhead (as the daemon sizes the cgroup)');
  const ann = compute(render({ vmi: vmi({ annotations: { 'vmlet.io/memory-overhead': '0' } }) })).resources!;
  t.equal(ann.requests?.['memory'], '1Gi', 'the overhead annotation replaces the formula');
  const noGrace = vmi();
  delete (noGrace.spec as { terminationGracePeriodSeconds?: number }).terminationGracePeriodSeconds;
  t.equal(render({ vmi: noGrace }).spec?.terminationGracePeriodSeconds, 45, 'default 30 + 15');
  t.equal(render({ vmi: vmi({ spec: { terminationGracePeriodSeconds: 0 } }) }).spec?.terminationGracePeriodSeconds, 15);
  t.same(podRequests(render()), { milliCpu: 200, memoryBytes: 1152 * Mi, kvm: 1 }, 'what node assignment reads back');
});

t.test('refusals: no uid, bad suffix, bad memory', async (t) => {
  t.throws(() => render({ vmi: vmi({ uid: null }) }), { code: 'LAUNCHER_POD_BAD_INPUT', message: /apps\/web has no uid/ });
  t.throws(() => render({ nameSuffix: 'ABCDE' }), { code: 'LAUNCHER_POD_BAD_INPUT' });
  t.throws(() => render({ nameSuffix: 'abc' }), { code: 'LAUNCHER_POD_BAD_INPUT' });
  t.throws(() => render({ vmi: vmi({ domain: { memory: { guest: '1GB' } } }) }), { code: 'INVALID_QUANTITY', message: /domain\.memory\.guest/ });
  t.throws(() => render({ vmi: vmi({ annotations: { 'vmlet.io/memory-overhead': 'much' } }) }), { code: 'INVALID_QUANTITY', message: /memory-overhead/ });
});

t.test('launcherPodName and hostname: DNS labels of at most 63 characters', async (t) => {
  const label = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
  t.equal(launcherPodName('web', 'abcde'), 'vmlet-launcher-web-abcde');
  const long = launcherPodName('a'.repeat(200), 'abcde');
  t.equal(long.length, 63);
  t.equal(long, `vmlet-launcher-${'a'.repeat(42)}-abcde`);
  for (const n of ['web.example.com', 'x'.repeat(41) + '-yyy', 'a'.repeat(42) + '-b', 'UPPER', '...']) {
    const name = launcherPodName(n, '12345');
    t.ok(name.length <= 63 && label.test(name), `${JSON.stringify(n)} → ${name}`);
    const host = launcherHostname(n);
    t.ok(host.length <= 63 && label.test(host), `hostname ${JSON.stringify(n)} → ${host}`);
  }
  t.equal(launcherPodName('web.example.com', '12345'), 'vmlet-launcher-web-example-com-12345');
  t.equal(launcherHostname('web.example.com'), 'web', 'hostname: up to the first dot, as KubeVirt');
  t.equal(launcherHostname('h'.repeat(100)).length, 63);
  t.throws(() => launcherPodName('web', 'a-b-c'), { code: 'LAUNCHER_POD_BAD_INPUT' });
});

t.test('hostDisk and kernelBoot: only below hostPaths.allow, as hostPath volumes at the same path', async (t) => {
  const disks = {
    volumes: [
      { name: 'root', hostDisk: { path: '/var/lib/vms/web/root.qcow2', type: 'Disk' } },
      { name: 'data', hostDisk: { path: '/var/lib/vms/web/data.img', type: 'DiskOrCreate', capacity: '1Gi' } },
      { name: 'scratch', hostDisk: { path: '/var/lib/vms/web/scratch.img', type: 'DiskOrCreate', capacity: '1Gi' } },
      { name: 'seed', cloudInitNoCloud: { userData: '#cloud-config' } },
    ],
  };
  const v = vmi({ spec: disks });
  const refused = ((): unknown => {
    try {
      render({ vmi: v });
    } catch (e) {
      return e;
    }
    return undefined;
  })();
  t.match(refused, { code: 'HOST_PATH_NOT_ALLOWED', details: { path: '/var/lib/vms/web/root.qcow2', allow: [] } }, 'none allowed by default');
  const msg = (refused as Error).message;
  t.match(msg, /volume "root"/, 'names the volume');
  t.match(msg, /\/var\/lib\/vms\/web\/root\.qcow2/, 'names the path');
  t.match(msg, /hostPaths\.allow/, 'names the config key');
  t.match(msg, /vmlet\/vmlet-config/, 'names the ConfigMap');

  const p = render({ vmi: v, hostPathsAllow: ['/var/lib/vms/'] });
  t.same(p.spec?.volumes, [
    { name: 'vmlet-run', emptyDir: {} },
    { name: 'hostdisk-root', hostPath: { path: '/var/lib/vms/web/root.qcow2', type: 'File' } },
    { name: 'hostdisk-data', hostPath: { path: '/var/lib/vms/web', type: 'DirectoryOrCreate' } },
  ]);
  t.same(compute(p).volumeMounts, [
    { name: 'vmlet-run', mountPath: '/var/run/vmlet' },
    { name: 'hostdisk-root', mountPath: '/var/lib/vms/web/root.qcow2' },
    { name: 'hostdisk-data', mountPath: '/var/lib/vms/web' },
  ]);

  t.throws(() => render({ vmi: v, hostPathsAllow: ['/var/lib/vms/other'] }), { code: 'HOST_PATH_NOT_ALLOWED', message: /allowed: "\/var\/lib\/vms\/other"/ });

  const kernel = vmi({ domain: { firmware: { kernelBoot: { hostPath: { kernelPath: '/boot/vmlinuz', initrdPath: '/srv/initrd.img' } } } } });
  t.throws(() => render({ vmi: kernel, hostPathsAllow: ['/boot'] }), { code: 'HOST_PATH_NOT_ALLOWED', message: /kernelBoot\.hostPath\.initrdPath/ });
  const kp = render({ vmi: kernel, hostPathsAllow: ['/boot', '/srv'] });
  t.same(kp.spec?.volumes?.slice(1), [
    { name: 'kernelboot-kernel', hostPath: { path: '/boot/vmlinuz', type: 'File' } },
    { name: 'kernelboot-initrd', hostPath: { path: '/srv/initrd.img', type: 'File' } },
  ]);
  t.same(compute(kp).volumeMounts?.slice(1), [
    { name: 'kernelboot-kernel', mountPath: '/boot/vmlinuz', readOnly: true },
    { name: 'kernelboot-initrd', mountPath: '/srv/initrd.img', readOnly: true },
  ]);
});

t.test('hostPathAllowed compares normalised absolute paths and refuses ..', async (t) => {
  const cases: Array<[string, string[], boolean]> = [
    ['/data/vm.img', ['/data'], true],
    ['/data/a/b/vm.img', ['/data/'], true],
    ['/data//vm.img', ['/data'], true],
    ['/data/./vm.img', ['/data'], true],
    ['/data/vm.img', ['/'], true],
    ['/database/vm.img', ['/data'], false],
    ['/data', ['/data'], false],
    ['/data/../etc/shadow', ['/data'], false],
    ['/data/x/../vm.img', ['/data'], false],
    ['data/vm.img', ['/data'], false],
    ['/etc/shadow', ['/data/../etc'], false],
    ['/etc/shadow', ['etc'], false],
    ['/etc/shadow', [], false],
    ['/srv/vm.img', ['/data', '/srv'], true],
  ];
  for (const [path, allow, want] of cases) t.equal(hostPathAllowed(path, allow), want, `${path} below ${JSON.stringify(allow)}: ${want}`);
});

/**
 * The restricted Pod Security Standard (https://kubernetes.io/docs/concepts/security/pod-security-standards/),
 * baseline rules included, as a list of violations.
 */
function restrictedViolations(pod: V1Pod): string[] {
  const out: string[] = [];
  const s = pod.spec!;
  const containers = [...(s.initContainers ?? []), ...s.containers, ...(s.ephemeralContainers ?? [])];
  const podSc = s.securityContext ?? {};
  // Baseline.
  if (podSc.windowsOptions?.hostProcess === true || containers.some((c) => c.securityContext?.windowsOptions?.hostProcess === true)) out.push('hostProcess');
  if (s.hostNetwork === true) out.push('hostNetwork');
  if (s.hostPID === true) out.push('hostPID');
  if (s.hostIPC === true) out.push('hostIPC');
  if (containers.some((c) => c.securityContext?.privileged === true)) out.push('privileged');
  if ((s.volumes ?? []).some((v) => v.hostPath !== undefined)) out.push('hostPath volume');
  if (containers.some((c) => (c.ports ?? []).some((p) => (p.hostPort ?? 0) !== 0))) out.push('hostPort');
  const apparmorOk = (p: { type: string } | undefined): boolean => p === undefined || p.type === 'RuntimeDefault' || p.type === 'Localhost';
  if (!apparmorOk(podSc.appArmorProfile) || containers.some((c) => !apparmorOk(c.securityContext?.appArmorProfile))) out.push('appArmorProfile');
  for (const [k, v] of Object.entries(pod.metadata?.annotations ?? {})) {
    if (k.startsWith('container.apparmor.security.beta.kubernetes.io/') && v !== 'runtime/default' && !v.startsWith('localhost/'))
      out.push('apparmor annotation');
  }
  const seLinuxOk = (o: { type?: string; user?: string; role?: string } | undefined): boolean =>
    o === undefined ||
    ((o.type === undefined || ['', 'container_t', 'container_init_t', 'container_kvm_t', 'container_engine_t'].includes(o.type)) && !o.user && !o.role);
  if (!seLinuxOk(podSc.seLinuxOptions) || containers.some((c) => !seLinuxOk(c.securityContext?.seLinuxOptions))) out.push('seLinuxOptions');
  if (containers.some((c) => (c.securityContext?.procMount ?? 'Default') !== 'Default')) out.push('procMount');
  const safeSysctls = [
    'kernel.shm_rmid_forced',
    'net.ipv4.ip_local_port_range',
    'net.ipv4.ip_unprivileged_port_start',
    'net.ipv4.tcp_syncookies',
    'net.ipv4.ping_group_range',
  ];
  if ((podSc.sysctls ?? []).some((x) => !safeSysctls.includes(x.name))) out.push('sysctls');
  // Restricted.
  const allowedVolumes = ['configMap', 'csi', 'downwardAPI', 'emptyDir', 'ephemeral', 'persistentVolumeClaim', 'projected', 'secret'];
  for (const v of s.volumes ?? []) {
    const kinds = Object.keys(v).filter((k) => k !== 'name');
    if (kinds.some((k) => !allowedVolumes.includes(k))) out.push(`volume type ${kinds.join(',')}`);
  }
  if (containers.some((c) => c.securityContext?.allowPrivilegeEscalation !== false)) out.push('allowPrivilegeEscalation');
  const nonRoot = (c: V1Container): boolean => (c.securityContext?.runAsNonRoot ?? podSc.runAsNonRoot) === true;
  if (podSc.runAsNonRoot === false || !containers.every(nonRoot)) out.push('runAsNonRoot');
  if (podSc.runAsUser === 0 || containers.some((c) => c.securityContext?.runAsUser === 0)) out.push('runAsUser 0');
  const seccompOk = (t: string | undefined): boolean => t === 'RuntimeDefault' || t === 'Localhost';
  const podSeccomp = podSc.seccompProfile?.type;
  if (podSeccomp !== undefined && !seccompOk(podSeccomp)) out.push('seccomp');
  if (containers.some((c) => !seccompOk(c.securityContext?.seccompProfile?.type ?? podSeccomp))) out.push('seccomp');
  for (const c of containers) {
    const caps = c.securityContext?.capabilities;
    if (!(caps?.drop ?? []).includes('ALL')) out.push(`${c.name}: capabilities must drop ALL`);
    if ((caps?.add ?? []).some((a) => a !== 'NET_BIND_SERVICE')) out.push(`${c.name}: capabilities add beyond NET_BIND_SERVICE`);
  }
  return out;
}

t.test('a launcher pod without hostDisk passes the restricted Pod Security Standard', async (t) => {
  t.same(restrictedViolations(render()), [], 'KVM');
  t.same(restrictedViolations(render({ emulation: true })), [], 'emulation');
  t.same(restrictedViolations(render({ vmi: vmi({ spec: { tolerations: [{ operator: 'Exists' }] } }) })), [], 'with placement fields');
  // The checker itself catches each kind of violation.
  const broken: Array<[string, (p: V1Pod) => void]> = [
    ['hostNetwork', (p) => (p.spec!.hostNetwork = true)],
    ['hostPID', (p) => (p.spec!.hostPID = true)],
    ['hostIPC', (p) => (p.spec!.hostIPC = true)],
    ['privileged', (p) => (compute(p).securityContext!.privileged = true)],
    ['hostPath volume', (p) => p.spec!.volumes!.push({ name: 'h', hostPath: { path: '/x' } })],
    ['hostPort', (p) => (compute(p).ports = [{ containerPort: 80, hostPort: 80 }])],
    ['allowPrivilegeEscalation', (p) => delete compute(p).securityContext!.allowPrivilegeEscalation],
    ['runAsNonRoot', (p) => (compute(p).securityContext!.runAsNonRoot = false)],
    ['runAsUser 0', (p) => (p.spec!.securityContext!.runAsUser = 0)],
    ['seccomp', (p) => (p.spec!.securityContext!.seccompProfile = { type: 'Unconfined' })],
    ['compute: capabilities must drop ALL', (p) => (compute(p).securityContext!.capabilities = { drop: ['NET_RAW'] })],
    ['compute: capabilities add beyond NET_BIND_SERVICE', (p) => (compute(p).securityContext!.capabilities!.add = ['SYS_ADMIN'])],
    ['procMount', (p) => (compute(p).securityContext!.procMount = 'Unmasked')],
    ['sysctls', (p) => (p.spec!.securityContext!.sysctls = [{ name: 'kernel.msgmax', value: '1' }])],
    ['seLinuxOptions', (p) => (p.spec!.securityContext!.seLinuxOptions = { type: 'spc_t' })],
    ['appArmorProfile', (p) => (compute(p).securityContext!.appArmorProfile = { type: 'Unconfined' })],
  ];
  for (const [rule, breakIt] of broken) {
    const p = render();
    breakIt(p);
    t.ok(restrictedViolations(p).includes(rule), `a pod with a broken ${rule} is caught`);
  }
  t.same(
    restrictedViolations(render({ vmi: vmi({ spec: { volumes: DISK_VOLUMES } }), claims: CLAIMS })),
    [],
    'with containerDisks (and their init container) and claims',
  );
  const cd = render({ vmi: vmi({ spec: { volumes: DISK_VOLUMES } }), claims: CLAIMS });
  delete cd.spec!.containers[1]!.securityContext!.allowPrivilegeEscalation;
  t.ok(restrictedViolations(cd).includes('allowPrivilegeEscalation'), 'a containerDisk container is checked too');
  const init = render({ vmi: vmi({ spec: { volumes: DISK_VOLUMES } }), claims: CLAIMS });
  init.spec!.initContainers![0]!.securityContext!.capabilities = {};
  t.ok(restrictedViolations(init).includes('vmlet-bin: capabilities must drop ALL'), 'and the init container');
  const withDisk = render({ vmi: vmi({ spec: { volumes: [{ name: 'root', hostDisk: { path: '/data/r.img', type: 'Disk' } }] } }), hostPathsAllow: ['/data'] });
  t.ok(restrictedViolations(withDisk).includes('hostPath volume'), 'hostDisk makes it leave the restricted level, as documented');
});

/** Two containerDisks (sharing a pull secret), one of each claim kind. */
const DISK_VOLUMES = [
  { name: 'root', containerDisk: { image: 'quay.io/containerdisks/debian:12', imagePullSecret: 'quay' } },
  { name: 'data', persistentVolumeClaim: { claimName: 'web-data' } },
  { name: 'tools', containerDisk: { image: 'registry.example/tools', imagePullPolicy: 'Never', imagePullSecret: 'quay' } },
  { name: 'raw', persistentVolumeClaim: { claimName: 'web-raw', readOnly: true } },
  { name: 'base', ephemeral: { persistentVolumeClaim: { claimName: 'golden' } } },
  { name: 'seed', cloudInitNoCloud: { userData: '#cloud-config' } },
];
const fsClaim = (gi: number): LauncherClaim => ({ volumeMode: 'Filesystem', capacityBytes: gi * 1024 ** 3, accessModes: ['ReadWriteOnce'] });
const CLAIMS: Record<string, LauncherClaim> = {
  data: fsClaim(10),
  raw: { volumeMode: 'Block', capacityBytes: 1024 ** 3, accessModes: ['ReadWriteOnce'] },
  base: fsClaim(2),
};

t.test('containerDisk volumes: one waiting container each, the init container that brings the program, pull secrets', async (t) => {
  const p = render({ vmi: vmi({ spec: { volumes: DISK_VOLUMES } }), claims: CLAIMS, imagePullPolicy: 'Always' });
  const s = p.spec!;
  t.equal(s.containers[0]?.name, 'compute', 'compute stays containers[0]');
  const restricted = { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] }, runAsNonRoot: true };
  const tiny = { requests: { cpu: '1m', memory: '16Mi' }, limits: { memory: '16Mi' } };
  t.same(
    s.containers.slice(1),
    [
      {
        name: 'volume-0',
        image: 'quay.io/containerdisks/debian:12',
        imagePullPolicy: 'IfNotPresent',
        command: ['/var/run/vmlet-bin/vmlet-disk-wait', 'root'],
        volumeMounts: [{ name: 'vmlet-bin', mountPath: '/var/run/vmlet-bin', readOnly: true }],
        securityContext: restricted,
        resources: tiny,
      },
      {
        name: 'volume-2',
        image: 'registry.example/tools',
        imagePullPolicy: 'Never',
        command: ['/var/run/vmlet-bin/vmlet-disk-wait', 'tools'],
        volumeMounts: [{ name: 'vmlet-bin', mountPath: '/var/run/vmlet-bin', readOnly: true }],
        securityContext: restricted,
        resources: tiny,
      },
    ],
    'named by the index in spec.volumes; the volume pull policy wins over the default',
  );
  t.same(
    s.initContainers,
    [
      {
        name: 'vmlet-bin',
        image: 'ghcr.io/vmlet/vmlet:1.0',
        imagePullPolicy: 'Always',
        command: ['/bin/cp', '/usr/libexec/vmlet/vmlet-disk-wait', '/var/run/vmlet-bin/vmlet-disk-wait'],
        volumeMounts: [{ name: 'vmlet-bin', mountPath: '/var/run/vmlet-bin' }],
        securityContext: restricted,
        resources: tiny,
      },
    ],
    "vmlet's image, with the compute container's pull policy, writing the emptyDir",
  );
  t.same(s.imagePullSecrets, [{ name: 'quay' }], 'one secret, named once');
  t.not(s.containers[1]?.securityContext, s.containers[0]?.securityContext, 'no shared objects between containers');
  t.same(
    podRequests(p),
    { milliCpu: 202, memoryBytes: (1152 + 32) * Mi, kvm: 1 },
    'node assignment counts the two tiny containers; the init container runs before them',
  );

  const none = render({ vmi: vmi({ spec: { volumes: [{ name: 'seed', cloudInitNoCloud: { userData: '#cloud-config' } }] } }) });
  t.equal(none.spec?.initContainers, undefined, 'no init container without a containerDisk');
  t.equal(none.spec?.imagePullSecrets, undefined);
  t.same(none.spec?.volumes, [{ name: 'vmlet-run', emptyDir: {} }]);
  const two = render({
    vmi: vmi({
      spec: {
        volumes: [
          { name: 'a', containerDisk: { image: 'x/a:1', imagePullSecret: 's2' } },
          { name: 'b', containerDisk: { image: 'x/b:1', imagePullSecret: 's1' } },
          { name: 'c', containerDisk: { image: 'x/c:1', imagePullSecret: 's2' } },
          { name: 'd', containerDisk: { image: 'x/d:1' } },
        ],
      },
    }),
  });
  t.same(two.spec?.imagePullSecrets, [{ name: 's2' }, { name: 's1' }], 'deduplicated, in the order of first use');
  t.same(
    two.spec?.volumes?.filter((v) => v.name === 'vmlet-bin'),
    [{ name: 'vmlet-bin', emptyDir: {} }],
    'one emptyDir for all',
  );
});

t.test("the pull policy default is Kubernetes' rule", async (t) => {
  const cases: Array<[string, string]> = [
    ['quay.io/containerdisks/debian', 'Always'],
    ['quay.io/containerdisks/debian:latest', 'Always'],
    ['debian', 'Always'],
    ['localhost:5000/disks/debian', 'Always'],
    ['localhost:5000/disks/debian:12', 'IfNotPresent'],
    ['quay.io/containerdisks/debian:12', 'IfNotPresent'],
    [`quay.io/containerdisks/debian@sha256:${'a'.repeat(64)}`, 'IfNotPresent'],
    [`quay.io/containerdisks/debian:latest@sha256:${'a'.repeat(64)}`, 'Always'],
    ['Not A Reference', 'IfNotPresent'],
  ];
  for (const [image, want] of cases) t.equal(defaultPullPolicy(image), want, image);
});

t.test('claims: a pod volume each; Filesystem mounted where pod-volumes.ts says, Block as a device; read-only for readOnly and ephemeral', async (t) => {
  const p = render({ vmi: vmi({ spec: { volumes: DISK_VOLUMES } }), claims: CLAIMS });
  t.same(p.spec?.volumes, [
    { name: 'vmlet-run', emptyDir: {} },
    { name: 'vmlet-bin', emptyDir: {} },
    { name: 'pvc-data', persistentVolumeClaim: { claimName: 'web-data' } },
    { name: 'pvc-raw', persistentVolumeClaim: { claimName: 'web-raw', readOnly: true } },
    { name: 'pvc-base', persistentVolumeClaim: { claimName: 'golden', readOnly: true } },
  ]);
  t.same(compute(p).volumeMounts, [
    { name: 'vmlet-run', mountPath: '/var/run/vmlet' },
    { name: 'pvc-data', mountPath: '/var/run/vmlet-pvc/data' },
    { name: 'pvc-base', mountPath: '/var/run/vmlet-pvc/base', readOnly: true },
  ]);
  t.same(compute(p).volumeDevices, [{ name: 'pvc-raw', devicePath: '/dev/vmlet-pvc-raw' }]);
  t.equal(render().spec?.containers[0]?.volumeDevices, undefined, 'no volumeDevices without a Block claim');
  t.throws(() => render({ vmi: vmi({ spec: { volumes: DISK_VOLUMES } }), claims: { data: fsClaim(1) } }), {
    code: 'LAUNCHER_POD_BAD_INPUT',
    message: /volume "raw": no facts of its claim "web-raw"/,
  });
  const long = 'v'.repeat(63);
  const twins = render({
    vmi: vmi({
      spec: {
        volumes: [
          { name: long, persistentVolumeClaim: { claimName: 'a' } },
          { name: `${'v'.repeat(62)}w`, persistentVolumeClaim: { claimName: 'b' } },
        ],
      },
    }),
    claims: { [long]: fsClaim(1), [`${'v'.repeat(62)}w`]: fsClaim(1) },
  });
  const names = twins.spec!.volumes!.map((v) => v.name);
  t.same(names, ['vmlet-run', `pvc-${'v'.repeat(59)}`, `pvc-${'v'.repeat(57)}-2`], 'names cut to 63 stay distinct');
  t.same(uniqueVolumeName('pvc-', 'a', new Set(['pvc-a', 'pvc-a-2'])), 'pvc-a-3');
});

t.test('the rendered pod with one containerDisk and one Filesystem claim (docs/cluster-mode.md shows it)', async (t) => {
  const v = vmi({
    spec: {
      volumes: [
        { name: 'root', containerDisk: { image: 'quay.io/containerdisks/debian:12', imagePullSecret: 'quay-pull' } },
        { name: 'data', persistentVolumeClaim: { claimName: 'web-data' } },
      ],
    },
  });
  const p = render({ vmi: v, claims: { data: fsClaim(10) } });
  t.matchSnapshot(YAML.stringify(p), 'launcher pod YAML');
});
