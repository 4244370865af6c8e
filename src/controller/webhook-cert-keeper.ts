// Keeps the webhook's serving cert in its Secret and the CA in the webhook configuration's caBundle: the leader creates and rotates them, every replica loads them.
import { AdmissionregistrationV1Api, CoreV1Api, PatchStrategy, setHeaderOptions, type KubeConfig, type V1Secret } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { VmletError } from '../errors.js';
import {
  renewBundle,
  rotationNeed,
  servingProblem,
  webhookSans,
  WEBHOOK_CERT_SECRET,
  WEBHOOK_CONFIG_NAME,
  WEBHOOK_NAMESPACE,
  WEBHOOK_SERVICE,
  type RotationNeed,
  type SanSpec,
  type WebhookCertBundle,
} from './webhook-cert.js';

/** The Secret's keys: kubernetes.io/tls plus the CA's own key, which the leader needs to sign the next serving cert. */
export const SECRET_KEYS = { cert: 'tls.crt', key: 'tls.key', ca: 'ca.crt', caKey: 'ca.key' } as const;

/** The Secret's data (decoded) and version. */
export interface StoredCertSecret {
  data: Record<string, string>;
  resourceVersion: string;
}

/** The caBundle (decoded PEM, '' when unset) of each webhook of the configuration, and its version. */
export interface StoredCaBundles {
  caBundles: string[];
  resourceVersion: string;
}

export type WriteResult = 'ok' | 'conflict';

/** What the keeper needs of the API server; `kubeCertApi` implements it with client-node, tests with a fake. */
export interface WebhookCertApi {
  readSecret(namespace: string, name: string): Promise<StoredCertSecret | undefined>;
  /** Creates the Secret (resourceVersion undefined) or replaces that version of it; 'conflict' when it exists / changed. */
  writeSecret(namespace: string, name: string, data: Record<string, string>, resourceVersion: string | undefined): Promise<WriteResult>;
  readCaBundles(name: string): Promise<StoredCaBundles | undefined>;
  /** Sets every webhook's clientConfig.caBundle of that version of the configuration; 'conflict' when it changed. */
  writeCaBundles(name: string, resourceVersion: string, caPem: string, count: number): Promise<WriteResult>;
}

function statusOf(e: unknown): number | undefined {
  if (typeof e !== 'object' || e === null || !('code' in e)) return undefined;
  return typeof e.code === 'number' ? e.code : undefined;
}

function apiFailed(what: string, e: unknown): VmletError {
  const body = typeof e === 'object' && e !== null && 'body' in e ? e.body : undefined;
  const detail = typeof body === 'string' ? body.slice(0, 300) : e instanceof Error ? e.message : String(e);
  return new VmletError('WEBHOOK_API_FAILED', `${what} failed: ${detail}`, { cause: e });
}

const b64 = (s: string): string => Buffer.from(s, 'utf8').toString('base64');
const unb64 = (s: string): string => Buffer.from(s, 'base64').toString('utf8');

