// deploy/: what each overlay renders (kubectl kustomize, no cluster), that the kubevirt CRDs match deploy/crds, and the temporary overlay of `npm run cluster -- deploy`.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import YAML from 'yaml';
import { run } from '../support/cluster/exec.js';
import { overlayFiles } from '../support/cluster/deploy.js';
import { REPO_ROOT } from '../support/cluster.js';

const KUBECTL = path.join(REPO_ROOT, '.cache', 'k8s', 'bin', 'kubectl');
const noKubectl = fs.existsSync(KUBECTL) ? null : `no kubectl at ${KUBECTL} (npm run cluster -- up with VMLET_K8S_ASSETS set decompresses it)`;

interface Obj {
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  [k: string]: unknown;
}
type Rec = Record<string, unknown>;
const rec = (v: unknown): Rec => (typeof v === 'object' && v !== null ? (v as Rec) : {});
const arr = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);

async function render(overlay: string): Promise<Obj[]> {
  const out = await run(KUBECTL, ['kustomize', path.join(REPO_ROOT, 'deploy', 'overlays', overlay)]);
  return YAML.parseAllDocuments(out).map((d) => d.toJS() as Obj);
}
const find = (objs: Obj[], kind: string, name: string): Obj => {
  const o = objs.find((x) => x.kind === kind && x.metadata.name === name);
  if (!o) throw new Error(`no ${kind} ${name}`);
  return o;
};
const podSpec = (o: Obj): Rec => rec(rec(rec(o.spec).template).spec);
const container = (o: Obj): Rec => rec(arr(podSpec(o).containers)[0]);
const rulesOf = (o: Obj): Array<{ apiGroups: string[]; resources: string[]; verbs: string[]; resourceNames?: string[] }> =>
  arr(o.rules) as Array<{ apiGroups: string[]; resources: string[]; verbs: string[]; resourceNames?: string[] }>;
const allows = (o: Obj, group: string, resource: string, verb: string): boolean =>
  rulesOf(o).some((r) => r.apiGroups.includes(group) && r.resources.includes(resource) && r.verbs.includes(verb));

