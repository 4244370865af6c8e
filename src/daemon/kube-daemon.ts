// `vmlet daemon --mode kubernetes`: the node daemon of a cluster — its VMIs from the API server, QEMU in their launcher pods, node registration, the KVM device plugin, and the node-local socket for debugging.
import fs from 'node:fs/promises';
import path from 'node:path';
import { CoreV1Api, KubeConfig, type V1ConfigMap, type V1Pod } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { DEFAULT_PROC_ROOT } from '../api/vocabulary.js';
import { VmletError } from '../errors.js';
import { CONFIG_MAP_KEY, CONFIG_MAP_NAME, parseClusterConfig } from '../controller/cluster-config.js';
import { LAUNCHER_COMPONENT, LAUNCHER_LABELS, NODE_FINALIZER, NODE_NAME_LABEL, VMLET_NAMESPACE } from '../controller/cluster-names.js';
import { KubeInformer } from '../controller/kube-informer.js';
import { VmController } from '../controller/vm-controller.js';
import { probeQemu, type QemuCaps } from '../qemu/probe.js';
import { LauncherServer } from '../qemu/launcher-server.js';
import { KubeSource } from '../source/kube-source.js';
import type { Kind, SourceWatch, WatchOptions } from '../source/source.js';
import { vmletVersion } from '../version.js';
import { groupId } from './api-access.js';
import { ApiServer } from './api-server.js';
import { parseApiGroup, type DaemonConfig } from './config.js';
import { KvmDevicePlugin } from './device-plugin.js';
import { ensureKvmAccess } from './kvm-access.js';
import { NodeRegistration } from './kube-node-registration.js';
import { PodVmNetwork } from './kube-vm-network.js';
import { LocalBackend } from './local-backend.js';
import { KubeNodeSource, nodeApiSource } from './kube-node-source.js';
import { NodeReconciler, type PodLaunchers } from './node-reconciler.js';
import { PodLauncherSockets, POD_QEMU_OWNER } from './pod-launcher-sockets.js';
import { makePrepare } from './prepare.js';

/** Where QEMU sees its run dir inside the launcher pod (the emptyDir's mount point). */
export const POD_RUN_DIR = '/var/run/vmlet';

export interface RunningKubeDaemon {
  node: NodeReconciler;
  pods: KubeInformer<V1Pod>;
  registration: NodeRegistration;
  close(opts?: { unregister?: boolean }): Promise<void>;
}

export function kubeConfigOf(file: string | undefined): KubeConfig {
  const kc = new KubeConfig();
  if (file) kc.loadFromFile(file);
  else if (process.env.KUBERNETES_SERVICE_HOST) kc.loadFromCluster();
  else kc.loadFromDefault();
  return kc;
}

