// The admission webhook's certificates as data: making a CA and a serving cert, and deciding when they must be renewed (pure but for key generation).
import { createPrivateKey, generateKeyPairSync, randomBytes, X509Certificate } from 'node:crypto';
import forge from 'node-forge';

/** Names of docs/cluster-mode.md. */
export const WEBHOOK_SERVICE = 'vmlet-webhook';
export const WEBHOOK_NAMESPACE = 'vmlet';
export const WEBHOOK_CERT_SECRET = 'vmlet-webhook-cert';
export const WEBHOOK_CONFIG_NAME = 'vmlet-validator';

const DAY_MS = 24 * 3600 * 1000;
export const CA_LIFETIME_MS = 3652 * DAY_MS;
export const CERT_LIFETIME_MS = 365 * DAY_MS;
/** notBefore lies this far in the past, so that a peer whose clock is a little behind accepts a fresh cert. */
const BACKDATE_MS = 5 * 60 * 1000;

/** The subject alternative names a serving cert must carry. */
export interface SanSpec {
  dnsNames: readonly string[];
  ips: readonly string[];
}

/** Everything the cert Secret holds, as PEM. `ca` is the trust bundle: the current CA first, then the previous one while it is valid. */
export interface WebhookCertBundle {
  cert: string;
  key: string;
  ca: string;
  caKey: string;
}

/** One certificate and its private key, as PEM. */
export interface KeyedCert {
  cert: string;
  key: string;
}

/** The service's DNS names (`svc`, `svc.ns`, `svc.ns.svc`, `svc.ns.svc.cluster.local`) plus extra ones; sorted, without duplicates. */
export function webhookSans(
  extra: { dnsNames?: readonly string[]; ips?: readonly string[] } = {},
  service = WEBHOOK_SERVICE,
  namespace = WEBHOOK_NAMESPACE,
): SanSpec {
  const base = [service, `${service}.${namespace}`, `${service}.${namespace}.svc`, `${service}.${namespace}.svc.cluster.local`];
  return { dnsNames: [...new Set([...base, ...(extra.dnsNames ?? [])])].sort(), ips: [...new Set(extra.ips ?? [])].sort() };
}

