// `vmlet controller`: the cluster's controller process — leader election, VM→VMI, VMI→launcher pod, and the admission webhook with its own certificate.
import http from 'node:http';
import { ApiextensionsV1Api, AppsV1Api, CoordinationV1Api, CoreV1Api, CustomObjectsApi, KubeConfig } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import YAML from 'yaml';
import { isRecord } from '../api/vocabulary.js';
import { API_GROUPS, parseApiGroup } from '../daemon/config.js';
import { VmletError } from '../errors.js';
import { KubeSource } from '../source/kube-source.js';
import { vmletVersion } from '../version.js';
import { CONFIG_MAP_KEY, CONFIG_MAP_NAME } from './cluster-config.js';
import { VMLET_NAMESPACE } from './cluster-names.js';
import { renderLauncherPod } from './launcher-pod.js';
import { LauncherController } from './launcher-controller.js';
import { LeaderElection } from './leader-election.js';
import { VmController } from './vm-controller.js';
import { WebhookCertKeeper } from './webhook-cert-keeper.js';
import { WebhookServer } from './webhook-server.js';

export interface ControllerRunOptions {
  /** A kubeconfig file; default: in-cluster (service account), else $KUBECONFIG / ~/.kube/config. */
  kubeconfig?: string;
  /** This replica's name in the leader Lease (default $POD_NAME, else the host name). */
  identity?: string;
  /** The image of launcher pods (default $VMLET_IMAGE, else the controller's own image as seen from its pod). */
  image?: string;
  imagePullPolicy?: 'Always' | 'IfNotPresent' | 'Never';
  /**
   * `vmlet.io` or `kubevirt.io` (the kubevirt-compat component); default: `apiGroup` of the cluster config
   * (ConfigMap vmlet/vmlet-config), else vmlet.io. `vmlet controller` sets it from $VMLET_API_GROUP.
   */
  group?: string;
  /** Default: v1alpha1 for vmlet.io, v1 otherwise. */
  version?: string;
  /** The leader Lease in namespace vmlet (default: leaderLeaseName(group)). */
  leaseName?: string;
  healthPort?: number;
  webhookPort?: number;
  /** Extra SANs of the serving certificate (tests that reach the webhook by IP). */
  webhookIps?: string[];
  /** Serve the admission webhook (default true; tests of the controllers alone turn it off). */
  webhook?: boolean;
  /** Leader election timing (client-go's defaults: 15 s, 10 s, 2 s). */
  election?: { leaseDurationMs?: number; renewDeadlineMs?: number; retryPeriodMs?: number };
  logger: Logger;
}

export interface RunningController {
  election: LeaderElection;
  launchers: LauncherController | undefined;
  close(): Promise<void>;
}

export function loadKubeConfig(file: string | undefined): KubeConfig {
  const kc = new KubeConfig();
  if (file) kc.loadFromFile(file);
  else if (process.env.KUBERNETES_SERVICE_HOST) kc.loadFromCluster();
  else kc.loadFromDefault();
  return kc;
}

/** The leader Lease of the controller of `group`: one per group, so that a vmlet.io and a kubevirt.io controller do not wait for each other. */
export function leaderLeaseName(group: string): string {
  return group === 'vmlet.io' ? 'vmlet-controller' : `vmlet-controller-${group.split('.')[0] ?? group}`;
}

function httpCode(e: unknown): number | undefined {
  return typeof e === 'object' && e !== null && 'code' in e && typeof e.code === 'number' ? e.code : undefined;
}

