// `vmlet controller`: the cluster's controller process — leader election, VM→VMI, VMI→launcher pod, and the admission webhook with its own certificate.
import http from 'node:http';
import { AppsV1Api, CoordinationV1Api, CoreV1Api, CustomObjectsApi, KubeConfig } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { KubeSource } from '../source/kube-source.js';
import { vmletVersion } from '../version.js';
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
  /** `vmlet.io/v1alpha1` (default) or `kubevirt.io/v1` with the compat overlay. */
  group?: string;
  version?: string;
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
  const group = o.group ?? 'vmlet.io';
  const version = o.version ?? 'v1alpha1';
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
      renderPod: ({ vmi, nodeName, emulation, suffix, config }) =>
        renderLauncherPod({
          vmi,
          nodeName,
          nameSuffix: suffix,
          image,
          emulation,
          hostPathsAllow: config.hostPathsAllow,
          ...(pullPolicy ? { imagePullPolicy: pullPolicy } : {}),
        }),
    });
    await launchers.start();
  };
  const election = new LeaderElection({
    api: coordination,
    namespace: VMLET_NAMESPACE,
    name: 'vmlet-controller',
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