/** The WebhookCertApi of a cluster, through client-node 1.x. */
export function kubeCertApi(kc: KubeConfig): WebhookCertApi {
  const core = kc.makeApiClient(CoreV1Api);
  const adm = kc.makeApiClient(AdmissionregistrationV1Api);
  return {
    async readSecret(namespace, name) {
      let s: V1Secret;
      try {
        s = await core.readNamespacedSecret({ name, namespace });
      } catch (e) {
        if (statusOf(e) === 404) return undefined;
        throw apiFailed(`reading Secret ${namespace}/${name}`, e);
      }
      const data: Record<string, string> = {};
      for (const [k, v] of Object.entries(s.data ?? {})) data[k] = unb64(v);
      return { data, resourceVersion: s.metadata?.resourceVersion ?? '' };
    },
    async writeSecret(namespace, name, data, resourceVersion) {
      const enc: Record<string, string> = {};
      for (const [k, v] of Object.entries(data)) enc[k] = b64(v);
      const metadata = { name, namespace, labels: { 'app.kubernetes.io/part-of': 'vmlet' }, ...(resourceVersion === undefined ? {} : { resourceVersion }) };
      const body: V1Secret = { apiVersion: 'v1', kind: 'Secret', type: 'kubernetes.io/tls', metadata, data: enc };
      try {
        if (resourceVersion === undefined) await core.createNamespacedSecret({ namespace, body });
        else await core.replaceNamespacedSecret({ name, namespace, body });
        return 'ok';
      } catch (e) {
        if (statusOf(e) === 409) return 'conflict';
        throw apiFailed(`writing Secret ${namespace}/${name}`, e);
      }
    },
    async readCaBundles(name) {
      try {
        const w = await adm.readValidatingWebhookConfiguration({ name });
        return { caBundles: (w.webhooks ?? []).map((h) => unb64(h.clientConfig.caBundle ?? '')), resourceVersion: w.metadata?.resourceVersion ?? '' };
      } catch (e) {
        if (statusOf(e) === 404) return undefined;
        throw apiFailed(`reading ValidatingWebhookConfiguration ${name}`, e);
      }
    },
    async writeCaBundles(name, resourceVersion, caPem, count) {
      // JSON patch: touches only caBundle (a replace would drop fields this client's model does not know); the test op makes it conditional.
      const ops: object[] = [{ op: 'test', path: '/metadata/resourceVersion', value: resourceVersion }];
      for (let i = 0; i < count; i++) ops.push({ op: 'add', path: `/webhooks/${i}/clientConfig/caBundle`, value: b64(caPem) });
      try {
        await adm.patchValidatingWebhookConfiguration({ name, body: ops }, setHeaderOptions('Content-Type', PatchStrategy.JsonPatch));
        return 'ok';
      } catch (e) {
        // A failed test op is a 422 (older servers: 500 with "testing value"); a changed object a 409.
        const code = statusOf(e);
        if (code === 409 || code === 422) return 'conflict';
        throw apiFailed(`patching the caBundle of ValidatingWebhookConfiguration ${name}`, e);
      }
    },
  };
}

export interface WebhookCertKeeperOptions {
  /** The API, or a KubeConfig to make it from. */
  api?: WebhookCertApi;
  kubeConfig?: KubeConfig;
  /** Secret's namespace (default `vmlet`) and name (default `vmlet-webhook-cert`). */
  namespace?: string;
  secretName?: string;
  /** ValidatingWebhookConfiguration whose caBundle is kept (default `vmlet-validator`). */
  webhookConfigName?: string;
  /** Service and namespace the DNS SANs name (default `vmlet-webhook`, `vmlet`). */
  service?: string;
  serviceNamespace?: string;
  extraDnsNames?: readonly string[];
  extraIps?: readonly string[];
  now?: () => Date;
  logger: Logger;
  /** Writes that lose a race are retried after a re-read this many times (default 5). */
  maxConflicts?: number;
  /** How often `startPolling` re-reads the Secret (default 30 s). */
  pollIntervalMs?: number;
}

/** What the HTTPS server needs. `ca` is the trust bundle. */
export interface ServingCert {
  cert: string;
  key: string;
  ca: string;
}

export interface EnsureResult {
  /** Why the certs were renewed, undefined when they were kept. */
  renewed: string | undefined;
  caRenewed: boolean;
  /** Whether the webhook configuration's caBundle was written. */
  caBundlePatched: boolean;
}

function fromSecret(data: Record<string, string>): Partial<WebhookCertBundle> {
  const out: Partial<WebhookCertBundle> = {};
  for (const k of ['cert', 'key', 'ca', 'caKey'] as const) {
    const v = data[SECRET_KEYS[k]];
    if (v !== undefined && v !== '') out[k] = v;
  }
  return out;
}

function toSecret(b: WebhookCertBundle): Record<string, string> {
  return { [SECRET_KEYS.cert]: b.cert, [SECRET_KEYS.key]: b.key, [SECRET_KEYS.ca]: b.ca, [SECRET_KEYS.caKey]: b.caKey };
}

/**
 * The webhook cert's keeper. The leading controller calls `ensure()` (at start and then periodically); every
 * replica calls `load()` (or `startPolling()`) so its server serves what the Secret holds. Nothing runs before
 * one of them is called.
 */
