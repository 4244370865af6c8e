// The admission webhook on the running cluster: the API server calls our HTTPS server (cert from WebhookCertKeeper), kubectl apply of bad VMIs is refused with vmlet's code and field, and a CA rotation keeps requests working.
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';
import { pino } from 'pino';
import t from 'tap';
import { WebhookCertKeeper, kubeCertApi } from '../../src/controller/webhook-cert-keeper.js';
import { makeCa, makeServingCert, splitPem, webhookSans } from '../../src/controller/webhook-cert.js';
import { WebhookServer } from '../../src/controller/webhook-server.js';
import { clusterSkipReason, testCluster, type Cluster } from '../support/cluster.js';
import { runStatus, sleep } from '../support/cluster/exec.js';

type Obj = Record<string, unknown>;
const NODE_IP = '10.250.0.1';
const suffix = randomBytes(3).toString('hex');
const NS = `h3-webhook-${suffix}`;
const CONFIG = `h3-vmlet-validator-${suffix}`;

function vmi(name: string, mutate: (spec: Obj & { domain: Obj }) => void = () => {}): Obj {
  const spec = {
    domain: { memory: { guest: '128Mi' }, devices: { disks: [{ name: 'root', disk: { bus: 'virtio' } }] } },
    volumes: [{ name: 'root', emptyDisk: { capacity: '1Gi' } }],
  };
  mutate(spec);
  return { apiVersion: 'vmlet.io/v1alpha1', kind: 'VirtualMachineInstance', metadata: { name, namespace: NS }, spec };
}

function webhookConfig(url: string): Obj {
  return {
    apiVersion: 'admissionregistration.k8s.io/v1',
    kind: 'ValidatingWebhookConfiguration',
    metadata: { name: CONFIG },
    webhooks: [
      {
        name: 'validate.vmlet.io',
        clientConfig: { url },
        rules: [
          {
            apiGroups: ['vmlet.io'],
            apiVersions: ['v1alpha1'],
            operations: ['CREATE', 'UPDATE'],
            resources: ['virtualmachines', 'virtualmachineinstances'],
            scope: 'Namespaced',
          },
        ],
        // only this test's namespace: a Fail webhook anywhere else would break everyone sharing the cluster
        namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': NS } },
        failurePolicy: 'Fail',
        sideEffects: 'None',
        admissionReviewVersions: ['v1'],
        timeoutSeconds: 5,
      },
    ],
  };
}

/** kubectl apply of one object: exit code and all it printed. */
async function apply(c: Cluster, obj: Obj): Promise<{ code: number; out: string }> {
  const r = await runStatus(path.join(c.config.binDir, 'kubectl'), ['--kubeconfig', c.kubeconfigPath, 'apply', '-f', '-'], { input: JSON.stringify(obj) });
  return { code: r.code, out: `${r.stdout}${r.stderr}`.trim() };
}

const reason = clusterSkipReason();

