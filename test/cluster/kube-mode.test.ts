// Cluster mode end to end on the real node: the controller (in this process) and the node daemon (`vmlet daemon --mode kubernetes`, a process of its own as in the DaemonSet) take a VM from the API server to a guest that boots inside its launcher pod, shows its console through `vmlet console` on the node, answers through the pod IP (masquerade and bridge bindings) and a Service, survives a daemon restart, and leaves nothing when deleted.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import t from 'tap';
import { REPO_ROOT, testCluster } from '../support/cluster.js';
import { waitFor } from '../support/cluster/exec.js';
import { waitServiceProgrammed } from '../support/cluster/service-rules.js';
import { GROUP, kubeEnv, MERGE, type Obj } from '../support/cluster/kube-env.js';
import { guestImage, guestKernelArgs, READY_MARKER, type GuestImage } from '../support/guest.js';
import { skipWith } from '../support/skip.js';

const CLI = path.join(REPO_ROOT, 'dist', 'cli', 'main.js');

function httpGet(ip: string, port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: ip, port, path: '/', timeout: 3000 }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve(body));
    });
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error('timeout')));
  });
}

type IpLink = { ifindex: number; ifname: string; link_index?: number };

/** The host end of the veth whose other end is eth0 in the netns of process `pid` (CNI's pair for the pod). */
function hostVethOf(pid: number): string {
  const ip = (args: string[]): IpLink[] => JSON.parse(execFileSync(args[0]!, args.slice(1)).toString()) as IpLink[];
  const peer = ip(['nsenter', '-t', String(pid), '-n', 'ip', '-j', 'link', 'show', 'eth0'])[0]?.link_index;
  const host = ip(['ip', '-j', 'link', 'show']).find((l) => l.ifindex === peer);
  if (!host) throw new Error(`no host end of eth0 in the netns of pid ${pid} (peer ifindex ${peer})`);
  return host.ifname;
}

function hostLinkExists(name: string): boolean {
  return (JSON.parse(execFileSync('ip', ['-j', 'link', 'show']).toString()) as IpLink[]).some((l) => l.ifname === name);
}

/** A VM of the test guest (kernel and initrd from the host, serial console, label app=NAME) on the pod network with `binding`. */
function vmManifest(name: string, namespace: string, binding: Record<string, unknown>, img: GuestImage): Record<string, unknown> {
  return {
    apiVersion: 'vmlet.io/v1alpha1',
    kind: 'VirtualMachine',
    metadata: { name, namespace },
    spec: {
      runStrategy: 'Always',
      template: {
        metadata: { labels: { app: name } },
        spec: {
          terminationGracePeriodSeconds: 5,
          domain: {
            cpu: { cores: 1 },
            memory: { guest: '128Mi' },
            firmware: { kernelBoot: { kernelArgs: guestKernelArgs(), hostPath: { kernelPath: img.kernelPvh ?? img.kernel, initrdPath: img.initrd } } },
            devices: { autoattachSerialConsole: true, interfaces: [{ name: 'default', ...binding }] },
          },
          networks: [{ name: 'default', pod: {} }],
        },
      },
    },
  };
}

