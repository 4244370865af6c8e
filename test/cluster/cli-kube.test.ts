// `vmlet --kubeconfig` against the test cluster's API server: apply, get, delete, start/stop/restart as API writes, node-local verbs refused; holds whether a vmlet controller runs or not.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import YAML from 'yaml';
import { clusterSkipReason, REPO_ROOT, testCluster, type Cluster } from '../support/cluster.js';
import { runCli } from '../support/fake-backend.js';

type Obj = Record<string, unknown>;
const NS = `cli-${randomBytes(3).toString('hex')}`;
const NOW = Date.now();

// A nodeSelector no node has: a vmlet controller that happens to run leaves the VMIs Pending, with no pod and no finalizer.
const template = {
  metadata: { labels: { app: 'cli' } },
  spec: {
    nodeSelector: { 'vmlet.io/cli-test': 'nowhere' },
    domain: { memory: { guest: '128Mi' }, devices: { disks: [{ name: 'root', disk: { bus: 'virtio' } }] } },
    volumes: [{ name: 'root', emptyDisk: { capacity: '1Gi' } }],
  },
};
const vm = (name: string, runStrategy: string): Obj => ({
  apiVersion: 'vmlet.io/v1alpha1',
  kind: 'VirtualMachine',
  metadata: { name, namespace: NS },
  spec: { runStrategy, template },
});