t.test('admission webhook on a real API server', { skip: reason ?? false }, async (t) => {
  const c = await testCluster(t);
  if (!c) return;
  await c.installCrds();
  const kc = new KubeConfig();
  kc.loadFromFile(c.kubeconfigPath);
  const log = pino({ level: process.env.VMLET_TEST_LOG ?? 'silent' });
  const server = new WebhookServer({ port: 0, host: NODE_IP, logger: log });
  const keeper = new WebhookCertKeeper({ kubeConfig: kc, namespace: NS, webhookConfigName: CONFIG, extraIps: [NODE_IP], logger: log });
  // teardown first, so that a failure anywhere below still removes the Fail webhook
  t.teardown(async () => {
    await runStatus(path.join(c.config.binDir, 'kubectl'), [
      '--kubeconfig',
      c.kubeconfigPath,
      'delete',
      'validatingwebhookconfiguration',
      CONFIG,
      '--ignore-not-found',
    ]);
    await server.stop();
    await runStatus(path.join(c.config.binDir, 'kubectl'), ['--kubeconfig', c.kubeconfigPath, 'delete', 'namespace', NS, '--ignore-not-found', '--wait=false']);
  });

  await c.kubectl(['create', 'namespace', NS]);
  // The URL needs the port and the keeper needs the configuration (for caBundle): listen first on a throw-away cert, swapped below.
  const now = new Date();
  const addr = await server.start(makeServingCert(makeCa(now), webhookSans({ ips: [NODE_IP] }), now));
  const url = `https://${NODE_IP}:${addr.port}/validate`;
  await c.kubectl(['apply', '-f', '-'], JSON.stringify(webhookConfig(url)));

  const t0 = Date.now();
  const first = await keeper.ensure();
  t.comment(`first ensure (CA + serving cert, Secret, caBundle): ${Date.now() - t0} ms`);
  t.match(first, { renewed: 'no certificate yet', caRenewed: true, caBundlePatched: true }, 'Secret created, caBundle set');
  server.setCert(keeper.current());
  keeper.onChange((cert) => server.setCert(cert));

  const secret = JSON.parse(await c.kubectl(['-n', NS, 'get', 'secret', 'vmlet-webhook-cert', '-o', 'json'])) as { type: string; data: Record<string, string> };
  t.equal(secret.type, 'kubernetes.io/tls', 'a kubernetes.io/tls Secret');
  t.same(Object.keys(secret.data).sort(), ['ca.crt', 'ca.key', 'tls.crt', 'tls.key']);
  const caBundleOf = async (): Promise<string> => {
    const w = await kubeCertApi(kc).readCaBundles(CONFIG);
    return w?.caBundles[0] ?? '';
  };
  t.equal(await caBundleOf(), Buffer.from(secret.data['ca.crt'] ?? '', 'base64').toString('utf8'), "caBundle is the Secret's ca.crt");

  // the API server picks a new configuration up within a second or two: wait until our webhook answers
  const bad = vmi('bad-disk-name', (s) => {
    ((s.domain['devices'] as Obj)['disks'] as Obj[])[0] = { name: 'root,file=x', disk: { bus: 'virtio' } };
    (s['volumes'] as Obj[])[0] = { name: 'root,file=x', emptyDisk: { capacity: '1Gi' } };
  });
  let last = { code: 0, out: '' };
  for (let i = 0; i < 40; i++) {
    last = await apply(c, bad);
    if (last.out.includes('denied the request')) break;
    if (last.code === 0) await c.kubectl(['-n', NS, 'delete', 'vmi', 'bad-disk-name', '--ignore-not-found']);
    await sleep(250);
  }

  await t.test('a bad manifest that reaches the webhook: our code and field in kubectl output', async (t) => {
    t.not(last.code, 0, 'refused');
    t.match(last.out, /admission webhook "validate\.vmlet\.io" denied the request: INVALID_NAME: spec\.domain\.devices\.disks\[0\]\.name: /, last.out);
    t.comment(last.out);
  });

  await t.test('a good VMI is accepted', async (t) => {
    const r = await apply(c, vmi('good-1'));
    t.equal(r.code, 0, r.out);
    t.match(r.out, /virtualmachineinstance\.vmlet\.io\/good-1 created/);
  });

  await t.test('bad manifests: which the webhook refuses and which the CRD schema refuses first', async (t) => {
    const cases: Array<[string, Obj, 'webhook' | 'apiserver', RegExp]> = [
      [
        'impossible memory size',
        vmi('huge', (s) => (s.domain['memory'] = { guest: '64Ti' })),
        'webhook',
        /OUT_OF_RANGE: spec\.domain\.memory\.guest: memory must be at most 16Ti/,
      ],
      [
        'memory below 16Mi',
        vmi('tiny', (s) => (s.domain['memory'] = { guest: '1Ki' })),
        'webhook',
        /OUT_OF_RANGE: spec\.domain\.memory\.guest: memory must be at least 16Mi/,
      ],
      ['malformed quantity', vmi('badq', (s) => (s.domain['memory'] = { guest: '12Gx' })), 'webhook', /INVALID_QUANTITY: spec\.domain\.memory\.guest: /],
      [
        'comma in an initrd path',
        vmi('initrd', (s) => (s.domain['firmware'] = { kernelBoot: { hostPath: { kernelPath: '/boot/vmlinuz', initrdPath: '/boot/initrd,if=none' } } })),
        'webhook',
        /INVALID_HOST_PATH: spec\.domain\.firmware\.kernelBoot\.hostPath\.initrdPath: must not contain a comma/,
      ],
      ['a disk without a volume', vmi('novol', (s) => (s['volumes'] = [])), 'webhook', /MISSING_VOLUME: spec\.domain\.devices\.disks\[0\]\.name: /],
      [
        'unknown field (kubectl asks for strict field validation)',
        vmi('unknown', (s) => (s.domain['gpus'] = [{ name: 'g', deviceName: 'x' }])),
        'apiserver',
        /unknown field "spec\.domain\.gpus"/,
      ],
      [
        'dots in metadata.name (a subdomain to Kubernetes, not a label to vmlet)',
        { ...vmi('x'), metadata: { name: 'a.b', namespace: NS } },
        'webhook',
        /INVALID_NAME: metadata\.name: must be a DNS-1123 label/,
      ],
      ['comma in metadata.name', { ...vmi('x'), metadata: { name: 'a,b', namespace: NS } }, 'apiserver', /a lowercase RFC 1123 subdomain/],
      [
        'enum of the CRD schema',
        vmi('bus', (s) => (s.domain['devices'] = { disks: [{ name: 'root', disk: { bus: 'floppy' } }] })),
        'apiserver',
        /Unsupported value: "floppy"/,
      ],
    ];
    for (const [name, obj, by, want] of cases) {
      const r = await apply(c, obj);
      t.not(r.code, 0, `${name}: refused`);
      t.match(r.out, want, `${name}: ${r.out}`);
      if (by === 'webhook') t.match(r.out, /denied the request/, `${name}: by our webhook`);
      else t.notMatch(r.out, /denied the request/, `${name}: by the API server before the webhook`);
    }
  });

  await t.test('an unknown field without strict field validation is pruned by the API server, never seen by the webhook', async (t) => {
    const obj = vmi('pruned', (s) => (s.domain['gpus'] = [{ name: 'g', deviceName: 'x' }]));
    const r = await runStatus(path.join(c.config.binDir, 'kubectl'), ['--kubeconfig', c.kubeconfigPath, 'apply', '--validate=false', '-f', '-'], {
      input: JSON.stringify(obj),
    });
    t.equal(r.code, 0, r.stderr);
    const stored = JSON.parse(await c.kubectl(['-n', NS, 'get', 'vmi', 'pruned', '-o', 'json'])) as { spec: { domain: Obj } };
    t.equal(stored.spec.domain['gpus'], undefined, 'the field is gone');
  });

  await t.test('UPDATE: a VMI spec is fixed, its labels are not', async (t) => {
    const changed = vmi('good-1', (s) => (s.domain['memory'] = { guest: '256Mi' }));
    const r = await apply(c, changed);
    t.not(r.code, 0);
    t.match(r.out, /denied the request: VMI_SPEC_IMMUTABLE: spec\.domain\.memory\.guest: /, r.out);
    const relabeled = vmi('good-1');
    (relabeled['metadata'] as Obj)['labels'] = { tier: 'front' };
    const ok = await apply(c, relabeled);
    t.equal(ok.code, 0, ok.out);
    t.match(ok.out, /configured/);
  });

  await t.test('a replica loads the same cert', async (t) => {
    const replica = new WebhookCertKeeper({ kubeConfig: kc, namespace: NS, webhookConfigName: CONFIG, logger: log });
    t.equal(await replica.load(), true);
    t.same(replica.current(), keeper.current());
  });

  await t.test('forced CA rotation: caBundle changes, requests still succeed', async (t) => {
    const before = await caBundleOf();
    const servedBefore = keeper.current().cert;
    const r = await keeper.ensure({ force: 'ca' });
    t.match(r, { renewed: 'forced CA rotation', caRenewed: true, caBundlePatched: true });
    const after = await caBundleOf();
    t.not(after, before, 'caBundle changed');
    t.equal(splitPem(after).length, 2, 'it holds the new CA and the old one');
    t.equal(splitPem(after)[1], splitPem(before)[0], 'the old CA second');
    t.not(keeper.current().cert, servedBefore, 'the server got the new cert');
    t.same(await keeper.ensure(), { renewed: undefined, caRenewed: false, caBundlePatched: false }, 'then nothing to do');
    // the API server's webhook client is rebuilt when the configuration changes; allow it a moment
    let ok = { code: 1, out: '' };
    for (let i = 0; i < 20 && ok.code !== 0; i++) {
      ok = await apply(c, vmi('good-2'));
      if (ok.code !== 0) await sleep(250);
    }
    t.equal(ok.code, 0, `accepted after the rotation: ${ok.out}`);
    const refused = await apply(
      c,
      vmi('huge2', (s) => (s.domain['memory'] = { guest: '64Ti' })),
    );
    t.match(refused.out, /denied the request: OUT_OF_RANGE: spec\.domain\.memory\.guest/, 'still judged by the webhook');
    const certOnly = await keeper.ensure({ force: 'cert' });
    t.match(certOnly, { caRenewed: false, caBundlePatched: false }, 'a serving-cert rotation leaves caBundle alone');
    const again = await apply(c, vmi('good-3'));
    t.equal(again.code, 0, again.out);
  });
});