t.test('the test overlay renders vmlet as docs/cluster-mode.md names it', { skip: noKubectl ?? false }, async (t) => {
  const objs = await render('test');
  t.ok(
    objs.every((o) => o.metadata.labels?.['app.kubernetes.io/part-of'] === 'vmlet'),
    'every object carries app.kubernetes.io/part-of=vmlet',
  );
  t.ok(find(objs, 'Namespace', 'vmlet'));
  t.ok(find(objs, 'CustomResourceDefinition', 'virtualmachines.vmlet.io'));
  t.ok(find(objs, 'CustomResourceDefinition', 'virtualmachineinstances.vmlet.io'));
  t.notOk(
    objs.some((o) => o.metadata.name.endsWith('.kubevirt.io')),
    'no kubevirt.io CRDs without kubevirt-compat',
  );
  const cfg = YAML.parse(String(rec(find(objs, 'ConfigMap', 'vmlet-config').data)['vmlet.yaml'])) as Rec;
  t.same(cfg, { useEmulation: true, hostPaths: { allow: [] } }, 'the test config allows emulation');

  const ctl = find(objs, 'Deployment', 'vmlet-controller');
  t.equal(ctl.metadata.namespace, 'vmlet');
  t.equal(rec(ctl.spec).replicas, 2);
  const c = container(ctl);
  t.equal(c.image, 'localhost/vmlet:dev');
  t.equal(c.imagePullPolicy, 'Never');
  t.same([...arr(c.command), ...arr(c.args)], ['vmlet', 'controller']);
  t.same(
    arr(c.env).map((e) => rec(e).name),
    ['POD_NAME', 'POD_NAMESPACE'],
  );
  t.same(
    arr(c.ports).map((p) => rec(p).containerPort),
    [8080, 8443],
  );
  t.equal(rec(rec(c.readinessProbe).httpGet).path, '/readyz');
  t.equal(rec(rec(c.livenessProbe).httpGet).path, '/healthz');
  const sc = rec(c.securityContext);
  t.equal(sc.allowPrivilegeEscalation, false);
  t.same(rec(sc.capabilities).drop, ['ALL']);
  t.equal(rec(podSpec(ctl).securityContext).runAsNonRoot, true);
  t.equal(rec(rec(podSpec(ctl).securityContext).seccompProfile).type, 'RuntimeDefault');

  const svc = find(objs, 'Service', 'vmlet-webhook');
  t.same(
    arr(rec(svc.spec).ports).map((p) => [rec(p).port, rec(p).targetPort]),
    [[443, 'webhook']],
  );
  const vwc = find(objs, 'ValidatingWebhookConfiguration', 'vmlet-validator');
  const wh = rec(arr(vwc.webhooks)[0]);
  t.equal(wh.failurePolicy, 'Fail');
  t.equal(wh.sideEffects, 'None');
  t.same(rec(rec(wh.clientConfig).service), { namespace: 'vmlet', name: 'vmlet-webhook', path: '/validate', port: 443 });
  t.notOk('caBundle' in rec(wh.clientConfig), 'no caBundle: the controller fills it, an apply must not wipe it');
  t.same(arr(wh.rules), [
    {
      apiGroups: ['vmlet.io'],
      apiVersions: ['v1alpha1'],
      operations: ['CREATE', 'UPDATE'],
      resources: ['virtualmachines', 'virtualmachineinstances'],
      scope: 'Namespaced',
    },
  ]);

  const ds = find(objs, 'DaemonSet', 'vmlet-node');
  const d = container(ds);
  t.same([...arr(d.command), ...arr(d.args)], ['vmlet', 'daemon', '--mode', 'kubernetes', '--config', '/etc/vmlet/vmlet.yaml']);
  t.equal(rec(rec(rec(arr(d.env)[0]).valueFrom).fieldRef).fieldPath, 'spec.nodeName');
  t.equal(rec(d.securityContext).privileged, true);
  t.equal(podSpec(ds).hostPID, true);
  t.same(rec(rec(d.readinessProbe).exec).command, ['vmlet', 'version']);
  t.equal(rec(rec(ds.spec).updateStrategy).type, 'RollingUpdate');
  const vols = Object.fromEntries(arr(podSpec(ds).volumes).map((v) => [String(rec(v).name), rec(v)]));
  t.same(Object.fromEntries(Object.entries(vols).map(([k, v]) => [k, rec(v.hostPath).path ?? `configMap:${String(rec(v.configMap).name)}`])), {
    cgroup: '/sys/fs/cgroup',
    dev: '/dev',
    kubelet: '/var/lib/kubelet',
    'device-plugins': '/var/lib/kubelet/device-plugins',
    state: '/var/lib/vmlet',
    run: '/run/vmlet',
    config: 'configMap:vmlet-config',
  });
  t.equal(rec(vols.state?.hostPath).type, 'DirectoryOrCreate');
  t.equal(rec(vols.run?.hostPath).type, 'DirectoryOrCreate');
  const mounts = Object.fromEntries(arr(d.volumeMounts).map((m) => [rec(m).name, rec(m).mountPath]));
  t.equal(mounts.config, '/etc/vmlet');
  t.equal(mounts.kubelet, '/var/lib/kubelet');
});

