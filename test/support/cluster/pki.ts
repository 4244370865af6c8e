// Makes the test cluster's PKI with openssl: a CA, the API server's and kubelet's serving certs, one client cert per component, and the service-account key pair.
import fs from 'node:fs';
import path from 'node:path';
import { run } from './exec.js';

export interface CertSpec {
  name: string;
  cn: string;
  org?: string;
  /** subjectAltName entries, e.g. ['IP:127.0.0.1', 'DNS:kubernetes'] */
  sans?: string[];
  server?: boolean;
  client?: boolean;
}

/** The certificates of a one-node cluster whose node is `node` at `nodeIp` with the first service IP `serviceIp`. */
export function certSpecs(node: string, nodeIp: string, serviceIp: string): CertSpec[] {
  return [
    {
      name: 'apiserver',
      cn: 'kube-apiserver',
      server: true,
      sans: [
        'IP:127.0.0.1',
        `IP:${nodeIp}`,
        `IP:${serviceIp}`,
        'DNS:localhost',
        'DNS:kubernetes',
        'DNS:kubernetes.default',
        'DNS:kubernetes.default.svc',
        'DNS:kubernetes.default.svc.cluster.local',
      ],
    },
    { name: 'apiserver-kubelet-client', cn: 'kube-apiserver-kubelet-client', org: 'system:masters', client: true },
    { name: 'admin', cn: 'vmlet-admin', org: 'system:masters', client: true },
    { name: 'controller-manager', cn: 'system:kube-controller-manager', client: true },
    { name: 'scheduler', cn: 'system:kube-scheduler', client: true },
    { name: 'kube-proxy', cn: 'system:kube-proxy', client: true },
    { name: 'kubelet-client', cn: `system:node:${node}`, org: 'system:nodes', client: true },
    { name: 'kubelet-serving', cn: `system:node:${node}`, org: 'system:nodes', server: true, sans: [`IP:${nodeIp}`, `DNS:${node}`] },
  ];
}

/** The openssl extension section for one cert. */
export function extFile(spec: CertSpec): string {
  const usages = [...(spec.server ? ['serverAuth'] : []), ...(spec.client ? ['clientAuth'] : [])];
  const lines = ['basicConstraints=critical,CA:FALSE', 'keyUsage=critical,digitalSignature,keyEncipherment', `extendedKeyUsage=${usages.join(',')}`];
  if (spec.sans?.length) lines.push(`subjectAltName=${spec.sans.join(',')}`);
  return `${lines.join('\n')}\n`;
}

function subject(cn: string, org?: string): string {
  return org ? `/O=${org}/CN=${cn}` : `/CN=${cn}`;
}

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

/** Writes the PKI into `dir` (ca.crt/key, NAME.crt/key per spec, sa.key/pub) unless it is already there. */
export async function ensurePki(dir: string, specs: CertSpec[]): Promise<void> {
  if (fs.existsSync(path.join(dir, 'done'))) return;
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const p = (f: string): string => path.join(dir, f);
  await run('openssl', [
    'req',
    '-x509',
    ...EC,
    '-keyout',
    p('ca.key'),
    '-out',
    p('ca.crt'),
    '-days',
    '3650',
    '-subj',
    '/CN=vmlet-test-cluster-ca',
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign,digitalSignature',
  ]);
  for (const spec of specs) {
    fs.writeFileSync(p(`${spec.name}.ext`), extFile(spec));
    await run('openssl', ['req', '-new', ...EC, '-keyout', p(`${spec.name}.key`), '-out', p(`${spec.name}.csr`), '-subj', subject(spec.cn, spec.org)]);
    await run('openssl', [
      'x509',
      '-req',
      '-in',
      p(`${spec.name}.csr`),
      '-CA',
      p('ca.crt'),
      '-CAkey',
      p('ca.key'),
      '-CAcreateserial',
      '-days',
      '3650',
      '-out',
      p(`${spec.name}.crt`),
      '-extfile',
      p(`${spec.name}.ext`),
    ]);
  }
  await run('openssl', ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', p('sa.key')]);
  await run('openssl', ['pkey', '-in', p('sa.key'), '-pubout', '-out', p('sa.pub')]);
  fs.writeFileSync(p('done'), '');
}
