// Webhook certs: what makeCa/makeServingCert produce, when rotationNeed asks for renewal, and how WebhookCertKeeper keeps the Secret and caBundle (against a fake API).
import { X509Certificate } from 'node:crypto';
import { pino } from 'pino';
import t from 'tap';
import { isVmletError } from '../../src/errors.js';
import {
  SECRET_KEYS,
  WebhookCertKeeper,
  type StoredCaBundles,
  type StoredCertSecret,
  type WebhookCertApi,
  type WriteResult,
} from '../../src/controller/webhook-cert-keeper.js';
import {
  CA_LIFETIME_MS,
  CERT_LIFETIME_MS,
  makeCa,
  makeServingCert,
  renewBundle,
  rotationNeed,
  sansOf,
  servingProblem,
  splitPem,
  webhookSans,
  type WebhookCertBundle,
} from '../../src/controller/webhook-cert.js';

const log = pino({ level: 'silent' });
const DAY = 24 * 3600 * 1000;
const T0 = new Date('2026-01-01T00:00:00Z');
const at = (days: number): Date => new Date(T0.getTime() + days * DAY);
const SANS = webhookSans({ ips: ['10.250.0.1'] });

t.test('webhookSans: the service names plus extras', async (t) => {
  t.same(SANS, {
    dnsNames: ['vmlet-webhook', 'vmlet-webhook.vmlet', 'vmlet-webhook.vmlet.svc', 'vmlet-webhook.vmlet.svc.cluster.local'],
    ips: ['10.250.0.1'],
  });
  t.same(webhookSans({ dnsNames: ['x.example', 'svc.ns'] }, 'svc', 'ns').dnsNames, ['svc', 'svc.ns', 'svc.ns.svc', 'svc.ns.svc.cluster.local', 'x.example']);
});

let fresh: WebhookCertBundle;

t.test('makeCa and makeServingCert', async (t) => {
  const t0 = Date.now();
  const ca = makeCa(T0);
  const t1 = Date.now();
  const served = makeServingCert(ca, SANS, T0);
  const t2 = Date.now();
  t.comment(`CA ${t1 - t0} ms, serving cert ${t2 - t1} ms (RSA 2048 keys from node:crypto, signed by node-forge)`);
  t.ok(t2 - t0 < 10_000, 'both within 10 s on a slow machine');
  fresh = { ...served, ca: ca.cert, caKey: ca.key };

  const caX = new X509Certificate(ca.cert);
  const certX = new X509Certificate(served.cert);
  t.equal(caX.ca, true, 'the CA is a CA');
  t.equal(certX.ca, false, 'the serving cert is not');
  t.ok(certX.verify(caX.publicKey), 'signed by the CA');
  t.ok(certX.checkIssued(caX), 'issued by the CA');
  t.equal((caX.publicKey.asymmetricKeyDetails?.modulusLength ?? 0) + (certX.publicKey.asymmetricKeyDetails?.modulusLength ?? 0), 4096, 'RSA 2048 both');
  const life = (x: X509Certificate): number => Date.parse(x.validTo) - Date.parse(x.validFrom);
  t.ok(Math.abs(life(caX) - CA_LIFETIME_MS) < 10 * 60_000, 'CA: 10 years');
  t.ok(Math.abs(life(certX) - CERT_LIFETIME_MS) < 10 * 60_000, 'serving cert: 1 year');
  t.ok(Date.parse(certX.validFrom) < T0.getTime(), 'backdated a little for clock skew');
  t.same(sansOf(certX), SANS, 'the SANs');
  t.match(certX.keyUsage ?? [], ['1.3.6.1.5.5.7.3.1'], 'serverAuth');
  t.equal(servingProblem(fresh), undefined, 'usable');
  t.equal(rotationNeed(fresh, SANS, T0).reason, undefined, 'nothing to renew when fresh');
});

t.test('rotationNeed', async (t) => {
  const other = makeCa(T0);
  const need = (b: Partial<WebhookCertBundle> | undefined, when = T0, sans = SANS): string => {
    const n = rotationNeed(b, sans, when);
    return n.renewCa ? 'ca' : n.renewCert ? 'cert' : 'none';
  };
  t.equal(need(undefined), 'ca', 'no Secret');
  t.equal(need({ ...fresh, ca: 'garbage' }), 'ca', 'unparsable CA');
  t.equal(need({ cert: fresh.cert, key: fresh.key, ca: fresh.ca }), 'ca', 'no CA key');
  t.equal(need({ ...fresh, caKey: other.key }), 'ca', 'CA key of another CA');
  t.equal(rotationNeed(fresh, SANS, at(2400)).renewCa, false, 'CA at 6.6 years: still more than a third left');
  t.equal(need({ ...fresh, ca: other.cert, caKey: other.key }), 'cert', 'serving cert signed by another CA');
  t.equal(need(fresh, at(240)), 'none', 'at 8 months: more than a third left');
  t.equal(need(fresh, at(250)), 'cert', 'at 250 days: less than a third left');
  t.equal(need(fresh, at(400)), 'cert', 'expired');
  t.equal(need(fresh, at(-1)), 'ca', 'not valid yet (the clock went back): all anew');
  t.equal(need(fresh, at(2450)), 'ca', 'CA with less than a third left');
  t.equal(need({ ...fresh, key: other.key }), 'cert', 'key of another cert');
  t.equal(need({ ...fresh, cert: 'x' }), 'cert', 'unparsable cert');
  t.equal(need(fresh, T0, webhookSans({ ips: ['10.250.0.2'] })), 'cert', 'SANs changed');
  t.equal(need(fresh, T0, webhookSans()), 'cert', 'an IP SAN removed');
  t.match(rotationNeed(fresh, SANS, at(250)).reason, /third/, 'a reason for the log');
});