t.test('RBAC: least privilege as docs/rbac.md lists it', { skip: noKubectl ?? false }, async (t) => {
  const objs = await render('test');
  const ctl = find(objs, 'ClusterRole', 'vmlet-controller');
  for (const verb of ['create', 'delete', 'get', 'list', 'watch']) t.ok(allows(ctl, '', 'pods', verb), `controller may ${verb} pods`);
  t.notOk(allows(ctl, '', 'pods', 'update'), 'controller may not update pods');
  t.notOk(allows(ctl, '', 'nodes', 'patch'), 'controller may not patch nodes');
  for (const res of ['persistentvolumeclaims', 'persistentvolumes']) {
    for (const verb of ['get', 'list', 'watch']) t.ok(allows(ctl, '', res, verb), `controller may ${verb} ${res} (claims are checked before a launcher pod)`);
    for (const verb of ['create', 'update', 'patch', 'delete']) t.notOk(allows(ctl, '', res, verb), `controller may not ${verb} ${res}`);
  }
  t.ok(allows(ctl, 'vmlet.io', 'virtualmachineinstances/status', 'update'));
  t.ok(allows(ctl, 'vmlet.io', 'virtualmachineinstances/finalizers', 'update'));
  t.notOk(
    rulesOf(ctl).some((r) => r.resources.includes('secrets')),
    'no cluster-wide secrets',
  );
  const wh = find(objs, 'ClusterRole', 'vmlet-controller-webhook');
  t.same(rulesOf(wh), [
    {
      apiGroups: ['admissionregistration.k8s.io'],
      resources: ['validatingwebhookconfigurations'],
      resourceNames: ['vmlet-validator'],
      verbs: ['get', 'patch'],
    },
  ]);
  const ctlRole = find(objs, 'Role', 'vmlet-controller');
  t.equal(ctlRole.metadata.namespace, 'vmlet');
  t.ok(
    rulesOf(ctlRole).some((r) => r.resources.includes('secrets') && r.resourceNames?.join() === 'vmlet-webhook-cert' && r.verbs.includes('get')),
    'reads only its own Secret',
  );
  const node = find(objs, 'ClusterRole', 'vmlet-node');
  t.notOk(allows(node, 'vmlet.io', 'virtualmachineinstances', 'patch'), 'the daemon patches only status');
  t.ok(allows(node, 'vmlet.io', 'virtualmachineinstances', 'update'), 'the daemon removes its own finalizer (read, then PUT)');
  t.notOk(allows(node, 'vmlet.io', 'virtualmachineinstances', 'create'), 'daemon does not create VMIs');
  t.notOk(allows(node, 'vmlet.io', 'virtualmachineinstances', 'delete'), 'daemon does not delete VMIs');
  t.ok(allows(node, 'vmlet.io', 'virtualmachineinstances/status', 'update'));
  t.ok(allows(node, '', 'nodes', 'patch'));
  t.notOk(allows(node, '', 'pods', 'create'), 'daemon does not create pods');
  t.notOk(
    rulesOf(node).some((r) => r.resources.includes('secrets')),
    'daemon reads no secrets',
  );
  const nodeRole = find(objs, 'Role', 'vmlet-node');
  t.ok(allows(nodeRole, 'coordination.k8s.io', 'leases', 'patch'), 'the heartbeat is renewed by merge patch');
  t.ok(allows(nodeRole, 'coordination.k8s.io', 'leases', 'delete'), 'and deleted when the node unregisters');
  t.notOk(allows(nodeRole, 'coordination.k8s.io', 'leases', 'update'));
  for (const b of ['vmlet-controller', 'vmlet-controller-webhook', 'vmlet-node'])
    t.same(
      arr(find(objs, 'ClusterRoleBinding', b).subjects).map((s) => rec(s).namespace),
      ['vmlet'],
      `${b} binds a vmlet ServiceAccount`,
    );
});