/** Retries `fn` while the API server is away or busy (a fresh CRD's storage answers 429 for a moment), up to 2 min. */
async function retryWhileUnavailable<T>(fn: () => Promise<T>, logger: Logger, deadlineMs = 120_000): Promise<T> {
  const end = Date.now() + deadlineMs;
  for (let delay = 250; ; delay = Math.min(delay * 2, 5000)) {
    try {
      return await fn();
    } catch (e) {
      if (!(e instanceof VmletError && e.code === 'KUBE_API_UNAVAILABLE') || Date.now() > end) throw e;
      logger.warn({ err: e, retryMs: delay }, 'the API server is not ready; trying again');
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}

export async function startKubeDaemon(config: DaemonConfig, caps: QemuCaps, logger: Logger): Promise<RunningKubeDaemon> {
  const kc = kubeConfigOf(config.kubeconfig);
  const core = kc.makeApiClient(CoreV1Api);
  const nodeName = config.nodeName;
  const procRoot = DEFAULT_PROC_ROOT;
  await fs.mkdir(path.dirname(config.socket), { recursive: true, mode: 0o755 });
  await fs.mkdir(config.runDir, { recursive: true, mode: 0o755 });

  // The cluster config is read live: useEmulation decides how the next VMI is started.
  let useEmulation = config.useEmulation;
  const configs = new KubeInformer<V1ConfigMap>({
    kubeConfig: kc,
    path: `/api/v1/namespaces/${VMLET_NAMESPACE}/configmaps`,
    fieldSelector: `metadata.name=${CONFIG_MAP_NAME}`,
    list: () => core.listNamespacedConfigMap({ namespace: VMLET_NAMESPACE, fieldSelector: `metadata.name=${CONFIG_MAP_NAME}` }),
    onChange: (ev, cm) => {
      try {
        useEmulation = ev === 'delete' ? config.useEmulation : parseClusterConfig(cm.data?.[CONFIG_MAP_KEY]).useEmulation;
      } catch (err) {
        logger.error({ err }, 'cluster config refused; keeping the last good one');
      }
    },
    logger,
  });
  await configs.start();

  // The same group as the controller's (vmlet.io, or kubevirt.io with the kubevirt-compat component).
  const { group, version } = parseApiGroup(config.apiGroup, 'apiGroup');
  const source = new KubeSource({ kubeConfig: kc, group, version, logger: logger.child({ component: 'source' }) });
  // This node's VMIs, cached (the node socket answers during an outage) and with status writes that wait one out.
  const nodeView = new KubeNodeSource({
    source,
    node: nodeName,
    labelSelector: `${NODE_NAME_LABEL}=${nodeName}`,
    logger: logger.child({ component: 'node-source' }),
  });
  nodeView.start();
  let node: NodeReconciler | undefined;
  const launcherSocket = path.join(config.runDir, 'launcher.sock');
  const launcherServer = new LauncherServer({
    socketPath: launcherSocket,
    onHello: (h) => (node ? node.onHello(h) : { action: 'reject', reason: 'the daemon is starting' }),
    logger: logger.child({ component: 'launcher-server' }),
  });
  const sockets = new PodLauncherSockets({
    server: launcherServer,
    kubeletRootDir: config.kubeletRootDir,
    linksDir: path.join(config.runDir, 'pods'),
    logger: logger.child({ component: 'pod-sockets' }),
  });
  const network = new PodVmNetwork({ logger: logger.child({ component: 'net' }), procRoot, allowMetadata: config.network.allowMetadata });

  // Launcher pods bound to this node, by the uid of their VMI.
  const podByVmi = new Map<string, V1Pod>();
  const pods = new KubeInformer<V1Pod>({
    kubeConfig: kc,
    path: '/api/v1/pods',
    fieldSelector: `spec.nodeName=${nodeName}`,
    labelSelector: `${LAUNCHER_LABELS.component}=${LAUNCHER_COMPONENT}`,
    list: () =>
      core.listPodForAllNamespaces({ fieldSelector: `spec.nodeName=${nodeName}`, labelSelector: `${LAUNCHER_LABELS.component}=${LAUNCHER_COMPONENT}` }),
    onChange: (ev, pod) => {
      const vmiUid = pod.metadata?.labels?.[LAUNCHER_LABELS.vmiUid];
      const vmiName = pod.metadata?.labels?.[LAUNCHER_LABELS.vmiName];
      if (!vmiUid) return;
      if (ev === 'delete') {
        if (podByVmi.get(vmiUid)?.metadata?.uid === pod.metadata?.uid) podByVmi.delete(vmiUid);
        if (pod.metadata?.uid) void sockets.close(pod.metadata.uid).catch(() => undefined);
        return;
      }
      const known = podByVmi.has(vmiUid);
      podByVmi.set(vmiUid, pod);
      if (!known && vmiName && pod.metadata?.namespace) void node?.refresh(pod.metadata.namespace, vmiName).catch(() => undefined);
    },
    logger: logger.child({ component: 'pods' }),
  });
  await pods.start();

  const launchers: PodLaunchers = {
    podOf: (vmiUid) => {
      const p = podByVmi.get(vmiUid);
      return p && !p.metadata?.deletionTimestamp ? p.metadata?.uid : undefined;
    },
    open: (podUid, vmiUid) => sockets.open(podUid, vmiUid),
    close: (podUid) => sockets.close(podUid),
    adoptNetwork: (vmi, pid) => network.adopt(vmi, pid),
    releaseNetwork: (uid) => network.release(uid),
  };
  const probe = { devKvm: config.kvmDevice, kvmProbeDeadlineMs: config.kvmProbeDeadlineMs };
  const prepare = makePrepare({
    qemuBinary: config.qemuBinary,
    accel: config.accel,
    useEmulation: () => useEmulation,
    probe,
    pod: { qemuRunDir: POD_RUN_DIR, owner: POD_QEMU_OWNER, network },
  });
  node = new NodeReconciler({
    store: nodeView,
    nodeName,
    runDir: config.runDir,
    launcherServer,
    launcherBinary: config.launcherBinary,
    launcherSocket,
    prepare,
    // A containerDisk container that is still pulling its image: look again every second.
    onImagesChanged: (listener) => {
      const timer = setInterval(listener, 1000);
      return () => clearInterval(timer);
    },
    logger: logger.child({ component: 'node' }),
    pods: launchers,
    finalizer: NODE_FINALIZER,
  });
  await retryWhileUnavailable(() => node!.start(), logger);
  await launcherServer.listen();
  void sockets.sweep([...podByVmi.values()].map((p) => p.metadata?.uid ?? '')).catch(() => undefined);

  const registration = new NodeRegistration({
    kubeConfig: kc,
    nodeName,
    kvm: { usable: caps.kvm.usable, ...(caps.kvm.reason ? { reason: caps.kvm.reason } : {}) },
    logger: logger.child({ component: 'registration' }),
  });
  await registration.start();
  // Before the plugin registers, so no launcher pod gets a copy of the device made with the old mode.
  if (caps.kvm.usable) {
    await ensureKvmAccess({ devicePath: config.kvmDevice, keep: !config.kvmWorldAccessible, logger: logger.child({ component: 'kvm-access' }) });
  }
  const devicePlugin = new KvmDevicePlugin({
    kubeletRootDir: config.kubeletRootDir,
    devicePluginDir: config.devicePluginDir,
    kvmUsable: caps.kvm.usable,
    devicePath: config.kvmDevice,
    logger: logger.child({ component: 'device-plugin' }),
  });
  await devicePlugin.start().catch((err: unknown) => logger.error({ err }, 'the KVM device plugin could not start; KVM VMIs will not be placed here'));

  // The node-local socket: get, console, qmp, pause for debugging (writes go to the API server, through its admission).
  const controller = new VmController({ source, logger: logger.child({ component: 'vm-actions' }), apiVersion: source.apiVersion });
  const api = await ApiServer.listen({
    backend: new LocalBackend({
      store: nodeApiSource(source, nodeView),
      node,
      controller,
      vmActions: false,
      qmpAllow: config.qmpPassthrough.allow,
      logger: logger.child({ component: 'api' }),
    }),
    socketPath: config.socket,
    access: config.socketGroup === '' ? {} : { gid: groupId(config.socketGroup) },
    logger: logger.child({ component: 'api' }),
    maxBodyBytes: config.maxBodyBytes,
    version: { vmlet: vmletVersion(), qemu: caps.version.text, kvm: caps.kvm, accel: config.accel, useEmulation },
  });
  logger.info(
    { node: nodeName, kubeletRootDir: config.kubeletRootDir, kvm: caps.kvm.usable, apiGroup: source.apiVersion },
    'vmlet node daemon ready (kubernetes mode)',
  );

  return {
    node,
    pods,
    registration,
    async close(opts = {}) {
      node?.stop();
      await api.close();
      await devicePlugin.stop().catch(() => undefined);
      await registration.stop({ unregister: opts.unregister ?? false });
      await pods.stop();
      await configs.stop();
      await launcherServer.close();
      await network.close();
      nodeView.close();
      source.close();
    },
  };
}

export { probeQemu };
