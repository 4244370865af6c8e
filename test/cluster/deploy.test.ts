// vmlet's image and deploy/ on the test cluster: the image runs its tools in a pod, every overlay passes a server-side dry run, a real deploy turns Ready and runs VMs (admission, a daemon pod and the leading controller deleted, KubeVirt's kinds through the compat overlay), and undeploy leaves nothing.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { clusterSkipReason, REPO_ROOT, testCluster } from '../support/cluster.js';
import { deploy, kubevirtConflict, leftovers, notReady, undeploy } from '../support/cluster/deploy.js';
import { run, waitFor } from '../support/cluster/exec.js';
import { importContainerDiskImage } from '../support/cluster/container-disk.js';
import { testDiskImage } from '../support/container-disk.js';
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
  if (process.env.VMLET_K8S_REUSE === '1')
    return "not on a shared cluster (VMLET_K8S_REUSE=1): deploy's Fail webhook and undeploy's CRD removal would hit everyone";
  return imageSkipReason();
}

/** What each container of the throwaway pod runs, and what its output must show. */
const CHECKS: Array<{ name: string; command: string[]; exit: number; expect: RegExp }> = [
  { name: 'help', command: ['vmlet', '--help'], exit: 0, expect: /vmlet daemon/ },
  // stdout and stderr reach the container log in either order
  { name: 'version', command: ['vmlet', 'version'], exit: 1, expect: /^(?=[\s\S]*Client: +vmlet \d+\.\d+\.\d+)(?=[\s\S]*DAEMON_UNREACHABLE)/ },
  { name: 'qemu', command: ['qemu-system-x86_64', '--version'], exit: 0, expect: /QEMU emulator version 7\./ },
  { name: 'launch', command: ['/usr/libexec/vmlet/vmlet-launch'], exit: 120, expect: /usage: vmlet-launch --uid UID/ },
  { name: 'disk-wait', command: ['/usr/libexec/vmlet/vmlet-disk-wait'], exit: 2, expect: /usage: vmlet-disk-wait VOLUME/ },
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
  // A server-side dry run checks namespaced objects against their namespace, which it does not create.
  const hadNamespace = (await c.api('GET', '/api/v1/namespaces/vmlet')).status === 200;
  if (!hadNamespace) {
    await c.kubectl(['create', 'namespace', 'vmlet']);
    t.teardown(() => c.kubectl(['delete', 'namespace', 'vmlet', '--wait=false']).then(() => {}));
  }
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

type Vmi = { metadata: { uid: string }; status?: { phase?: string; nodeName?: string; vmlet?: { qemuPid?: number } } };

t.test('deploy, Ready, VMs run, undeploy leaves nothing', { skip: e2eSkipReason() ?? false }, async (t) => {
  const c = await testCluster(t);
  if (!c) return;
  t.same(await leftovers(c), [], 'nothing of vmlet before');
  const r = await deploy(c, { overlay: 'test', log: (m) => t.comment(m), timeoutMs: 300_000 });
  t.comment(`deploy took ${r.seconds.toFixed(1)} s`);
  t.same(await notReady(c), [], 'controller and daemon Ready');
  const k = (args: string[], input?: string): Promise<string> => c.kubectl(args, input);
  // An apply right after a deploy can still find the webhook unreachable (a CI run: "connection refused" from its
  // Service although its pods were Ready and the endpoints current; another, after the kubevirt-compat overlay
  // replaced the controller: "connection reset by peer" on the third apply); with failurePolicy Fail that refuses
  // the object, and kubectl's user would try again: so does the test, for a while.
  const apply = async (input: string): Promise<string> => {
    const deadline = Date.now() + 60_000;
    for (;;) {
      try {
        return await k(['apply', '-f', '-'], input);
      } catch (e) {
        if (Date.now() > deadline || !/failed calling webhook .*(connection refused|connection reset by peer|no endpoints|i\/o timeout)/.test(String(e)))
          throw e;
        t.comment(`the webhook did not answer yet: ${String(e).slice(-120)}`);
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
  };
  const ns = `dep-${randomBytes(3).toString('hex')}`;
  await k(['create', 'namespace', ns]);
  const vmiOf = async (name: string, group = 'vmlet.io'): Promise<Vmi | undefined> => {
    const res = await c.api('GET', `/apis/${group}/${group === 'vmlet.io' ? 'v1alpha1' : 'v1'}/namespaces/${ns}/virtualmachineinstances/${name}`);
    return res.status === 200 ? (res.json() as Vmi) : undefined;
  };
  const vm = (name: string, apiVersion = 'vmlet.io/v1alpha1'): string =>
    JSON.stringify({
      apiVersion,
      kind: 'VirtualMachine',
      metadata: { name, namespace: ns },
      spec: { runStrategy: 'Always', template: { metadata: { labels: { app: name } }, spec: { domain: { memory: { guest: '64Mi' } } } } },
    });
  const running = (name: string, group?: string): Promise<Vmi> =>
    waitFor(`VMI ${name} Running`, 180_000, async () => {
      const v = await vmiOf(name, group);
      return v?.status?.phase === 'Running' ? v : undefined;
    });

  await t.test('kubectl apply of a VM: its VMI runs, with the node and QEMU in status', async (t) => {
    await apply(vm('one'));
    const v = await running('one');
    t.equal(v.status?.nodeName, c.config.node);
    t.ok(v.status?.vmlet?.qemuPid && fs.existsSync(`/proc/${v.status.vmlet.qemuPid}`), 'QEMU runs on the node');
    const table = await k(['get', 'vmis', '-n', ns]);
    t.match(table, /one\s+\S+\s+Running\s+10\.244\.\S+\s+vmlet-test-node\s+True/, `kubectl get vmis: ${table}`);
  });

  await t.test('a bad manifest is refused by the webhook with the code and field standalone gives', async (t) => {
    const bad = JSON.stringify({
      apiVersion: 'vmlet.io/v1alpha1',
      kind: 'VirtualMachineInstance',
      metadata: { name: 'bad', namespace: ns },
      spec: { domain: { memory: { guest: '64Ti' } } },
    });
    const out = await k(['apply', '-f', '-'], bad).then(
      (o) => `accepted: ${o}`,
      (e: unknown) => String(e),
    );
    t.match(out, /OUT_OF_RANGE/, 'the code');
    t.match(out, /spec\.domain\.memory\.guest/, 'the field');
  });

  await t.test('deleting the daemon pod leaves QEMU running; the new daemon re-adopts it', async (t) => {
    const before = (await vmiOf('one'))!.status!.vmlet!.qemuPid!;
    await k(['delete', 'pod', '-n', 'vmlet', '-l', 'app.kubernetes.io/name=vmlet-node', '--wait=true']);
    await waitFor('the new daemon pod Ready', 120_000, async () => ((await notReady(c)).length === 0 ? true : undefined));
    t.ok(fs.existsSync(`/proc/${before}`), 'the same QEMU runs');
    const v = await vmiOf('one');
    t.equal(v?.status?.phase, 'Running');
    t.equal(v?.status?.vmlet?.qemuPid, before, 'status names the same QEMU');
  });

  await t.test('deleting the leading controller: the other replica takes over and handles a new VM', async (t) => {
    const lease = JSON.parse(await k(['get', 'lease', '-n', 'vmlet', 'vmlet-controller', '-o', 'json'])) as { spec: { holderIdentity: string } };
    const t0 = Date.now();
    await k(['delete', 'pod', '-n', 'vmlet', lease.spec.holderIdentity, '--wait=false']);
    await apply(vm('two'));
    await running('two');
    t.ok(Date.now() - t0 < 120_000, `a new VM ran ${((Date.now() - t0) / 1000).toFixed(1)} s after the leader was deleted`);
    const now = JSON.parse(await k(['get', 'lease', '-n', 'vmlet', 'vmlet-controller', '-o', 'json'])) as { spec: { holderIdentity: string } };
    t.not(now.spec.holderIdentity, lease.spec.holderIdentity, 'another replica leads');
  });

  await t.test('deleting the VMs leaves no VMI, pod or QEMU', async (t) => {
    const pids = [(await vmiOf('one'))?.status?.vmlet?.qemuPid, (await vmiOf('two'))?.status?.vmlet?.qemuPid];
    await k(['delete', 'vm', '-n', ns, 'one', 'two', '--wait=true', '--timeout=120s']);
    await waitFor('VMIs gone', 120_000, async () => ((await vmiOf('one')) === undefined && (await vmiOf('two')) === undefined ? true : undefined));
    await waitFor('pods gone', 120_000, async () => ((await k(['get', 'pods', '-n', ns, '-o', 'name'])).trim() === '' ? true : undefined));
    for (const p of pids) t.notOk(p !== undefined && fs.existsSync(`/proc/${p}`), `QEMU ${p} is gone`);
  });

  await t.test('the kubevirt-compat overlay runs a kubevirt.io/v1 VirtualMachine unchanged', async (t) => {
    await deploy(c, { overlay: 'kubevirt-compat', build: false, log: (m) => t.comment(m), timeoutMs: 300_000 });
    await apply(vm('kv', 'kubevirt.io/v1'));
    const v = await running('kv', 'kubevirt.io');
    t.equal(v.status?.nodeName, c.config.node, 'a KubeVirt manifest runs on the node');
    // The same with KubeVirt's most common disk: a containerDisk, pulled (here: imported) by the kubelet.
    const work = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-kvdisk-'));
    t.teardown(() => fs.rmSync(work, { recursive: true, force: true }));
    const image = 'localhost/vmlet-test/kv-disk:1';
    await importContainerDiskImage(c.paths.containerdSock, { disk: await testDiskImage(work), name: image, workDir: work });
    const withDisk = JSON.parse(vm('kvdisk', 'kubevirt.io/v1')) as {
      spec: { template: { spec: Record<string, unknown> & { domain: Record<string, unknown> } } };
    };
    withDisk.spec.template.spec.domain['devices'] = { disks: [{ name: 'root', disk: { bus: 'virtio' } }] };
    withDisk.spec.template.spec['volumes'] = [{ name: 'root', containerDisk: { image, imagePullPolicy: 'Never' } }];
    await apply(JSON.stringify(withDisk));
    const d = await running('kvdisk', 'kubevirt.io');
    t.match(
      (d.status as { volumeStatus?: unknown }).volumeStatus,
      [{ name: 'root', format: 'raw', containerDiskVolume: { image } }],
      'a kubevirt.io/v1 VM with a containerDisk runs, its disk from the image',
    );
    await k(['delete', 'virtualmachines.kubevirt.io', '-n', ns, 'kvdisk', '--wait=true', '--timeout=120s']);
    // And a persistentVolumeClaim, on a local PersistentVolume.
    const pvDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-kvpv-'));
    t.teardown(() => fs.rmSync(pvDir, { recursive: true, force: true }));
    const pv = `${ns}-kv`;
    t.teardown(() =>
      k(['delete', 'pv', pv, '--wait=false']).then(
        () => undefined,
        () => undefined,
      ),
    );
    const affinity = { required: { nodeSelectorTerms: [{ matchExpressions: [{ key: 'kubernetes.io/hostname', operator: 'In', values: [c.config.node] }] }] } };
    await k(
      ['apply', '-f', '-'],
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'List',
        items: [
          {
            apiVersion: 'v1',
            kind: 'PersistentVolume',
            metadata: { name: pv },
            spec: { capacity: { storage: '256Mi' }, accessModes: ['ReadWriteOnce'], storageClassName: '', local: { path: pvDir }, nodeAffinity: affinity },
          },
          {
            apiVersion: 'v1',
            kind: 'PersistentVolumeClaim',
            metadata: { name: 'kv-data', namespace: ns },
            spec: { accessModes: ['ReadWriteOnce'], storageClassName: '', volumeName: pv, resources: { requests: { storage: '256Mi' } } },
          },
        ],
      }),
    );
    const withClaim = JSON.parse(vm('kvpvc', 'kubevirt.io/v1')) as typeof withDisk;
    withClaim.spec.template.spec.domain['devices'] = { disks: [{ name: 'data', disk: { bus: 'virtio' } }] };
    withClaim.spec.template.spec['volumes'] = [{ name: 'data', persistentVolumeClaim: { claimName: 'kv-data' } }];
    await apply(JSON.stringify(withClaim));
    const p = await running('kvpvc', 'kubevirt.io');
    t.match(
      (p.status as { volumeStatus?: unknown }).volumeStatus,
      [{ name: 'data', format: 'raw', persistentVolumeClaimInfo: { claimName: 'kv-data' } }],
      'a kubevirt.io/v1 VM on a persistentVolumeClaim runs',
    );
    t.ok(fs.existsSync(path.join(pvDir, 'disk.img')), 'its disk.img is on the volume');
    await k(['delete', 'virtualmachines.kubevirt.io', '-n', ns, 'kvpvc', '--wait=true', '--timeout=120s']);
    await k(['delete', 'virtualmachines.kubevirt.io', '-n', ns, 'kv', '--wait=true', '--timeout=120s']);
    await waitFor('VMI kv gone', 120_000, async () => ((await vmiOf('kv', 'kubevirt.io')) === undefined ? true : undefined));
  });

  await k(['delete', 'namespace', ns, '--wait=true', '--timeout=120s']);
  const left = await undeploy(c, { overlay: 'kubevirt-compat', log: (m) => t.comment(m) });
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