t.test('vmlet CLI against the API server', { skip: clusterSkipReason() ?? false }, async (t) => {
  const c: Cluster | undefined = await testCluster({
    skip: (m) => void t.skip(m, () => {}),
    teardown: (fn) => t.teardown(fn),
    comment: (...a) => t.comment(...a),
  });
  if (!c) return;
  const cli = (argv: string[]): ReturnType<typeof runCli> => runCli(['--kubeconfig', c.kubeconfigPath, '-n', NS, ...argv], { env: {}, now: NOW });
  const getJson = async (what: string): Promise<Obj> => JSON.parse(await c.kubectl(['-n', NS, 'get', what, '-o', 'json'])) as Obj;
  const exists = async (what: string): Promise<boolean> => (await c.kubectl(['-n', NS, 'get', what, '--ignore-not-found', '-o', 'name'])).trim() !== '';
  /** The VM's VMI: made by hand, owned by the VM, unless a running controller already made one. */
  const ownedVmi = async (name: string): Promise<Obj> => {
    const owner = (await getJson(`virtualmachines.vmlet.io/${name}`))['metadata'] as Obj;
    const body = {
      apiVersion: 'vmlet.io/v1alpha1',
      kind: 'VirtualMachineInstance',
      metadata: {
        name,
        namespace: NS,
        ownerReferences: [{ apiVersion: 'vmlet.io/v1alpha1', kind: 'VirtualMachine', name, uid: owner['uid'], controller: true }],
      },
      spec: template.spec,
    };
    if (!(await exists(`virtualmachineinstances.vmlet.io/${name}`))) await c.kubectl(['apply', '-f', '-'], JSON.stringify(body));
    return getJson(`virtualmachineinstances.vmlet.io/${name}`);
  };
  const uidOf = (o: Obj): unknown => (o['metadata'] as Obj)['uid'];

  if (!(await c.kubectl(['get', 'crd', '--ignore-not-found', '-o', 'name'])).includes('virtualmachines.vmlet.io')) {
    for (const f of ['virtualmachines.yaml', 'virtualmachineinstances.yaml']) await c.kubectl(['apply', '-f', path.join(REPO_ROOT, 'deploy', 'crds', f)]);
    await c.kubectl(['wait', '--for=condition=Established', 'crd/virtualmachines.vmlet.io', 'crd/virtualmachineinstances.vmlet.io', '--timeout=30s']);
  }
  await c.kubectl(['create', 'namespace', NS]);
  t.teardown(() => c.kubectl(['delete', 'namespace', NS, '--ignore-not-found', '--wait=false']).then(() => undefined));
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmlet-cli-kube-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  const manifest = async (...docs: Obj[]): Promise<string> => {
    const file = path.join(dir, `m-${randomBytes(3).toString('hex')}.yaml`);
    await fs.writeFile(file, docs.map((d) => YAML.stringify(d)).join('---\n'));
    return file;
  };

  await t.test('apply creates, then updates with the resourceVersion read', async (t) => {
    const created = await cli(['apply', '-f', await manifest(vm('web', 'Halted'), vm('manual', 'Manual'), vm('always', 'Always'))]);
    t.equal(created.code, 0, created.stderr);
    t.equal(created.stdout, 'virtualmachine.vmlet.io/web created\nvirtualmachine.vmlet.io/manual created\nvirtualmachine.vmlet.io/always created\n');
    const changed = vm('web', 'Halted');
    (changed['metadata'] as Obj)['labels'] = { tier: 'front' };
    const configured = await cli(['apply', '-f', await manifest(changed)]);
    t.equal(configured.stdout, 'virtualmachine.vmlet.io/web configured\n', configured.stderr);
    t.match(await getJson('virtualmachines.vmlet.io/web'), { metadata: { labels: { tier: 'front' } }, spec: { runStrategy: 'Halted' } });
    const bad = await cli(['apply', '-f', await manifest(vm('bad', 'Sometimes'))]);
    t.equal(bad.code, 1);
    t.match(
      bad.stderr,
      /^error: VirtualMachine\.vmlet\.io "bad" is invalid:\nerror: spec\.runStrategy: Unsupported value: "Sometimes".* \(FieldValueNotSupported\)\n$/,
    );
  });

  await t.test('get: tables, -o json|yaml|wide|name, -A', async (t) => {
    const table = await cli(['get', 'vms']);
    t.equal(table.code, 0, table.stderr);
    t.match(table.stdout, /^NAME\s+AGE\s+STATUS\s+READY\n/);
    t.match(table.stdout, /\nweb\s+\S+\s+/);
    const wide = await cli(['get', 'vm', 'web', '-o', 'wide']);
    t.match(wide.stdout, /^NAME\s+AGE\s+STATUS\s+READY\s+RUNSTRATEGY\nweb\s.*\sHalted\n$/);
    const json = JSON.parse((await cli(['get', 'vm', 'web', '-o', 'json'])).stdout) as Obj;
    t.match(json, { apiVersion: 'vmlet.io/v1alpha1', kind: 'VirtualMachine', metadata: { name: 'web', namespace: NS, uid: String } });
    const list = YAML.parse((await cli(['get', 'vms', '-o', 'yaml'])).stdout) as Obj;
    t.match(list, { kind: 'VirtualMachineList', items: [{ metadata: { name: 'always' } }, { metadata: { name: 'manual' } }, { metadata: { name: 'web' } }] });
    t.equal((await cli(['get', 'vms', '-o', 'name'])).stdout, 'virtualmachine.vmlet.io/always\nvirtualmachine.vmlet.io/manual\nvirtualmachine.vmlet.io/web\n');
    const all = await cli(['get', 'vms', '-A']);
    t.match(all.stdout, new RegExp(`\\n${NS}\\s+web\\s`));
    const none = await cli(['get', 'vmis', '-n', `${NS}-empty`]);
    t.equal(none.stderr, `No resources found in ${NS}-empty namespace.\n`);
    const missing = await cli(['get', 'vm', 'nope']);
    t.equal(missing.stderr, 'error: virtualmachines.vmlet.io "nope" not found (NOT_FOUND)\n');
    const described = await cli(['describe', 'vm', 'web']);
    t.match(described.stdout, new RegExp(`^Name:\\s+web\\nNamespace:\\s+${NS}\\n`));
    t.match(described.stdout, /Run strategy:\s+Halted\n/);
  });

  await t.test('start and stop flip runStrategy', async (t) => {
    const start = await cli(['start', 'web']);
    t.equal(start.stdout, 'VM web was scheduled to start\n', start.stderr);
    t.match(await getJson('virtualmachines.vmlet.io/web'), { spec: { runStrategy: 'Always' } });
    const stop = await cli(['stop', 'web']);
    t.equal(stop.code, 0, stop.stderr);
    t.match(await getJson('virtualmachines.vmlet.io/web'), { spec: { runStrategy: 'Halted' } });
    // The VMI a controller may have made for web can still be going: a VM that never ran has none for sure.
    await cli(['apply', '-f', await manifest(vm('idle', 'Halted'))]);
    t.equal((await cli(['stop', 'idle'])).stderr, 'error: VirtualMachine "idle" is not running (VM_NOT_RUNNING)\n');
    t.equal((await cli(['restart', 'idle'])).stderr, 'error: VirtualMachine "idle" is not running; use start (VM_NOT_RUNNING)\n');
  });

  await t.test('restart deletes the VMI; a Manual VM gets a new one at once', async (t) => {
    const first = await ownedVmi('always');
    t.equal((await cli(['start', 'always'])).stderr, 'error: VirtualMachine "always" is already running (VM_ALREADY_RUNNING)\n');
    const r = await cli(['restart', 'always']);
    t.equal(r.stdout, 'VM always was scheduled to restart\n', r.stderr);
    // Gone; or, with a controller running, already replaced by a new one.
    const now = (await exists('virtualmachineinstances.vmlet.io/always')) ? uidOf(await getJson('virtualmachineinstances.vmlet.io/always')) : undefined;
    t.not(now, uidOf(first), 'that VMI is deleted');
    t.match(await getJson('virtualmachines.vmlet.io/always'), { spec: { runStrategy: 'Always' } }, 'runStrategy untouched');

    const old = await ownedVmi('manual');
    const m = await cli(['restart', 'manual']);
    t.equal(m.code, 0, m.stderr);
    const fresh = await getJson('virtualmachineinstances.vmlet.io/manual');
    const vmUid = ((await getJson('virtualmachines.vmlet.io/manual'))['metadata'] as Obj)['uid'];
    t.not(uidOf(fresh), uidOf(old), 'a new VMI');
    t.match(fresh, { metadata: { labels: { app: 'cli' }, ownerReferences: [{ kind: 'VirtualMachine', name: 'manual', uid: vmUid, controller: true }] } });
    t.match(await getJson('virtualmachines.vmlet.io/manual'), { spec: { runStrategy: 'Manual' } }, 'still Manual');
  });

  await t.test('node-local verbs are refused with NODE_LOCAL_VERB', async (t) => {
    const pending = await cli(['pause', 'manual']);
    t.equal(pending.code, 1);
    t.match(pending.stderr, /has no node yet .*\(NODE_LOCAL_VERB\)\n$/);
    await c.kubectl(['-n', NS, 'patch', 'vmi', 'manual', '--subresource=status', '--type=merge', '-p', JSON.stringify({ status: { nodeName: 'node-x' } })]);
    for (const verb of ['pause', 'unpause', 'softreboot', 'reset', 'console']) {
      const r = await cli([verb, 'manual']);
      t.match(r.stderr, new RegExp(`run it on node node-x: vmlet --socket /run/vmlet/vmlet\\.sock -n ${NS} ${verb} manual \\(NODE_LOCAL_VERB\\)\\n$`), verb);
    }
    t.match((await cli(['qmp', 'manual', '{"execute":"query-status"}'])).stderr, /node node-x: .* qmp manual 'JSON' \(NODE_LOCAL_VERB\)/);
  });

  await t.test('delete, delete --wait, version', async (t) => {
    const d = await cli(['delete', 'vmi', 'manual']);
    t.equal(d.stdout, 'virtualmachineinstance.vmlet.io "manual" deleted\n', d.stderr);
    t.notOk(await exists('virtualmachineinstances.vmlet.io/manual'));
    const w = await cli(['delete', 'vm', 'manual', '--wait']);
    t.equal(w.stdout, 'virtualmachine.vmlet.io "manual" deleted\n', w.stderr);
    t.notOk(await exists('virtualmachines.vmlet.io/manual'));
    const v = await cli(['version']);
    t.equal(v.code, 0, v.stderr);
    t.match(v.stdout, /\nServer:\s+Kubernetes v\d+\.\d+\.\d+\S* at https:\/\//);
  });
});