/** `apiGroup` of the cluster config, read once at start (a change needs a restart of the controller and the node daemons). */
async function configuredGroup(core: CoreV1Api): Promise<{ group: string; version: string }> {
  let text: string | undefined;
  try {
    text = (await core.readNamespacedConfigMap({ name: CONFIG_MAP_NAME, namespace: VMLET_NAMESPACE })).data?.[CONFIG_MAP_KEY];
  } catch (e) {
    if (httpCode(e) !== 404) throw e;
  }
  let doc: unknown;
  try {
    doc = text === undefined ? undefined : YAML.parse(text);
  } catch {
    doc = undefined; // the live config reader reports a broken document; here it means the default group
  }
  const value = isRecord(doc) && typeof doc['apiGroup'] === 'string' ? doc['apiGroup'] : API_GROUPS[0];
  return parseApiGroup(value, `ConfigMap ${CONFIG_MAP_NAME}`);
}

/** What reads a CRD (ApiextensionsV1Api; tests pass a fake). */
export interface CrdReader {
  readCustomResourceDefinition(p: { name: string }): Promise<{ metadata?: { labels?: { [k: string]: string } } }>;
}

/**
 * Outside vmlet.io, the CRDs of `group` must be vmlet's own (label app.kubernetes.io/part-of: vmlet, as the
 * kubevirt-compat component installs them): vmlet never acts on the objects of a real KubeVirt.
 */
export async function checkGroupIsVmlets(api: CrdReader, group: string): Promise<void> {
  if (group === 'vmlet.io') return;
  for (const plural of ['virtualmachines', 'virtualmachineinstances']) {
    const name = `${plural}.${group}`;
    let labels: { [k: string]: string } | undefined;
    try {
      labels = (await api.readCustomResourceDefinition({ name })).metadata?.labels;
    } catch (e) {
      if (httpCode(e) !== 404) throw e;
      throw new VmletError('API_GROUP_NOT_VMLET', `the CRD ${name} does not exist: apply deploy/components/kubevirt-compat first`, { details: { crd: name } });
    }
    if (labels?.['app.kubernetes.io/part-of'] !== 'vmlet') {
      throw new VmletError(
        'API_GROUP_NOT_VMLET',
        `the CRD ${name} is not vmlet's (no label app.kubernetes.io/part-of=vmlet): is KubeVirt installed? vmlet does not serve a real KubeVirt's objects`,
        { details: { crd: name } },
      );
    }
  }
}

/** The image of the pod this process runs in, so launcher pods use the same build as their controller. */
async function ownImage(core: CoreV1Api, apps: AppsV1Api, log: Logger): Promise<string | undefined> {
  const name = process.env.POD_NAME;
  const namespace = process.env.POD_NAMESPACE ?? VMLET_NAMESPACE;
  if (!name) return undefined;
  try {
    const pod = await core.readNamespacedPod({ name, namespace });
    return pod.spec?.containers[0]?.image;
  } catch (err) {
    log.warn({ err }, 'cannot read my own pod to learn the image; set VMLET_IMAGE');
    void apps;
    return undefined;
  }
}