t.test('renewBundle keeps the CA for a cert renewal and the old CA in the bundle for a CA renewal', async (t) => {
  const certOnly = renewBundle(fresh, { renewCa: false, renewCert: true, reason: 'x' }, SANS, at(250));
  t.equal(certOnly.ca, fresh.ca, 'same CA bundle');
  t.equal(certOnly.caKey, fresh.caKey);
  t.not(certOnly.cert, fresh.cert, 'new serving cert');
  t.equal(rotationNeed(certOnly, SANS, at(250)).reason, undefined, 'fresh again');

  const newCa = renewBundle(fresh, { renewCa: true, renewCert: true, reason: 'x' }, SANS, at(2450));
  const cas = splitPem(newCa.ca);
  t.equal(cas.length, 2, 'new CA and the old one');
  t.equal(cas[1], splitPem(fresh.ca)[0], 'the old one second');
  t.ok(new X509Certificate(newCa.cert).verify(new X509Certificate(cas[0] ?? '').publicKey), 'cert signed by the new CA');
  t.equal(rotationNeed(newCa, SANS, at(2450)).reason, undefined);

  const afterOldExpired = renewBundle(newCa, { renewCa: true, renewCert: true, reason: 'x' }, SANS, at(2450 + 2450));
  t.equal(splitPem(afterOldExpired.ca).length, 2, 'only the previous CA is kept, not older ones');
  t.equal(splitPem(afterOldExpired.ca)[1], cas[0]);
  t.same(renewBundle(fresh, { renewCa: false, renewCert: false, reason: undefined }, SANS, T0), fresh, 'nothing asked, nothing changed');
});

/** An in-memory API server for the Secret and one webhook configuration; `interfere` runs before a write and may change things under it. */
class FakeApi implements WebhookCertApi {
  secret: StoredCertSecret | undefined;
  config: StoredCaBundles | undefined = { caBundles: ['', ''], resourceVersion: '1' };
  rv = 10;
  writes = { secret: 0, config: 0 };
  interfere: (() => void) | undefined;
  async readSecret(): Promise<StoredCertSecret | undefined> {
    return this.secret && structuredClone(this.secret);
  }
  async writeSecret(_ns: string, _name: string, data: Record<string, string>, resourceVersion: string | undefined): Promise<WriteResult> {
    this.interfere?.();
    if (resourceVersion === undefined ? this.secret !== undefined : this.secret?.resourceVersion !== resourceVersion) return 'conflict';
    this.writes.secret++;
    this.secret = { data: { ...data }, resourceVersion: String(++this.rv) };
    return 'ok';
  }
  async readCaBundles(): Promise<StoredCaBundles | undefined> {
    return this.config && structuredClone(this.config);
  }
  async writeCaBundles(_name: string, resourceVersion: string, caPem: string, count: number): Promise<WriteResult> {
    if (this.config?.resourceVersion !== resourceVersion) return 'conflict';
    this.writes.config++;
    this.config = { caBundles: Array.from({ length: count }, () => caPem), resourceVersion: String(++this.rv) };
    return 'ok';
  }
}

