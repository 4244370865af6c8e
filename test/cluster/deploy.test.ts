// vmlet's image and deploy/ on the test cluster: the image runs its tools in a pod, every overlay passes a server-side dry run, and (VMLET_DEPLOY_E2E=1) a real deploy turns Ready and undeploy leaves nothing.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { clusterSkipReason, REPO_ROOT, testCluster } from '../support/cluster.js';
import { deploy, kubevirtConflict, leftovers, notReady, undeploy } from '../support/cluster/deploy.js';
import { run, waitFor } from '../support/cluster/exec.js';
import { which } from '../support/which.js';

const NS = `h4-deploy-test-${randomBytes(3).toString('hex')}`;

function imageSkipReason(): string | null {
  const c = clusterSkipReason();
  if (c) return c;
  if (!which('mmdebstrap') && !fs.existsSync('/usr/bin/mmdebstrap'))
    return 'mmdebstrap is not installed (apt-get install mmdebstrap): the image base is bootstrapped with it';
  for (const f of ['dist/cli/main.js', 'native/build/vmlet-launch', 'native/build/kvm-probe.elf'])
    if (!fs.existsSync(path.join(REPO_ROOT, f))) return `${f} is missing (npm run build; make -C native)`;
  return null;
}

function e2eSkipReason(): string | null {
  if (process.env.VMLET_DEPLOY_E2E !== '1') return 'set VMLET_DEPLOY_E2E=1 once `vmlet controller` and `vmlet daemon --mode kubernetes` exist';
  if (process.env.VMLET_K8S_REUSE === '1')
    return "not on a shared cluster (VMLET_K8S_REUSE=1): deploy's Fail webhook and undeploy's CRD removal would hit everyone";
  return imageSkipReason();
}

/** What each container of the throwaway pod runs, and what its output must show. */
const CHECKS: Array<{ name: string; command: string[]; exit: number; expect: RegExp }> = [
  { name: 'help', command: ['vmlet', '--help'], exit: 0, expect: /vmlet daemon/ },
  { name: 'version', command: ['vmlet', 'version'], exit: 1, expect: /Client: +vmlet \d+\.\d+\.\d+[\s\S]*DAEMON_UNREACHABLE/ },
  { name: 'qemu', command: ['qemu-system-x86_64', '--version'], exit: 0, expect: /QEMU emulator version 7\./ },
  { name: 'launch', command: ['/usr/libexec/vmlet/vmlet-launch'], exit: 120, expect: /usage: vmlet-launch --uid UID/ },
  {
    name: 'node',
    command: ['node', '--input-type=module', '-e', "await import('koffi'); await import('@grpc/grpc-js'); console.log(process.version)"],
    exit: 0,
    expect: /^v2\d\./,
  },
  { name: 'qemu-user', command: ['id', 'qemu'], exit: 0, expect: /uid=107\(qemu\) gid=107\(qemu\)/ },
];