export async function runController(o: ControllerRunOptions): Promise<RunningController> {
  const log = o.logger;
  const kc = loadKubeConfig(o.kubeconfig);
  const core = kc.makeApiClient(CoreV1Api);
  const custom = kc.makeApiClient(CustomObjectsApi);
  const coordination = kc.makeApiClient(CoordinationV1Api);
  const apps = kc.makeApiClient(AppsV1Api);
  const { group, version } =
    o.group !== undefined ? { group: o.group, version: o.version ?? (o.group === 'vmlet.io' ? 'v1alpha1' : 'v1') } : await configuredGroup(core);
  await checkGroupIsVmlets(kc.makeApiClient(ApiextensionsV1Api), group);
  const leaseName = o.leaseName ?? leaderLeaseName(group);
  log.info({ apiGroup: `${group}/${version}`, lease: `${VMLET_NAMESPACE}/${leaseName}` }, 'controller starting');
  const image = o.image ?? process.env.VMLET_IMAGE ?? (await ownImage(core, apps, log)) ?? 'vmlet';
  const pullPolicy = o.imagePullPolicy ?? (process.env.VMLET_IMAGE_PULL_POLICY as ControllerRunOptions['imagePullPolicy'] | undefined);
  const identity = o.identity ?? process.env.POD_NAME ?? (await import('node:os')).hostname();

  let webhookReady = false;
  const health = http.createServer((req, res) => {
    const ok = req.url === '/healthz' || (req.url === '/readyz' && webhookReady);
    res.writeHead(ok ? 200 : 503, { 'content-type': 'text/plain' }).end(ok ? 'ok\n' : 'not ready: the webhook has no certificate yet\n');
  });
  await new Promise<void>((resolve) => health.listen(o.healthPort ?? 8080, resolve));

  const keeper = new WebhookCertKeeper({ kubeConfig: kc, logger: log.child({ part: 'webhook-cert' }), ...(o.webhookIps ? { extraIps: o.webhookIps } : {}) });
  const webhook = new WebhookServer({ port: o.webhookPort ?? 8443, logger: log.child({ part: 'webhook' }) });

  const source = new KubeSource({ kubeConfig: kc, group, version, logger: log.child({ part: 'source' }) });
  let vms: VmController | undefined;
  let launchers: LauncherController | undefined;
  const withWebhook = o.webhook ?? true;
  const lead = async (): Promise<void> => {
    if (withWebhook) await keeper.ensure().catch((err: unknown) => log.error({ err }, 'cannot make the webhook certificate; retrying while leading'));
    vms = new VmController({ source, logger: log.child({ part: 'vm-controller' }), apiVersion: `${group}/${version}` });
    vms.start();
    launchers = new LauncherController({
      kubeConfig: kc,
      core,
      coordination,
      custom,
      group,
      version,
      logger: log.child({ part: 'launcher-controller' }),
      renderPod: ({ vmi, nodeName, emulation, suffix, config, claims }) => {
        const pod = renderLauncherPod({
          vmi,
          nodeName,
          nameSuffix: suffix,
          image,
          emulation,
          hostPathsAllow: config.hostPathsAllow,
          claims,
          ...(pullPolicy ? { imagePullPolicy: pullPolicy } : {}),
        });
        // The owner is the served group's VMI (the API types name vmlet.io's), or the garbage collector would delete the pod.
        for (const ref of pod.metadata?.ownerReferences ?? []) if (ref.uid === vmi.metadata.uid) ref.apiVersion = `${group}/${version}`;
        return pod;
      },
    });
    await launchers.start();
  };
  const election = new LeaderElection({
    api: coordination,
    namespace: VMLET_NAMESPACE,
    name: leaseName,
    identity,
    ...o.election,
    logger: log.child({ part: 'leader-election' }),
    onStartedLeading: () => {
      lead().catch((err: unknown) => log.error({ err }, 'starting the controllers failed'));
    },
    onStoppedLeading: () => {
      vms?.stop();
      void launchers?.stop();
      vms = undefined;
      launchers = undefined;
    },
  });
  election.start();

  // The webhook serves on every replica, once the leader has made the certificate.
  const serve = async (): Promise<void> => {
    for (;;) {
      await keeper.load().catch((err: unknown) => log.debug({ err }, 'webhook Secret not readable yet'));
      if (keeper.hasCert) break;
      await new Promise((r) => setTimeout(r, 2000));
    }
    await webhook.start(keeper.current());
    keeper.onChange((c) => webhook.setCert(c));
    keeper.startPolling({ leader: () => election.isLeader });
    webhookReady = true;
    log.info({ version: vmletVersion() }, 'controller serving the webhook');
  };
  if (withWebhook) void serve().catch((err: unknown) => log.error({ err }, 'the webhook could not start'));
  else webhookReady = true;

  return {
    election,
    get launchers() {
      return launchers;
    },
    async close() {
      keeper.stopPolling();
      await election.stop();
      vms?.stop();
      await launchers?.stop();
      await webhook.stop().catch(() => undefined);
      await new Promise((r) => health.close(r));
      source.close();
    },
  };
}