export class WebhookCertKeeper {
  private readonly api: WebhookCertApi;
  private readonly namespace: string;
  private readonly secretName: string;
  private readonly configName: string;
  private readonly sans: SanSpec;
  private readonly now: () => Date;
  private readonly log: Logger;
  private readonly maxConflicts: number;
  private readonly pollIntervalMs: number;
  private served: ServingCert | undefined;
  private readonly listeners = new Set<(c: ServingCert) => void>();
  private timer: NodeJS.Timeout | undefined;

  constructor(opts: WebhookCertKeeperOptions) {
    const api = opts.api ?? (opts.kubeConfig ? kubeCertApi(opts.kubeConfig) : undefined);
    if (api === undefined) throw new VmletError('WEBHOOK_API_FAILED', 'WebhookCertKeeper needs an api or a kubeConfig');
    this.api = api;
    this.namespace = opts.namespace ?? WEBHOOK_NAMESPACE;
    this.secretName = opts.secretName ?? WEBHOOK_CERT_SECRET;
    this.configName = opts.webhookConfigName ?? WEBHOOK_CONFIG_NAME;
    const extra = { dnsNames: opts.extraDnsNames ?? [], ips: opts.extraIps ?? [] };
    this.sans = webhookSans(extra, opts.service ?? WEBHOOK_SERVICE, opts.serviceNamespace ?? WEBHOOK_NAMESPACE);
    this.now = opts.now ?? (() => new Date());
    this.log = opts.logger.child({ component: 'webhook-cert', secret: `${this.namespace}/${this.secretName}` });
    this.maxConflicts = opts.maxConflicts ?? 5;
    this.pollIntervalMs = opts.pollIntervalMs ?? 30_000;
  }

  /** The SANs the serving cert carries. */
  get wantedSans(): SanSpec {
    return this.sans;
  }

  /** Whether a cert is there to serve (after `load()` or `ensure()` found one). */
  get hasCert(): boolean {
    return this.served !== undefined;
  }

  /** The cert to serve; WEBHOOK_CERT_UNAVAILABLE before `load()` or `ensure()` found one. */
  current(): ServingCert {
    if (this.served === undefined)
      throw new VmletError('WEBHOOK_CERT_UNAVAILABLE', `no webhook certificate loaded yet from Secret ${this.namespace}/${this.secretName}`);
    return this.served;
  }

