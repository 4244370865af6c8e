// Pure data of the test cluster: its address plan, file layout, config files (kubeconfigs, containerd, CNI, kubelet) and each component's argv.
import path from 'node:path';

export interface ClusterConfig {
  root: string;
  binDir: string;
  node: string;
  nodeIp: string;
  /** the empty bridge the harness makes to hold nodeIp (the kernels here have no dummy driver) */
  nodeLink: string;
  /** the CNI bridge of the pods */
  cniBridge: string;
  podCidr: string;
  clusterCidr: string;
  serviceCidr: string;
  serviceIp: string;
  /** pod range and node address kwok gives simulated nodes and their pods (never routed) */
  kwokCidr: string;
  kwokNodeIp: string;
  kwokStages: string | undefined;
  simulatedNodes: number;
  pauseImage: string;
  clientImage: string;
}

/** vmlet's own bridge subnet (vmlet0): the cluster's ranges must never overlap it. */
export const VMLET_SUBNET = '10.213.0.0/16';

export const PORTS = {
  etcd: 2379,
  etcdPeer: 2380,
  apiserver: 6443,
  controllerManager: 10257,
  scheduler: 10259,
  kubelet: 10250,
  kubeletHealthz: 10248,
  proxyHealthz: 10256,
  proxyMetrics: 10249,
} as const;

export function defaultConfig(opts: { root: string; binDir: string; kwokStages?: string | undefined; simulatedNodes?: number }): ClusterConfig {
  return {
    root: opts.root,
    binDir: opts.binDir,
    node: 'vmlet-test-node',
    nodeIp: '10.250.0.1',
    nodeLink: 'vk8s-node',
    cniBridge: 'vk8s-cni0',
    podCidr: '10.244.0.0/24',
    clusterCidr: '10.244.0.0/16',
    serviceCidr: '10.96.0.0/16',
    serviceIp: '10.96.0.1',
    kwokCidr: '10.245.0.0/16',
    kwokNodeIp: '10.250.0.2',
    kwokStages: opts.kwokStages,
    simulatedNodes: opts.simulatedNodes ?? 0,
    pauseImage: 'localhost/vmlet-pause:1',
    clientImage: 'localhost/vmlet-busybox:1',
  };
}

export function layout(root: string) {
  const p = (...s: string[]): string => path.join(root, ...s);
  return {
    root,
    pki: p('pki'),
    logs: p('logs'),
    pids: p('pids'),
    state: p('state.json'),
    etcdData: p('etcd'),
    containerdConfig: p('containerd', 'config.toml'),
    containerdRoot: p('containerd', 'root'),
    containerdState: p('containerd', 'state'),
    containerdSock: p('containerd', 'containerd.sock'),
    containerdOpt: p('containerd', 'opt'),
    runcRoot: p('containerd', 'runc'),
    cniConfDir: p('cni', 'net.d'),
    cniIpam: p('cni', 'ipam'),
    kubeletRoot: p('kubelet'),
    kubeletConfig: p('kubelet-config.json'),
    podLogs: p('pod-logs'),
    kubeconfig: (user: string): string => p('kubeconfigs', `${user}.kubeconfig`),
  };
}

export type Layout = ReturnType<typeof layout>;

/** A kubeconfig (JSON is YAML) for `user` authenticating with the client cert pki/`cert`.crt. */
export function kubeconfig(server: string, pkiDir: string, cert: string): string {
  return `${JSON.stringify(
    {
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [{ name: 'vmlet-test', cluster: { server, 'certificate-authority': path.join(pkiDir, 'ca.crt') } }],
      users: [{ name: cert, user: { 'client-certificate': path.join(pkiDir, `${cert}.crt`), 'client-key': path.join(pkiDir, `${cert}.key`) } }],
      contexts: [{ name: 'vmlet-test', context: { cluster: 'vmlet-test', user: cert } }],
      'current-context': 'vmlet-test',
    },
    null,
    2,
  )}\n`;
}

/** Kubeconfigs written at `up`: user name → cert name. */
export const KUBECONFIGS: Record<string, string> = {
  admin: 'admin',
  'controller-manager': 'controller-manager',
  scheduler: 'scheduler',
  'kube-proxy': 'kube-proxy',
  kubelet: 'kubelet-client',
};

const q = (s: string): string => JSON.stringify(s);

/** The private containerd's config: its own root, state and socket; restrict_oom_score_adj (no CAP_SYS_RESOURCE here). */
export function containerdConfig(cfg: ClusterConfig): string {
  const l = layout(cfg.root);
  return `version = 2
root = ${q(l.containerdRoot)}
state = ${q(l.containerdState)}
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = ${q(l.containerdSock)}

[ttrpc]
  address = ${q(`${l.containerdSock}.ttrpc`)}

[plugins."io.containerd.internal.v1.opt"]
  path = ${q(l.containerdOpt)}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = ${q(cfg.pauseImage)}
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = ${q(l.runcRoot)}
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = ${q(l.cniConfDir)}
    max_conf_num = 1
`;
}

