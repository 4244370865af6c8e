// The served API group as a setting: apiGroup / $VMLET_API_GROUP for the daemon, the controller's leader Lease per group, its refusal next to a real KubeVirt's CRDs, and the kubevirt-compat component that sets it.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ApiException } from '@kubernetes/client-node';
import t from 'tap';
import YAML from 'yaml';
import { checkGroupIsVmlets, leaderLeaseName, type CrdReader } from '../../src/controller/main.js';
import { API_GROUPS, defaultConfig, loadConfig, mergeConfig, parseApiGroup } from '../../src/daemon/config.js';
import { isVmletError } from '../../src/errors.js';
import { run } from '../support/cluster/exec.js';
import { REPO_ROOT } from '../support/cluster.js';

const VMLET = { 'app.kubernetes.io/part-of': 'vmlet' };

/** A fake API server's CRDs: name → labels, or an HTTP status to fail with. */
function crds(known: Record<string, Record<string, string> | number>): CrdReader & { asked: string[] } {
  const asked: string[] = [];
  return {
    asked,
    readCustomResourceDefinition: ({ name }) => {
      asked.push(name);
      const v = known[name];
      if (v === undefined) return Promise.reject(new ApiException(404, 'not found', {}, {}));
      if (typeof v === 'number') return Promise.reject(new ApiException(v, 'server error', {}, {}));
      return Promise.resolve({ metadata: { name, labels: v } });
    },
  };
}

t.test('apiGroup is one of the served groups, split into group and version', async (t) => {
  t.same(API_GROUPS, ['vmlet.io/v1alpha1', 'kubevirt.io/v1']);
  t.same(parseApiGroup('kubevirt.io/v1', 'x'), { group: 'kubevirt.io', version: 'v1' });
  t.same(parseApiGroup('vmlet.io/v1alpha1', 'x'), { group: 'vmlet.io', version: 'v1alpha1' });
  for (const bad of ['kubevirt.io', 'kubevirt.io/v1alpha3', 'example.com/v1', '']) {
    t.throws(
      () => parseApiGroup(bad, 'src'),
      { code: 'CONFIG_INVALID', message: /^src: apiGroup must be one of vmlet\.io\/v1alpha1, kubevirt\.io\/v1/ },
      `${JSON.stringify(bad)} refused`,
    );
  }
});

t.test('the daemon config: apiGroup key (default vmlet.io/v1alpha1), $VMLET_API_GROUP wins', async (t) => {
  const base = defaultConfig(REPO_ROOT);
  t.equal(base.apiGroup, 'vmlet.io/v1alpha1', 'vmlet.io by default');
  t.equal(mergeConfig(base, { apiGroup: 'kubevirt.io/v1' }, 'f').apiGroup, 'kubevirt.io/v1', 'the key is read');
  t.throws(() => mergeConfig(base, { apiGroup: 'kubevirt.io/v2' }, 'f.yaml'), { code: 'CONFIG_INVALID', message: /^f\.yaml: apiGroup/ });
  t.throws(() => mergeConfig(base, { apiGroup: 1 }, 'f.yaml'), { code: 'CONFIG_INVALID', message: /"apiGroup" must be a string/ });

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-apigroup-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'vmlet.yaml');
  fs.writeFileSync(file, 'mode: kubernetes\napiGroup: vmlet.io/v1alpha1\n');
  const saved = process.env.VMLET_API_GROUP;
  t.teardown(() => {
    if (saved === undefined) delete process.env.VMLET_API_GROUP;
    else process.env.VMLET_API_GROUP = saved;
  });
  delete process.env.VMLET_API_GROUP;
  t.equal(loadConfig(REPO_ROOT, { config: file }).apiGroup, 'vmlet.io/v1alpha1', 'from the file');
  process.env.VMLET_API_GROUP = 'kubevirt.io/v1';
  t.equal(loadConfig(REPO_ROOT, { config: file }).apiGroup, 'kubevirt.io/v1', 'the environment wins over the file');
  process.env.VMLET_API_GROUP = 'kubevirt.io';
  t.throws(() => loadConfig(REPO_ROOT, { config: file }), { code: 'CONFIG_INVALID', message: /^\$VMLET_API_GROUP: apiGroup must be one of/ });
});

t.test('one leader Lease per group', async (t) => {
  t.equal(leaderLeaseName('vmlet.io'), 'vmlet-controller', 'vmlet.io keeps the Lease the deploy docs name');
  t.equal(leaderLeaseName('kubevirt.io'), 'vmlet-controller-kubevirt');
});