/** A fresh RSA 2048 key pair as PEM: Node's native generator (~0.1 s) rather than forge's pure-JS one (seconds). */
export function generateRsaKey(): { privateKey: string; publicKey: string } {
  return generateKeyPairSync('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
}

function serial(): string {
  const b = randomBytes(16);
  b[0] = (b[0] ?? 0) & 0x7f; // positive
  return b.toString('hex');
}

interface CertInput {
  subject: string;
  publicKey: string;
  notBefore: Date;
  notAfter: Date;
  extensions: object[];
  issuer?: { cert: forge.pki.Certificate; key: forge.pki.rsa.PrivateKey };
  selfKey: forge.pki.rsa.PrivateKey;
}

function signCert(input: CertInput): string {
  const c = forge.pki.createCertificate();
  c.publicKey = forge.pki.publicKeyFromPem(input.publicKey);
  c.serialNumber = serial();
  c.validity.notBefore = input.notBefore;
  c.validity.notAfter = input.notAfter;
  c.setSubject([{ name: 'commonName', value: input.subject }]);
  c.setIssuer(input.issuer ? input.issuer.cert.subject.attributes : [{ name: 'commonName', value: input.subject }]);
  c.setExtensions(input.extensions);
  c.sign(input.issuer?.key ?? input.selfKey, forge.md.sha256.create());
  return forge.pki.certificateToPem(c).replace(/\r\n/g, '\n');
}

/** A self-signed CA valid for CA_LIFETIME_MS from `now`. */
export function makeCa(now: Date, subject = 'vmlet-webhook-ca'): KeyedCert {
  const pair = generateRsaKey();
  const cert = signCert({
    // CNs are PrintableStrings (forge's default), which Go refuses to parse with "@" or "_" in them
    subject: `${subject}-${Math.floor(now.getTime() / 1000)}`,
    publicKey: pair.publicKey,
    notBefore: new Date(now.getTime() - BACKDATE_MS),
    notAfter: new Date(now.getTime() + CA_LIFETIME_MS),
    extensions: [
      { name: 'basicConstraints', cA: true, critical: true },
      { name: 'keyUsage', keyCertSign: true, cRLSign: true, digitalSignature: true, critical: true },
      { name: 'subjectKeyIdentifier' },
    ],
    selfKey: forge.pki.privateKeyFromPem(pair.privateKey),
  });
  return { cert, key: pair.privateKey };
}

/** A serving cert for `sans`, signed by `ca`, valid for CERT_LIFETIME_MS from `now` (never beyond the CA). */
export function makeServingCert(ca: KeyedCert, sans: SanSpec, now: Date): KeyedCert {
  const caCert = forge.pki.certificateFromPem(ca.cert);
  const pair = generateRsaKey();
  const end = Math.min(now.getTime() + CERT_LIFETIME_MS, caCert.validity.notAfter.getTime());
  const altNames = [...sans.dnsNames.map((value) => ({ type: 2, value })), ...sans.ips.map((ip) => ({ type: 7, ip }))];
  const cert = signCert({
    subject: sans.dnsNames[0] ?? WEBHOOK_SERVICE,
    publicKey: pair.publicKey,
    notBefore: new Date(now.getTime() - BACKDATE_MS),
    notAfter: new Date(end),
    extensions: [
      { name: 'basicConstraints', cA: false, critical: true },
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
      { name: 'extKeyUsage', serverAuth: true },
      { name: 'subjectAltName', altNames },
    ],
    issuer: { cert: caCert, key: forge.pki.privateKeyFromPem(ca.key) },
    selfKey: forge.pki.privateKeyFromPem(pair.privateKey),
  });
  return { cert, key: pair.privateKey };
}

const PEM_CERT_RE = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

/** The certificates of a PEM bundle, each ending in a newline. */
export function splitPem(bundle: string): string[] {
  return (bundle.match(PEM_CERT_RE) ?? []).map((p) => `${p}\n`);
}

function parse(pem: string): X509Certificate | undefined {
  try {
    return new X509Certificate(pem);
  } catch {
    return undefined;
  }
}

function keyMatches(cert: X509Certificate, keyPem: string): boolean {
  try {
    return cert.checkPrivateKey(createPrivateKey(keyPem));
  } catch {
    return false;
  }
}

/** True when less than a third of the cert's lifetime is left at `now` (or it is not valid yet). */
export function isAgeing(cert: X509Certificate, now: Date): boolean {
  const from = Date.parse(cert.validFrom);
  const to = Date.parse(cert.validTo);
  const t = now.getTime();
  return t < from || to - t < (to - from) / 3;
}

/** The SANs of a cert (`DNS:a, IP Address:1.2.3.4`), sorted. */
export function sansOf(cert: X509Certificate): SanSpec {
  const dnsNames: string[] = [];
  const ips: string[] = [];
  for (const part of (cert.subjectAltName ?? '').split(/,\s*/)) {
    if (part.startsWith('DNS:')) dnsNames.push(part.slice(4));
    else if (part.startsWith('IP Address:')) ips.push(part.slice(11));
  }
  return { dnsNames: dnsNames.sort(), ips: ips.sort() };
}

function sameSans(a: SanSpec, b: SanSpec): boolean {
  const norm = (s: SanSpec): string => JSON.stringify([[...s.dnsNames].sort(), [...s.ips].sort()]);
  return norm(a) === norm(b);
}

/** What must be made anew: a new CA means a new serving cert too. `reason` says why (for the log), undefined when nothing. */
export interface RotationNeed {
  renewCa: boolean;
  renewCert: boolean;
  reason: string | undefined;
}

const NOTHING: RotationNeed = { renewCa: false, renewCert: false, reason: undefined };

/**
 * Whether the stored certs must be renewed at `now` for `sans`: the CA when anything of it is missing,
 * unparsable, not matching its key or ageing (less than 1/3 of its lifetime left); the serving cert
 * when it is missing, unparsable, not matching its key, not signed by the current CA, ageing, or its
 * SANs differ from `sans`. Pure.
 */
export function rotationNeed(bundle: Partial<WebhookCertBundle> | undefined, sans: SanSpec, now: Date): RotationNeed {
  const both = (reason: string): RotationNeed => ({ renewCa: true, renewCert: true, reason });
  const cert = (reason: string): RotationNeed => ({ renewCa: false, renewCert: true, reason });
  if (bundle === undefined) return both('no certificate yet');
  const caPem = splitPem(bundle.ca ?? '')[0];
  const ca = caPem === undefined ? undefined : parse(caPem);
  if (ca === undefined) return both('the CA is missing or unparsable');
  if (bundle.caKey === undefined || !keyMatches(ca, bundle.caKey)) return both('the CA key is missing or does not match the CA');
  if (!ca.ca) return both('the CA certificate is not a CA');
  if (isAgeing(ca, now)) return both('the CA has less than a third of its lifetime left');
  const served = bundle.cert === undefined ? undefined : parse(bundle.cert);
  if (served === undefined) return cert('the serving certificate is missing or unparsable');
  if (bundle.key === undefined || !keyMatches(served, bundle.key)) return cert('the serving key is missing or does not match the certificate');
  if (!served.verify(ca.publicKey)) return cert('the serving certificate is not signed by the current CA');
  if (isAgeing(served, now)) return cert('the serving certificate has less than a third of its lifetime left');
  if (!sameSans(sansOf(served), sans)) return cert('the SANs changed');
  return NOTHING;
}

/** Why TLS could not use the bundle (cert or key unparsable, not a pair, cert not signed by a CA of the bundle), or undefined. Pure. */
export function servingProblem(bundle: Partial<WebhookCertBundle>): string | undefined {
  const served = bundle.cert === undefined ? undefined : parse(bundle.cert);
  if (served === undefined) return 'the serving certificate is missing or unparsable';
  if (bundle.key === undefined || !keyMatches(served, bundle.key)) return 'the serving key is missing or does not match the certificate';
  const cas = splitPem(bundle.ca ?? '').map(parse);
  if (!cas.some((ca) => ca !== undefined && served.verify(ca.publicKey))) return 'the serving certificate is signed by no CA of ca.crt';
  return undefined;
}

/**
 * The bundle after a renewal that `need` asks for: a new CA (the old one stays in `ca` after it while it
 * is valid, so replicas that still serve the old cert stay trusted) and a new serving cert.
 */
export function renewBundle(prev: Partial<WebhookCertBundle> | undefined, need: RotationNeed, sans: SanSpec, now: Date): WebhookCertBundle {
  if (!need.renewCa && !need.renewCert && prev?.cert && prev.key && prev.ca && prev.caKey) {
    return { cert: prev.cert, key: prev.key, ca: prev.ca, caKey: prev.caKey };
  }
  const prevCaPem = splitPem(prev?.ca ?? '')[0];
  if (!need.renewCa && prevCaPem !== undefined && prev?.caKey !== undefined) {
    const served = makeServingCert({ cert: prevCaPem, key: prev.caKey }, sans, now);
    return { ...served, ca: prev.ca ?? prevCaPem, caKey: prev.caKey };
  }
  const ca = makeCa(now);
  const served = makeServingCert(ca, sans, now);
  const old = prevCaPem === undefined ? undefined : parse(prevCaPem);
  const keepOld = old !== undefined && Date.parse(old.validTo) > now.getTime() && prevCaPem !== undefined;
  return { ...served, ca: keepOld ? `${ca.cert}${prevCaPem}` : ca.cert, caKey: ca.key };
}