/** The pods' network: a bridge with host-local IPAM in the cluster's folder, and portmap. */
export function cniConflist(cfg: ClusterConfig): string {
  const l = layout(cfg.root);
  return `${JSON.stringify(
    {
      cniVersion: '0.4.0',
      name: 'vmlet-test',
      plugins: [
        {
          type: 'bridge',
          bridge: cfg.cniBridge,
          isGateway: true,
          ipMasq: true,
          hairpinMode: true,
          ipam: { type: 'host-local', dataDir: l.cniIpam, ranges: [[{ subnet: cfg.podCidr }]], routes: [{ dst: '0.0.0.0/0' }] },
        },
        { type: 'portmap', capabilities: { portMappings: true } },
      ],
    },
    null,
    2,
  )}\n`;
}

export function kubeletConfig(cfg: ClusterConfig): string {
  const l = layout(cfg.root);
  return `${JSON.stringify(
    {
      kind: 'KubeletConfiguration',
      apiVersion: 'kubelet.config.k8s.io/v1beta1',
      address: cfg.nodeIp,
      port: PORTS.kubelet,
      readOnlyPort: 0,
      healthzBindAddress: '127.0.0.1',
      healthzPort: PORTS.kubeletHealthz,
      cgroupDriver: 'cgroupfs',
      failCgroupV1: false,
      failSwapOn: false,
      authentication: { anonymous: { enabled: false }, webhook: { enabled: true }, x509: { clientCAFile: path.join(l.pki, 'ca.crt') } },
      authorization: { mode: 'Webhook' },
      tlsCertFile: path.join(l.pki, 'kubelet-serving.crt'),
      tlsPrivateKeyFile: path.join(l.pki, 'kubelet-serving.key'),
      containerRuntimeEndpoint: `unix://${l.containerdSock}`,
      podLogsDir: l.podLogs,
      clusterDomain: 'cluster.local',
      resolvConf: '/etc/resolv.conf',
      evictionHard: { 'memory.available': '100Mi', 'nodefs.available': '1%', 'imagefs.available': '1%', 'nodefs.inodesFree': '1%' },
      imageGCHighThresholdPercent: 100,
      imageGCLowThresholdPercent: 99,
      protectKernelDefaults: false,
      syncFrequency: '10s',
      fileCheckFrequency: '10s',
      nodeStatusReportFrequency: '10s',
    },
    null,
    2,
  )}\n`;
}

export interface ComponentSpec {
  name: string;
  bin: string;
  args: string[];
}

/** Each component in start order (stop in reverse); kwok only with simulated nodes. */
export function componentSpecs(cfg: ClusterConfig): ComponentSpec[] {
  const l = layout(cfg.root);
  const pki = (f: string): string => path.join(l.pki, f);
  const bin = (b: string): string => path.join(cfg.binDir, b);
  const server = `https://${cfg.nodeIp}:${PORTS.apiserver}`;
  const specs: ComponentSpec[] = [
    {
      name: 'etcd',
      bin: bin('etcd'),
      args: [
        '--name=vmlet-test',
        `--data-dir=${l.etcdData}`,
        `--listen-client-urls=http://127.0.0.1:${PORTS.etcd}`,
        `--advertise-client-urls=http://127.0.0.1:${PORTS.etcd}`,
        `--listen-peer-urls=http://127.0.0.1:${PORTS.etcdPeer}`,
        `--initial-advertise-peer-urls=http://127.0.0.1:${PORTS.etcdPeer}`,
        `--initial-cluster=vmlet-test=http://127.0.0.1:${PORTS.etcdPeer}`,
        '--unsafe-no-fsync',
        '--log-level=warn',
      ],
    },
    {
      name: 'kube-apiserver',
      bin: bin('kube-apiserver'),
      args: [
        `--etcd-servers=http://127.0.0.1:${PORTS.etcd}`,
        `--bind-address=${cfg.nodeIp}`,
        `--advertise-address=${cfg.nodeIp}`,
        `--secure-port=${PORTS.apiserver}`,
        `--tls-cert-file=${pki('apiserver.crt')}`,
        `--tls-private-key-file=${pki('apiserver.key')}`,
        `--client-ca-file=${pki('ca.crt')}`,
        `--service-account-key-file=${pki('sa.pub')}`,
        `--service-account-signing-key-file=${pki('sa.key')}`,
        '--service-account-issuer=https://kubernetes.default.svc.cluster.local',
        `--service-cluster-ip-range=${cfg.serviceCidr}`,
        '--authorization-mode=Node,RBAC',
        '--allow-privileged=true',
        '--enable-admission-plugins=NodeRestriction',
        `--kubelet-client-certificate=${pki('apiserver-kubelet-client.crt')}`,
        `--kubelet-client-key=${pki('apiserver-kubelet-client.key')}`,
        `--kubelet-certificate-authority=${pki('ca.crt')}`,
        '--kubelet-preferred-address-types=InternalIP',
        '--profiling=false',
        '--v=1',
      ],
    },
    {
      name: 'kube-controller-manager',
      bin: bin('kube-controller-manager'),
      args: [
        `--kubeconfig=${l.kubeconfig('controller-manager')}`,
        `--authentication-kubeconfig=${l.kubeconfig('controller-manager')}`,
        `--authorization-kubeconfig=${l.kubeconfig('controller-manager')}`,
        `--service-account-private-key-file=${pki('sa.key')}`,
        `--root-ca-file=${pki('ca.crt')}`,
        `--cluster-signing-cert-file=${pki('ca.crt')}`,
        `--cluster-signing-key-file=${pki('ca.key')}`,
        '--use-service-account-credentials=true',
        '--leader-elect=false',
        '--bind-address=127.0.0.1',
        `--service-cluster-ip-range=${cfg.serviceCidr}`,
        '--profiling=false',
        '--v=1',
      ],
    },
    {
      name: 'kube-scheduler',
      bin: bin('kube-scheduler'),
      args: [
        `--kubeconfig=${l.kubeconfig('scheduler')}`,
        `--authentication-kubeconfig=${l.kubeconfig('scheduler')}`,
        `--authorization-kubeconfig=${l.kubeconfig('scheduler')}`,
        '--leader-elect=false',
        '--bind-address=127.0.0.1',
        '--profiling=false',
        '--v=1',
      ],
    },
    { name: 'containerd', bin: 'containerd', args: ['--config', l.containerdConfig, '--log-level', 'warn'] },
    {
      name: 'kubelet',
      bin: bin('kubelet'),
      args: [
        `--config=${l.kubeletConfig}`,
        `--kubeconfig=${l.kubeconfig('kubelet')}`,
        `--root-dir=${l.kubeletRoot}`,
        `--hostname-override=${cfg.node}`,
        `--node-ip=${cfg.nodeIp}`,
        '--v=1',
      ],
    },
    {
      name: 'kube-proxy',
      bin: bin('kube-proxy'),
      args: [
        `--kubeconfig=${l.kubeconfig('kube-proxy')}`,
        '--proxy-mode=iptables',
        `--cluster-cidr=${cfg.clusterCidr}`,
        `--hostname-override=${cfg.node}`,
        `--healthz-bind-address=127.0.0.1:${PORTS.proxyHealthz}`,
        `--metrics-bind-address=127.0.0.1:${PORTS.proxyMetrics}`,
        '--conntrack-max-per-core=0',
        '--conntrack-tcp-timeout-established=0',
        '--conntrack-tcp-timeout-close-wait=0',
        '--iptables-localhost-nodeports=false',
        `--nodeport-addresses=${cfg.nodeIp}/32`,
        '--v=1',
      ],
    },
  ];
  if (cfg.simulatedNodes > 0 && cfg.kwokStages) {
    specs.push({
      name: 'kwok',
      bin: bin('kwok'),
      args: [
        `--kubeconfig=${l.kubeconfig('admin')}`,
        `--config=${cfg.kwokStages}`,
        '--manage-all-nodes=false',
        '--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake',
        `--node-ip=${cfg.kwokNodeIp}`,
        `--cidr=${cfg.kwokCidr}`,
      ],
    });
  }
  return specs;
}

/** The manifest of `n` simulated Nodes kwok manages: capacity, and a taint that keeps ordinary pods off them. */
export function simulatedNodes(n: number): string {
  const items = Array.from({ length: n }, (_, i) => ({
    apiVersion: 'v1',
    kind: 'Node',
    metadata: {
      name: `kwok-node-${i}`,
      annotations: { 'kwok.x-k8s.io/node': 'fake', 'node.alpha.kubernetes.io/ttl': '0' },
      labels: { type: 'kwok', 'kubernetes.io/hostname': `kwok-node-${i}`, 'kubernetes.io/os': 'linux', 'kubernetes.io/arch': 'amd64' },
    },
    spec: { taints: [{ key: 'kwok.x-k8s.io/node', value: 'fake', effect: 'NoSchedule' }] },
    status: {
      allocatable: { cpu: '32', memory: '256Gi', pods: '110' },
      capacity: { cpu: '32', memory: '256Gi', pods: '110' },
    },
  }));
  return JSON.stringify({ apiVersion: 'v1', kind: 'List', items });
}