  /** Calls `fn` with each new cert (after `load`, `ensure` or a poll found one); returns the unsubscribe. */
  onChange(fn: (c: ServingCert) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private adopt(b: Pick<WebhookCertBundle, 'cert' | 'key' | 'ca'>): boolean {
    const next: ServingCert = { cert: b.cert, key: b.key, ca: b.ca };
    const prev = this.served;
    if (prev !== undefined && prev.cert === next.cert && prev.key === next.key && prev.ca === next.ca) return false;
    this.served = next;
    for (const fn of this.listeners) {
      try {
        fn(next);
      } catch (e) {
        this.log.error({ err: e }, 'a webhook cert listener failed');
      }
    }
    return true;
  }

  /**
   * Reads the Secret and serves what it holds; true when that changed (false when it is what `ensure` or an
   * earlier `load` already adopted: use `hasCert` to ask whether there is one). WEBHOOK_CERT_UNAVAILABLE when there is
   * no Secret, WEBHOOK_CERT_INVALID when its cert, key and CA do not parse or belong together.
   */
  async load(): Promise<boolean> {
    const s = await this.api.readSecret(this.namespace, this.secretName);
    if (s === undefined) throw new VmletError('WEBHOOK_CERT_UNAVAILABLE', `Secret ${this.namespace}/${this.secretName} does not exist`);
    const b = fromSecret(s.data);
    // SANs and age are the leader's business; a replica only refuses what TLS could not use.
    const problem = servingProblem(b);
    if (problem !== undefined || b.cert === undefined || b.key === undefined || b.ca === undefined) {
      throw new VmletError(
        'WEBHOOK_CERT_INVALID',
        `Secret ${this.namespace}/${this.secretName} holds no usable certificate: ${problem ?? 'ca.crt is missing'}`,
      );
    }
    return this.adopt({ cert: b.cert, key: b.key, ca: b.ca });
  }

  /**
   * Makes the Secret right (creates it, or renews the CA and/or serving cert when `rotationNeed` says so or
   * `force` asks) and every webhook's caBundle equal to its CA bundle. Conflicting writes are re-read and retried.
   */
  async ensure(opts: { force?: 'cert' | 'ca' } = {}): Promise<EnsureResult> {
    for (let attempt = 0; attempt < this.maxConflicts; attempt++) {
      const s = await this.api.readSecret(this.namespace, this.secretName);
      const prev = s === undefined ? undefined : fromSecret(s.data);
      const now = this.now();
      let need: RotationNeed = rotationNeed(prev, this.sans, now);
      if (opts.force === 'ca' && !need.renewCa) need = { renewCa: true, renewCert: true, reason: 'forced CA rotation' };
      if (opts.force === 'cert' && !need.renewCert) need = { renewCa: false, renewCert: true, reason: 'forced serving cert rotation' };
      if (need.reason === undefined && prev?.cert && prev.key && prev.ca) {
        this.adopt({ cert: prev.cert, key: prev.key, ca: prev.ca });
        return { renewed: undefined, caRenewed: false, caBundlePatched: await this.syncCaBundle(prev.ca) };
      }
      const started = Date.now();
      const next = renewBundle(prev, need, this.sans, now);
      const ms = Date.now() - started;
      // A new CA is trusted by the API server before any replica can serve a cert it signed.
      const preTrusted = need.renewCa ? await this.syncCaBundle(next.ca) : false;
      const r = await this.api.writeSecret(this.namespace, this.secretName, toSecret(next), s?.resourceVersion);
      if (r === 'conflict') {
        this.log.info({ attempt }, 'webhook cert Secret changed meanwhile; reading it again');
        opts = {};
        continue;
      }
      this.log.info({ reason: need.reason, caRenewed: need.renewCa, ms }, 'webhook certificate renewed');
      this.adopt(next);
      const patched = await this.syncCaBundle(next.ca);
      return { renewed: need.reason, caRenewed: need.renewCa, caBundlePatched: preTrusted || patched };
    }
    throw new VmletError('WEBHOOK_CERT_CONFLICT', `Secret ${this.namespace}/${this.secretName} changed on each of ${this.maxConflicts} tries`);
  }

  /** Sets every webhook's caBundle to `caPem` where it differs; true when it wrote. */
  private async syncCaBundle(caPem: string): Promise<boolean> {
    for (let attempt = 0; attempt < this.maxConflicts; attempt++) {
      const w = await this.api.readCaBundles(this.configName);
      if (w === undefined) throw new VmletError('WEBHOOK_CONFIG_NOT_FOUND', `ValidatingWebhookConfiguration ${this.configName} does not exist`);
      if (w.caBundles.every((c) => c.trim() === caPem.trim())) return false;
      if ((await this.api.writeCaBundles(this.configName, w.resourceVersion, caPem, w.caBundles.length)) === 'ok') {
        this.log.info({ webhooks: w.caBundles.length, config: this.configName }, 'caBundle updated');
        return true;
      }
    }
    throw new VmletError('WEBHOOK_CERT_CONFLICT', `ValidatingWebhookConfiguration ${this.configName} changed on each of ${this.maxConflicts} tries`);
  }

  /** Re-reads the Secret every pollIntervalMs (errors are logged, the last good cert stays); `leader` runs `ensure` instead. */
  startPolling(opts: { leader?: () => boolean } = {}): void {
    if (this.timer !== undefined) return;
    const tick = (): void => {
      const work = opts.leader?.() ? this.ensure() : this.load();
      work
        .catch((e: unknown) => this.log.warn({ err: e }, 'webhook cert refresh failed; keeping the current one'))
        .finally(() => {
          if (this.timer !== undefined) this.timer = setTimeout(tick, this.pollIntervalMs).unref();
        });
    };
    this.timer = setTimeout(tick, this.pollIntervalMs).unref();
  }

  stopPolling(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }
}