t.test('WebhookCertKeeper.ensure: create, keep, rotate, conflicts', async (t) => {
  const api = new FakeApi();
  let now = T0;
  const keeper = new WebhookCertKeeper({ api, namespace: 'h3-x', logger: log, now: () => now, extraIps: ['10.250.0.1'] });
  t.throws(() => keeper.current(), { code: 'WEBHOOK_CERT_UNAVAILABLE' }, 'nothing before ensure');
  const seen: string[] = [];
  keeper.onChange((c) => seen.push(c.cert));

  const r1 = await keeper.ensure();
  t.match(r1, { renewed: 'no certificate yet', caRenewed: true, caBundlePatched: true });
  const data = api.secret?.data ?? {};
  t.same(Object.keys(data).sort(), [SECRET_KEYS.ca, SECRET_KEYS.caKey, SECRET_KEYS.cert, SECRET_KEYS.key].sort(), 'tls.crt, tls.key, ca.crt, ca.key');
  t.same(api.config?.caBundles, [data['ca.crt'], data['ca.crt']], 'every webhook trusts the CA');
  t.equal(keeper.current().cert, data['tls.crt'], 'serves what it stored');
  t.equal(seen.length, 1, 'listeners told');

  const writes = { ...api.writes };
  t.same(await keeper.ensure(), { renewed: undefined, caRenewed: false, caBundlePatched: false }, 'second ensure: nothing to do');
  t.same(api.writes, writes, 'no writes');

  api.config = { caBundles: ['stale', data['ca.crt'] ?? ''], resourceVersion: '77' };
  t.match(await keeper.ensure(), { renewed: undefined, caBundlePatched: true }, 'a caBundle that differs is fixed');
  t.same(api.config.caBundles, [data['ca.crt'], data['ca.crt']]);

  now = at(250);
  const r2 = await keeper.ensure();
  t.match(r2, { caRenewed: false, caBundlePatched: false }, 'cert renewal keeps the caBundle');
  t.match(r2.renewed, /third/);
  t.not(api.secret?.data['tls.crt'], data['tls.crt'], 'new serving cert stored');
  t.equal(keeper.current().cert, api.secret?.data['tls.crt']);

  const r3 = await keeper.ensure({ force: 'ca' });
  t.match(r3, { renewed: 'forced CA rotation', caRenewed: true, caBundlePatched: true });
  t.equal(splitPem(api.config.caBundles[0] ?? '').length, 2, 'caBundle: new CA plus the old one');
  t.equal(api.config.caBundles[0], api.secret?.data['ca.crt']);

  // another leader writes between our read and our write: we re-read and take its Secret
  const other = renewBundle(undefined, { renewCa: true, renewCert: true, reason: 'x' }, keeper.wantedSans, now);
  api.interfere = () => {
    api.interfere = undefined;
    api.secret = { data: { 'tls.crt': other.cert, 'tls.key': other.key, 'ca.crt': other.ca, 'ca.key': other.caKey }, resourceVersion: '999' };
  };
  const r4 = await keeper.ensure({ force: 'cert' });
  t.match(r4, { renewed: undefined, caBundlePatched: true }, 'after the conflict the winner is fine as it is');
  t.equal(keeper.current().cert, other.cert, "serves the winner's cert");
  t.equal(api.config.caBundles[0], other.ca, "caBundle is the winner's CA");

  api.interfere = () => {
    // someone keeps writing a broken cert: every try needs a renewal and every write conflicts
    api.secret = { data: { ...(api.secret as StoredCertSecret).data, 'tls.crt': 'broken' }, resourceVersion: String(++api.rv) };
  };
  api.interfere();
  await t.rejects(keeper.ensure(), { code: 'WEBHOOK_CERT_CONFLICT' }, 'gives up after maxConflicts');
  api.interfere = undefined;

  api.config = undefined;
  await t.rejects(keeper.ensure(), { code: 'WEBHOOK_CONFIG_NOT_FOUND' });
});

t.test('WebhookCertKeeper.load: replicas serve what the Secret holds', async (t) => {
  const api = new FakeApi();
  const replica = new WebhookCertKeeper({ api, logger: log, now: () => T0 });
  await t.rejects(replica.load(), { code: 'WEBHOOK_CERT_UNAVAILABLE' }, 'no Secret yet');
  const leader = new WebhookCertKeeper({ api, logger: log, now: () => T0 });
  await leader.ensure();
  t.equal(replica.hasCert, false);
  t.equal(await replica.load(), true, 'loaded');
  t.equal(replica.hasCert, true);
  t.equal(await leader.load(), false, 'the leader already serves it: unchanged');
  t.equal(replica.current().cert, leader.current().cert);
  t.equal(await replica.load(), false, 'unchanged');
  await leader.ensure({ force: 'cert' });
  const got: string[] = [];
  replica.onChange((c) => got.push(c.cert));
  t.equal(await replica.load(), true, 'picks up the rotated cert');
  t.same(got, [leader.current().cert]);
  const good = replica.current();
  api.secret = { data: { ...(api.secret as StoredCertSecret).data, 'tls.key': makeCa(T0).key }, resourceVersion: '5' };
  await t.rejects(replica.load(), { code: 'WEBHOOK_CERT_INVALID' }, 'a key that does not match');
  t.same(replica.current(), good, 'keeps the last good cert');
});

t.test('startPolling re-reads the Secret; errors keep the current cert', async (t) => {
  const api = new FakeApi();
  const leader = new WebhookCertKeeper({ api, logger: log });
  await leader.ensure();
  const replica = new WebhookCertKeeper({ api, logger: log, pollIntervalMs: 20 });
  await replica.load();
  const changed = new Promise<string>((resolve) => replica.onChange((c) => resolve(c.cert)));
  replica.startPolling();
  t.teardown(() => replica.stopPolling());
  await leader.ensure({ force: 'cert' });
  t.equal(await changed, leader.current().cert, 'the poll found the new cert');
  api.secret = undefined;
  await new Promise((r) => setTimeout(r, 60));
  t.equal(replica.current().cert, leader.current().cert, 'a missing Secret does not take the cert away');
});

t.test('the keeper needs an API', async (t) => {
  let err: unknown;
  try {
    new WebhookCertKeeper({ logger: log });
  } catch (e) {
    err = e;
  }
  t.ok(isVmletError(err, 'WEBHOOK_API_FAILED'), 'WEBHOOK_API_FAILED');
});