t.test('cluster mode end to end', async (t) => {
  const c = await testCluster(t);
  if (!c) return;
  const img = await guestImage();
  const env = await kubeEnv(t, c, { clusterConfig: { hostPaths: { allow: [path.dirname(img.initrd)] } } });
  const { core, custom, ns, runDir, logFile, startDaemon, killDaemon, getVmi, podOf, consoleOf, nodeConsole } = env;
  const st = env.status;

  const vm = vmManifest('web', ns, { masquerade: {}, ports: [{ port: 80 }] }, img);

  let qemuPid: number | undefined;
  await t.test('a VM runs in its launcher pod and boots', async (t) => {
    const t0 = Date.now();
    await custom.createNamespacedCustomObject({ ...GROUP, plural: 'virtualmachines', namespace: ns, body: vm });
    const vmi = await waitFor('VMI web Running', 240_000, async () => {
      const v = await getVmi('web');
      return st(v).phase === 'Running' ? v : undefined;
    });
    t.comment(`VM create → VMI Running: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    // The kubelet may post the pod's IP after the VMI already runs.
    const pod = await waitFor('the launcher pod with its IP', 30_000, async () => {
      const p = await podOf(vmi.metadata.uid);
      return p?.status?.podIP ? p : undefined;
    });
    t.ok(pod, 'the VMI has its launcher pod');
    t.equal(st(vmi).nodeName, c.config.node);
    const podIp = pod.status?.podIP;
    t.equal(st(vmi).interfaces?.[0]?.ipAddress, podIp, 'status.interfaces shows the pod IP');
    const text = await waitFor('the ready marker on the console', 240_000, async () => (consoleOf(pod).includes(READY_MARKER) ? true : undefined));
    t.ok(text, 'the guest booted inside the pod');
    qemuPid = st(await getVmi('web')).vmlet?.qemuPid;
    t.ok(qemuPid, `QEMU runs (pid ${qemuPid})`);
    const cgroup = fs.readFileSync(`/proc/${qemuPid}/cgroup`, 'utf8');
    t.match(cgroup, new RegExp(`pod${pod.metadata!.uid}`), "QEMU is in the pod's cgroup");
    const uidLine = fs
      .readFileSync(`/proc/${qemuPid}/status`, 'utf8')
      .split('\n')
      .find((l) => l.startsWith('Uid:'));
    t.match(uidLine, /^Uid:\s+107\s/, 'QEMU runs as uid 107');
    const body = await waitFor("the guest's web page through the pod IP", 60_000, async () => httpGet(podIp!, 80).catch(() => undefined));
    t.match(body, /vmlet/i, `GET http://${podIp}/ reached the guest`);
  });

  await t.test("`vmlet console` on the node shows the guest's ready marker, and its shell answers", async (t) => {
    const con = nodeConsole('web');
    t.teardown(() => con.detach().then(() => undefined));
    // The guest printed the marker before this attach: a new client gets the console's recent output first.
    await con.waitFor(READY_MARKER, 30_000);
    t.pass(`the ready marker through \`vmlet console web\` on the node socket`);
    // The console echoes what is typed ($((40+2))); only the guest's shell prints 42.
    const from = con.output().length;
    con.type('echo vmlet-sum-$((40+2))\n');
    await con.waitFor(/vmlet-sum-42\r?\n/, 30_000, from);
    t.pass("a command typed into the console runs in the guest's shell");
    t.equal(await con.detach(), 0, 'Ctrl+] detaches; the CLI exits 0');
  });

  await t.test('a pod reaches the VM through a ClusterIP Service that selects its labels', async (t) => {
    const svc = await core.createNamespacedService({
      namespace: ns,
      body: { metadata: { name: 'web' }, spec: { selector: { app: 'web' }, ports: [{ port: 8080, targetPort: 80 }] } },
    });
    // The test cluster runs no DNS: the Service is reached by its ClusterIP.
    const ip = svc.spec?.clusterIP ?? '';
    // Until kube-proxy has programmed the Service with an endpoint, a packet to the ClusterIP follows the default
    // route off the machine (a CI run got an answer from a proxy out there).
    await waitServiceProgrammed('the Service web', ip);
    const client = {
      metadata: { name: 'client', namespace: ns },
      spec: {
        restartPolicy: 'Never',
        terminationGracePeriodSeconds: 0,
        automountServiceAccountToken: false,
        containers: [
          {
            name: 'main',
            image: 'localhost/vmlet-busybox:1',
            imagePullPolicy: 'Never',
            // A Service has no endpoints for a moment after its pod turns Ready: try for a while.
            // Only the guest's own answer counts.
            command: [
              'sh',
              '-c',
              `for i in $(seq 1 30); do out=$(printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 3 ${ip} 8080); echo "$out"; case "$out" in *"200 OK"*) exit 0;; esac; sleep 1; done; exit 1`,
            ],
          },
        ],
      },
    };
    await core.createNamespacedPod({ namespace: ns, body: client });
    const phase = await waitFor('the client pod finished', 90_000, async () => {
      const p = await core.readNamespacedPod({ name: 'client', namespace: ns });
      return p.status?.phase === 'Succeeded' || p.status?.phase === 'Failed' ? p.status.phase : undefined;
    });
    const out = await c.kubectl(['logs', '-n', ns, 'client']);
    t.equal(phase, 'Succeeded', 'the client pod got an answer');
    t.match(out, /200 OK/, `through the Service ${ip}:8080: the guest's web server answered`);
  });

  await t.test('the bridge binding: the guest holds the pod IP itself', async (t) => {
    const t0 = Date.now();
    await custom.createNamespacedCustomObject({ ...GROUP, plural: 'virtualmachines', namespace: ns, body: vmManifest('bridged', ns, { bridge: {} }, img) });
    const vmi = await env.running('bridged');
    t.comment(`VM create → VMI Running: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    const pod = await waitFor('the launcher pod of bridged with its IP', 30_000, async () => {
      const p = await podOf(vmi.metadata.uid);
      return p?.status?.podIP ? p : undefined;
    });
    const podIp = pod.status!.podIP!;
    t.equal(st(vmi).interfaces?.[0]?.ipAddress, podIp, 'status.interfaces shows the pod IP');
    // The guest's DHCP client prints its lease on the console: the pod's own address, served inside the pod.
    const con = nodeConsole('bridged');
    t.teardown(() => con.detach().then(() => undefined));
    const lease = new RegExp(`vmlet-guest: eth0 ${podIp.replaceAll('.', '\\.')}/\\d+ router \\S+ \\(dhcp\\)`);
    await con.waitFor(lease, 240_000);
    t.pass(`the guest leased the pod IP ${podIp}`);
    t.equal(await con.detach(), 0, 'vmlet console detaches');
    const body = await waitFor("the guest's web page at the pod IP", 60_000, async () => httpGet(podIp, 80).catch(() => undefined));
    t.match(body, /VMLET-GUEST-HTTP-OK/, `GET http://${podIp}/ reached the guest`);

    const pid = st(await getVmi('bridged')).vmlet?.qemuPid;
    t.ok(pid, `QEMU runs (pid ${pid})`);
    const veth = hostVethOf(pid!);
    await custom.deleteNamespacedCustomObject({ ...GROUP, plural: 'virtualmachines', namespace: ns, name: 'bridged' });
    await waitFor('VMI bridged gone', 120_000, async () => ((await getVmi('bridged')) === undefined ? true : undefined));
    await waitFor('the pod of bridged gone', 120_000, async () => ((await podOf(vmi.metadata.uid)) === undefined ? true : undefined));
    await waitFor('its QEMU gone', 30_000, async () => (fs.existsSync(`/proc/${pid}`) ? undefined : true));
    t.pass('no pod and no QEMU are left');
    // The veth's host end goes with the pod's netns, which a DHCP socket of the daemon's left open would keep alive.
    await waitFor(`the host end ${veth} of the pod's veth gone`, 30_000, async () => (hostLinkExists(veth) ? undefined : true));
    t.pass(`the pod's netns is gone (its veth ${veth} with it)`);
    await waitFor('its pod socket link gone', 30_000, async () => (fs.existsSync(path.join(runDir, 'pods', pod.metadata!.uid!)) ? undefined : true));
    t.pass('no link to the pod run dir is left');
  });

  await t.test('the API server away for 30 s: the VM keeps running, status catches up, no second QEMU', async (t) => {
    if (process.env.VMLET_K8S_REUSE === '1') {
      skipWith(t, 'not on a shared cluster (VMLET_K8S_REUSE=1): stopping its API server would disturb everyone');
      return;
    }
    await c.stopApiServer();
    const away = Date.now();
    // Pausing through the node's own socket works without the API server; the status waits for it.
    const paused = await new Promise<number>((resolve) => {
      const p = spawn(process.execPath, [CLI, '--socket', path.join(runDir, 'vmlet.sock'), '-n', ns, 'pause', 'web'], { stdio: 'ignore' });
      p.once('exit', (code) => resolve(code ?? 1));
    });
    while (Date.now() - away < 30_000) await new Promise((r) => setTimeout(r, 1000));
    t.ok(fs.existsSync(`/proc/${qemuPid}`), 'QEMU ran through the outage');
    await c.startApiServer();
    await waitFor('the API server back', 60_000, async () => ((await core.readNamespace({ name: ns }).catch(() => undefined)) ? true : undefined));
    t.equal(paused, 0, "pause through the node's socket works while the API server is away (its reads come from the node's cache)");
    const v = await waitFor('the Paused condition written after the outage', 90_000, async () => {
      const o = await getVmi('web');
      return st(o).conditions?.some((x) => x.type === 'Paused' && x.status === 'True') ? o : undefined;
    });
    t.ok(v, 'status caught up once the API server was back');
    const unpaused = await new Promise<number>((resolve) => {
      const p = spawn(process.execPath, [CLI, '--socket', path.join(runDir, 'vmlet.sock'), '-n', ns, 'unpause', 'web'], { stdio: 'ignore' });
      p.once('exit', (code) => resolve(code ?? 1));
    });
    t.equal(unpaused, 0, 'and unpause');
    t.equal(st(await getVmi('web')).vmlet?.qemuPid, qemuPid, 'the same QEMU, no second one');
    const pods = (await core.listNamespacedPod({ namespace: ns, labelSelector: 'vmlet.io/vmi-name=web' })).items.filter((p) => !p.metadata?.deletionTimestamp);
    t.equal(pods.length, 1, 'one launcher pod');
    // kube-controller-manager and the kubelet reconnect with client-go's backoff, up to a minute after 30 s away: until
    // then a new namespace gets no ServiceAccount (its pods are refused) and a new pod does not start. The subtests after
    // this one must not pay for that (it made the restricted namespace's VMI wait ~45 s).
    const back = await env.controlPlaneCaughtUp();
    t.comment(
      `after the outage: a new namespace got its ServiceAccount after ${(back.serviceAccountMs / 1000).toFixed(1)} s, then a new pod ran after ${(back.podMs / 1000).toFixed(1)} s`,
    );
  });

  await t.test('a daemon killed and started again re-adopts the same QEMU', async (t) => {
    await killDaemon();
    t.ok(fs.existsSync(`/proc/${qemuPid}`), 'QEMU outlives the daemon');
    await startDaemon();
    const after = await waitFor('the VMI re-adopted', 60_000, async () => {
      const log = fs.readFileSync(logFile, 'utf8');
      return log.split('re-adopting running QEMU').length > 1 && log.lastIndexOf('VMI re-adopted') > log.lastIndexOf('vmlet node daemon ready')
        ? true
        : undefined;
    });
    t.ok(after);
    t.ok(fs.existsSync(`/proc/${qemuPid}`), 'the same QEMU still runs');
    const v = await getVmi('web');
    t.equal(st(v).phase, 'Running');
    t.equal(st(v).vmlet?.qemuPid, qemuPid, 'status names the same QEMU pid');
  });

  await t.test('a daemon that died after handing QEMU its argv, before writing Running, is followed by one that adopts that QEMU', async (t) => {
    await killDaemon();
    const pod = (await podOf((await getVmi('web'))!.metadata.uid))!;
    // What such a daemon leaves: QEMU runs in the pod, its launcher holds it, the VMI says only Scheduled.
    await custom.patchNamespacedCustomObjectStatus(
      { ...GROUP, plural: 'virtualmachineinstances', namespace: ns, name: 'web', body: { status: { phase: 'Scheduled', vmlet: null, interfaces: null } } },
      MERGE,
    );
    t.equal(st(await getVmi('web')).phase, 'Scheduled', 'the VMI says Scheduled, with no runtime record');
    const logBefore = fs.readFileSync(logFile, 'utf8').length;
    await startDaemon();
    const v = await waitFor('the VMI Running again', 60_000, async () => {
      const o = await getVmi('web');
      return st(o).phase === 'Running' && st(o).interfaces?.[0]?.ipAddress ? o : undefined;
    });
    const log = fs.readFileSync(logFile, 'utf8').slice(logBefore);
    t.match(log, /re-adopting running QEMU/, 'the new daemon adopted what runs');
    t.notMatch(log, /no launch is pending|LAUNCHER_TIMEOUT/, 'it did not wait for a launch that never comes');
    t.ok(fs.existsSync(`/proc/${qemuPid}`), 'the same QEMU still runs');
    t.equal(st(v).vmlet?.qemuPid, qemuPid, 'status names it again');
    t.equal(st(v).interfaces?.[0]?.ipAddress, pod.status?.podIP, "status.interfaces filled from the binding in the pod's netns");
    const body = await waitFor("the guest's web page through the pod IP", 60_000, async () => httpGet(pod.status!.podIP!, 80).catch(() => undefined));
    t.match(body, /vmlet/i, 'the guest still answers through the pod IP (DHCP and DNAT taken up again)');
  });

  await t.test("a VMI deleted while its node daemon is down waits for it: the daemon's finalizer", async (t) => {
    const body = {
      apiVersion: 'vmlet.io/v1alpha1',
      kind: 'VirtualMachineInstance',
      metadata: { name: 'fin', namespace: ns },
      spec: { terminationGracePeriodSeconds: 0, domain: { memory: { guest: '64Mi' }, devices: { autoattachSerialConsole: true } } },
    };
    await custom.createNamespacedCustomObject({ ...GROUP, plural: 'virtualmachineinstances', namespace: ns, body });
    const v = await waitFor('VMI fin Running', 120_000, async () => ((o) => (st(o).phase === 'Running' ? o : undefined))(await getVmi('fin')));
    t.same([...(v.metadata.finalizers ?? [])].sort(), ['vmlet.io/node-cleanup', 'vmlet.io/vmi-cleanup'], "the controller's finalizer and the node daemon's");
    const finPid = st(v).vmlet?.qemuPid;
    const pod = (await podOf(v.metadata.uid))!;
    await killDaemon();
    await custom.deleteNamespacedCustomObject({ ...GROUP, plural: 'virtualmachineinstances', namespace: ns, name: 'fin' });
    await waitFor('its pod gone', 120_000, async () => ((await podOf(v.metadata.uid)) === undefined ? true : undefined));
    const held = await waitFor("only the node's finalizer left", 60_000, async () =>
      ((o) => (o?.metadata.finalizers?.join() === 'vmlet.io/node-cleanup' ? o : undefined))(await getVmi('fin')),
    );
    t.ok(held.metadata.deletionTimestamp, 'the VMI is being deleted, and waits for its node daemon');
    t.notOk(finPid !== undefined && fs.existsSync(`/proc/${finPid}`), 'its QEMU went with the pod');
    await startDaemon();
    await waitFor('VMI fin gone', 60_000, async () => ((await getVmi('fin')) === undefined ? true : undefined));
    t.pass('the daemon released its finalizer once back');
    t.notOk(fs.existsSync(path.join(runDir, 'pods', pod.metadata!.uid!)), 'and the link to the pod run dir is gone');
  });

  await t.test('a launcher pod passes the restricted Pod Security Standard', async (t) => {
    const rns = `${ns}-restricted`;
    await core.createNamespace({ body: { metadata: { name: rns, labels: { 'pod-security.kubernetes.io/enforce': 'restricted' } } } });
    t.teardown(() => c.kubectl(['delete', 'namespace', rns, '--wait=false']).then(() => undefined));
    // No kernel from the host: the firmware idles, which is all the restricted pod has to hold.
    const body = {
      apiVersion: 'vmlet.io/v1alpha1',
      kind: 'VirtualMachineInstance',
      metadata: { name: 'plain', namespace: rns },
      spec: { terminationGracePeriodSeconds: 0, domain: { memory: { guest: '64Mi' }, devices: { autoattachSerialConsole: true } } },
    };
    const t0 = Date.now();
    await custom.createNamespacedCustomObject({ ...GROUP, plural: 'virtualmachineinstances', namespace: rns, body });
    const v = await waitFor('VMI plain Running in the restricted namespace', 120_000, async () => {
      const o = (await custom.getNamespacedCustomObject({ ...GROUP, plural: 'virtualmachineinstances', namespace: rns, name: 'plain' })) as Obj;
      return st(o).phase === 'Running' ? o : undefined;
    });
    const took = (Date.now() - t0) / 1000;
    t.comment(`VMI create → Running: ${took.toFixed(1)} s`);
    // A few seconds where all is well: when slower, where the time went.
    if (took > 15) for (const line of await env.timeline(rns, 'plain')) t.comment(line);
    const pid = st(v).vmlet?.qemuPid;
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    t.match(status, /CapEff:\s+0+\n/, 'QEMU has no capabilities');
    t.match(status, /NoNewPrivs:\s+1/, 'no_new_privs');
    t.match(status, /Seccomp:\s+2/, "seccomp filtering (RuntimeDefault, and QEMU's -sandbox)");
    await custom.deleteNamespacedCustomObject({ ...GROUP, plural: 'virtualmachineinstances', namespace: rns, name: 'plain' });
  });

  await t.test('deleting the VM leaves no pod, QEMU or socket', async (t) => {
    const vmi = (await getVmi('web'))!;
    const pod = (await podOf(vmi.metadata.uid))!;
    await custom.deleteNamespacedCustomObject({ ...GROUP, plural: 'virtualmachines', namespace: ns, name: 'web' });
    await waitFor('VMI gone', 120_000, async () => ((await getVmi('web')) === undefined ? true : undefined));
    await waitFor('pod gone', 120_000, async () => ((await podOf(vmi.metadata.uid)) === undefined ? true : undefined));
    t.notOk(fs.existsSync(`/proc/${qemuPid}`), 'QEMU is gone');
    await waitFor('pod socket link gone', 30_000, async () => (fs.existsSync(path.join(runDir, 'pods', pod.metadata!.uid!)) ? undefined : true));
    t.pass('no link to the pod run dir is left');
  });
});