t.test('the image: built, loaded, and its tools run in a pod', { skip: imageSkipReason() ?? false }, async (t) => {
  const c = await testCluster(t);
  if (!c) return;
  const t0 = Date.now();
  const archive = (await run(process.execPath, [path.join(REPO_ROOT, 'scripts', 'build-image.mjs'), '--tag', 'dev'], { cwd: REPO_ROOT, timeoutMs: 1_800_000 }))
    .trim()
    .split('\n')
    .at(-1);
  t.ok(archive && fs.existsSync(archive), `archive ${archive}`);
  t.comment(`image ready in ${((Date.now() - t0) / 1000).toFixed(1)} s, ${Math.round(fs.statSync(String(archive)).size / 2 ** 20)} MiB`);
  await c.load(String(archive));
  t.teardown(() => c.kubectl(['delete', 'namespace', NS, '--wait=false', '--ignore-not-found']).then(() => {}));
  await c.kubectl(['create', 'namespace', NS]);
  const pod = {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name: 'image-check', namespace: NS },
    spec: {
      restartPolicy: 'Never',
      automountServiceAccountToken: false,
      containers: CHECKS.map((k) => ({ name: k.name, image: 'localhost/vmlet:dev', imagePullPolicy: 'Never', command: k.command })),
    },
  };
  await waitFor('the default ServiceAccount of the namespace', 30_000, async () =>
    (await c.api('GET', `/api/v1/namespaces/${NS}/serviceaccounts/default`)).status === 200 ? true : undefined,
  );
  await c.kubectl(['apply', '-f', '-'], JSON.stringify(pod));
  type St = { name: string; state?: { terminated?: { exitCode: number } } };
  const statuses = await waitFor('every check container to finish', 180_000, async () => {
    const p = (await c.api('GET', `/api/v1/namespaces/${NS}/pods/image-check`)).json() as { status?: { containerStatuses?: St[] } };
    const cs = p.status?.containerStatuses ?? [];
    return cs.length === CHECKS.length && cs.every((s) => s.state?.terminated) ? cs : undefined;
  });
  for (const k of CHECKS) {
    const s = statuses.find((x) => x.name === k.name);
    const logs = await c.kubectl(['logs', '-n', NS, 'image-check', '-c', k.name]);
    t.equal(s?.state?.terminated?.exitCode, k.exit, `${k.command.join(' ')} exits ${k.exit}`);
    t.match(logs, k.expect, `${k.command.join(' ')} prints what it should`);
  }
});

t.test('every overlay passes a server-side dry run, patched for this cluster', { skip: clusterSkipReason() ?? false }, async (t) => {
  const c = await testCluster(t);
  if (!c) return;
  for (const overlay of fs.readdirSync(path.join(REPO_ROOT, 'deploy', 'overlays'))) {
    if (overlay === 'kubevirt-compat' && (await kubevirtConflict(c))) {
      t.comment('kubevirt-compat: a foreign kubevirt.io CRD is here; its refusal is checked below');
      continue;
    }
    const r = await deploy(c, { overlay, build: false, dryRun: true });
    const text = fs.readFileSync(path.join(r.overlayDir, 'kustomization.yaml'), 'utf8');
    t.match(text, c.paths.kubeletRoot, `${overlay}: the temporary overlay names this cluster's kubelet root`);
  }
  await t.rejects(deploy(c, { overlay: 'no-such', build: false, dryRun: true }), { code: 'CLUSTER_DEPLOY_REFUSED' }, 'an unknown overlay is refused');
});

t.test('deploy, Ready, undeploy leaves nothing', { skip: e2eSkipReason() ?? false }, async (t) => {
  const c = await testCluster(t);
  if (!c) return;
  t.same(await leftovers(c), [], 'nothing of vmlet before');
  const r = await deploy(c, { overlay: 'test', log: (m) => t.comment(m), timeoutMs: 300_000 });
  t.comment(`deploy took ${r.seconds.toFixed(1)} s`);
  t.same(await notReady(c), [], 'controller and daemon Ready');
  const left = await undeploy(c, { overlay: 'test', log: (m) => t.comment(m) });
  t.same(left, [], 'undeploy left nothing');
});

t.test('kubevirt-compat is refused next to a kubevirt.io CRD that is not vmlet', { skip: e2eSkipReason() ?? false }, async (t) => {
  const c = await testCluster(t);
  if (!c) return;
  const crd = {
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: { name: 'virtualmachines.kubevirt.io' },
    spec: {
      group: 'kubevirt.io',
      scope: 'Namespaced',
      names: { kind: 'VirtualMachine', plural: 'virtualmachines', singular: 'virtualmachine', listKind: 'VirtualMachineList' },
      versions: [{ name: 'v1', served: true, storage: true, schema: { openAPIV3Schema: { type: 'object', 'x-kubernetes-preserve-unknown-fields': true } } }],
    },
  };
  await c.kubectl(['apply', '-f', '-'], JSON.stringify(crd));
  t.teardown(() => c.kubectl(['delete', 'crd', 'virtualmachines.kubevirt.io', '--ignore-not-found']).then(() => {}));
  t.match(await kubevirtConflict(c), /is not vmlet's/);
  await t.rejects(deploy(c, { overlay: 'kubevirt-compat', build: false }), { code: 'CLUSTER_DEPLOY_REFUSED' });
});