t.test('kubevirt-compat adds kubevirt.io CRDs, webhook rules and RBAC', { skip: noKubectl ?? false }, async (t) => {
  const objs = await render('kubevirt-compat');
  for (const n of ['virtualmachines.kubevirt.io', 'virtualmachineinstances.kubevirt.io']) {
    const crd = find(objs, 'CustomResourceDefinition', n);
    t.equal(rec(crd.spec).group, 'kubevirt.io');
    t.same(
      arr(rec(crd.spec).versions).map((v) => rec(v).name),
      ['v1'],
    );
    t.equal(crd.metadata.labels?.['app.kubernetes.io/part-of'], 'vmlet', `${n} carries vmlet's label (deploy checks for it)`);
  }
  const rules = arr(rec(arr(find(objs, 'ValidatingWebhookConfiguration', 'vmlet-validator').webhooks)[0]).rules).map((r) => rec(r));
  t.same(
    rules.map((r) => [arr(r.apiGroups)[0], arr(r.apiVersions)[0]]),
    [
      ['vmlet.io', 'v1alpha1'],
      ['kubevirt.io', 'v1'],
    ],
  );
  t.ok(allows(find(objs, 'ClusterRole', 'vmlet-controller'), 'kubevirt.io', 'virtualmachines', 'watch'));
  t.ok(allows(find(objs, 'ClusterRole', 'vmlet-node'), 'kubevirt.io', 'virtualmachineinstances/status', 'patch'));
  t.ok(allows(find(objs, 'ClusterRole', 'vmlet-node'), 'kubevirt.io', 'virtualmachineinstances', 'update'), 'and its finalizer on kubevirt.io VMIs');
  t.ok(find(objs, 'DaemonSet', 'vmlet-node'), 'everything of the test overlay is there too');
});

t.test('the kubevirt.io CRDs are in sync with deploy/crds (node scripts/gen-kubevirt-crds.mjs)', async (t) => {
  const gen = await import('../../scripts/gen-kubevirt-crds.mjs');
  for (const { file, content } of gen.expected()) t.equal(fs.readFileSync(file, 'utf8'), content, `${path.relative(REPO_ROOT, file)} is up to date`);
  for (const { content } of gen.expected()) {
    const crd = YAML.parse(content) as Rec;
    const src = YAML.parse(fs.readFileSync(path.join(REPO_ROOT, 'deploy', 'crds', `${String(rec(rec(crd.spec).names).plural)}.yaml`), 'utf8')) as Rec;
    const schema = (x: Rec): unknown => rec(arr(rec(x.spec).versions)[0]).schema;
    t.same(schema(crd), schema(src), 'same OpenAPI schema as the vmlet.io CRD');
  }
});

t.test('the temporary overlay of `deploy` patches the kubelet root dir into the DaemonSet and the config', { skip: noKubectl ?? false }, async (t) => {
  const rendered = await run(KUBECTL, ['kustomize', path.join(REPO_ROOT, 'deploy', 'overlays', 'test')]);
  const tmp = t.testdir({});
  const files = overlayFiles({
    rendered,
    overlayRel: path.relative(tmp, path.join(REPO_ROOT, 'deploy', 'overlays', 'test')),
    kubeletRoot: '/var/lib/k-test/kubelet',
    imageDigest: 'sha256:abc',
  });
  for (const [n, text] of Object.entries(files)) fs.writeFileSync(path.join(tmp, n), text);
  const objs = YAML.parseAllDocuments(await run(KUBECTL, ['kustomize', tmp])).map((d) => d.toJS() as Obj);
  const ds = find(objs, 'DaemonSet', 'vmlet-node');
  const kubelet = arr(podSpec(ds).volumes)
    .map(rec)
    .find((v) => v.name === 'kubelet');
  t.equal(rec(kubelet?.hostPath).path, '/var/lib/k-test/kubelet');
  t.equal(
    arr(container(ds).volumeMounts)
      .map(rec)
      .find((m) => m.name === 'kubelet')?.mountPath,
    '/var/lib/k-test/kubelet',
    'mounted at the same path',
  );
  t.same(YAML.parse(String(rec(find(objs, 'ConfigMap', 'vmlet-config').data)['vmlet.yaml'])), {
    useEmulation: true,
    hostPaths: { allow: [] },
    kubeletRootDir: '/var/lib/k-test/kubelet',
  });
  for (const o of [ds, find(objs, 'Deployment', 'vmlet-controller')])
    t.equal(rec(rec(rec(rec(o.spec).template).metadata).annotations)['vmlet.io/image-digest'], 'sha256:abc', `${o.kind} rolls on a new image`);
  t.equal(objs.length, (await render('test')).length, 'no object added or lost');
});