t.test("the controller serves a group other than vmlet.io only when its CRDs are vmlet's", async (t) => {
  const none = crds({});
  await checkGroupIsVmlets(none, 'vmlet.io');
  t.same(none.asked, [], 'vmlet.io is always ours: no CRD is read');

  const ours = crds({ 'virtualmachines.kubevirt.io': VMLET, 'virtualmachineinstances.kubevirt.io': { ...VMLET, other: 'x' } });
  await checkGroupIsVmlets(ours, 'kubevirt.io');
  t.same(ours.asked, ['virtualmachines.kubevirt.io', 'virtualmachineinstances.kubevirt.io'], 'both CRDs are checked');

  const kubevirt = crds({ 'virtualmachines.kubevirt.io': { 'app.kubernetes.io/component': 'kubevirt', 'app.kubernetes.io/managed-by': 'virt-operator' } });
  const e1: unknown = await checkGroupIsVmlets(kubevirt, 'kubevirt.io').catch((e: unknown) => e);
  t.ok(isVmletError(e1, 'API_GROUP_NOT_VMLET'), 'a real KubeVirt CRD: API_GROUP_NOT_VMLET');
  t.match((e1 as Error).message, /virtualmachines\.kubevirt\.io is not vmlet's \(no label app\.kubernetes\.io\/part-of=vmlet\): is KubeVirt installed\?/);

  const other = crds({ 'virtualmachines.kubevirt.io': { 'app.kubernetes.io/part-of': 'kubevirt' }, 'virtualmachineinstances.kubevirt.io': VMLET });
  await t.rejects(checkGroupIsVmlets(other, 'kubevirt.io'), { code: 'API_GROUP_NOT_VMLET' }, 'a part-of label of someone else is refused too');

  const half = crds({ 'virtualmachines.kubevirt.io': VMLET, 'virtualmachineinstances.kubevirt.io': {} });
  await t.rejects(checkGroupIsVmlets(half, 'kubevirt.io'), { code: 'API_GROUP_NOT_VMLET', message: /virtualmachineinstances\.kubevirt\.io is not vmlet's/ });

  await t.rejects(
    checkGroupIsVmlets(crds({}), 'kubevirt.io'),
    { code: 'API_GROUP_NOT_VMLET', message: /the CRD virtualmachines\.kubevirt\.io does not exist: apply deploy\/components\/kubevirt-compat/ },
    'no CRD at all',
  );
  const e2: unknown = await checkGroupIsVmlets(crds({ 'virtualmachines.kubevirt.io': 503 }), 'kubevirt.io').catch((e: unknown) => e);
  t.ok(e2 instanceof ApiException && e2.code === 503, 'any other API error is passed on as it is');
});

const KUBECTL = path.join(REPO_ROOT, '.cache', 'k8s', 'bin', 'kubectl');
const noKubectl = fs.existsSync(KUBECTL) ? false : `no kubectl at ${KUBECTL} (npm run cluster -- up with VMLET_K8S_ASSETS set decompresses it)`;

interface Obj {
  kind: string;
  metadata: { name: string };
  spec?: { template?: { spec?: { containers?: Array<{ env?: Array<{ name: string; value?: string }> }> } } };
  rules?: Array<{ apiGroups: string[]; resources: string[]; resourceNames?: string[]; verbs: string[] }>;
}

t.test('kubevirt-compat sets VMLET_API_GROUP on the controller and the node daemons, and lets the controller read its CRDs', { skip: noKubectl }, async (t) => {
  const render = async (overlay: string): Promise<Obj[]> =>
    YAML.parseAllDocuments(await run(KUBECTL, ['kustomize', path.join(REPO_ROOT, 'deploy', 'overlays', overlay)])).map((d) => d.toJS() as Obj);
  const envOf = (objs: Obj[], kind: string, name: string): string | undefined =>
    objs.find((o) => o.kind === kind && o.metadata.name === name)?.spec?.template?.spec?.containers?.[0]?.env?.find((e) => e.name === 'VMLET_API_GROUP')?.value;
  const compat = await render('kubevirt-compat');
  t.equal(envOf(compat, 'Deployment', 'vmlet-controller'), 'kubevirt.io/v1', 'the controller');
  t.equal(envOf(compat, 'DaemonSet', 'vmlet-node'), 'kubevirt.io/v1', 'the node daemons');
  const rules = compat.find((o) => o.kind === 'ClusterRole' && o.metadata.name === 'vmlet-controller')?.rules ?? [];
  t.same(
    rules.filter((r) => r.resources.includes('customresourcedefinitions')),
    [
      {
        apiGroups: ['apiextensions.k8s.io'],
        resources: ['customresourcedefinitions'],
        resourceNames: ['virtualmachines.kubevirt.io', 'virtualmachineinstances.kubevirt.io'],
        verbs: ['get'],
      },
    ],
    'get on the two kubevirt.io CRDs only',
  );
  const plain = await render('test');
  t.equal(envOf(plain, 'Deployment', 'vmlet-controller'), undefined, 'without the component: vmlet.io');
  t.equal(envOf(plain, 'DaemonSet', 'vmlet-node'), undefined);
});
