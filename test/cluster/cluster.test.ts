// The private one-node cluster (test/support/cluster.ts) really works: node, pods, Services through kube-proxy, DaemonSets, privileged and restricted pods, an API server outage, fault handles, and a `down` that leaves nothing.
import fs from 'node:fs';
import http from 'node:http';
import t from 'tap';
import { Cluster, clusterSkipReason, DEFAULT_ROOT, REPO_ROOT } from '../support/cluster.js';
import { defaultConfig } from '../support/cluster/config.js';
import { sleep, waitFor } from '../support/cluster/exec.js';
import { leftovers, snapshot } from '../support/cluster/host.js';

const reason = clusterSkipReason();
const ROOT = `${DEFAULT_ROOT}-test`;
/** Names other engineers' vmlet tests give their bridges, veths, netns and taps while we run (test/support/net-env.ts). */
const VMLET_TEST_ITEMS = /vmlt|(^|\/)v[th][0-9a-f]{4}|^tap|^vmlet/;

type Json = Record<string, unknown>;

function pod(name: string, ns: string, command: string, extra: { spec?: Json; container?: Json; labels?: Record<string, string> } = {}): Json {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace: ns, labels: extra.labels ?? { app: name } },
    spec: {
      restartPolicy: 'Never',
      terminationGracePeriodSeconds: 1,
      automountServiceAccountToken: false,
      containers: [{ name: 'main', image: 'localhost/vmlet-busybox:1', imagePullPolicy: 'Never', command: ['sh', '-c', command], ...extra.container }],
      ...extra.spec,
    },
  };
}

const HTTPD = 'mkdir -p /www && echo "page from $(hostname)" > /www/index.html && exec httpd -f -p 8080 -h /www';

function httpGet(ip: string, port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: ip, port, path: '/', timeout: 3000 }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => {
        body += c.toString();
      });
      res.on('end', () => resolve(body));
    });
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error('timeout')));
  });
}

t.test('one-node cluster', { skip: reason ?? false }, async (t) => {
  const snapCfg = defaultConfig({ root: ROOT, binDir: `${REPO_ROOT}/.cache/k8s/bin` });
  const before = await snapshot(snapCfg);
  const t0 = Date.now();
  const c = await Cluster.up({ root: ROOT, log: (m) => t.comment(m) });
  t.teardown(async () => {
    await c.down();
  });
  const k = (args: string[], input?: string): Promise<string> => c.kubectl(args, input);
  const apply = (obj: Json): Promise<string> => k(['apply', '-f', '-'], JSON.stringify(obj));
  const figures: Record<string, number> = { ...c.timings };

  await t.test('the node is Ready and the server is the version of VERSIONS', async (t) => {
    const nodes = JSON.parse(await k(['get', 'nodes', '-o', 'json'])) as {
      items: Array<{ metadata: { name: string }; status: { conditions: Array<{ type: string; status: string }> } }>;
    };
    t.same(
      nodes.items.map((n) => n.metadata.name),
      [c.config.node],
    );
    t.equal(nodes.items[0]?.status.conditions.find((x) => x.type === 'Ready')?.status, 'True', 'node Ready');
    const v = JSON.parse(await k(['version', '-o', 'json'])) as { serverVersion: { gitVersion: string } };
    t.equal(v.serverVersion.gitVersion, c.versions.kubernetes, 'server version');
    t.match(v.serverVersion.gitVersion, /^v1\.\d+\.\d+/);
  });

  await t.test('a busybox pod runs to completion and its log is read', async (t) => {
    await apply(pod('hello', 'default', 'echo hello from $(hostname); id -u'));
    await k(['wait', '--for=jsonpath={.status.phase}=Succeeded', 'pod/hello', '--timeout=60s']);
    figures.firstPodSucceeded = (Date.now() - t0) / 1000;
    const log = await k(['logs', 'hello']);
    t.match(log, /^hello from hello\n0\n$/, 'kubectl logs');
  });

  await t.test('a Deployment behind a ClusterIP Service is reached through the Service IP and the pod IPs', async (t) => {
    await k(['create', 'namespace', 'web']);
    await apply({
      apiVersion: 'apps/v1',
      kind: 'Deployment',
      metadata: { name: 'web', namespace: 'web' },
      spec: {
        replicas: 2,
        selector: { matchLabels: { app: 'web' } },
        template: {
          metadata: { labels: { app: 'web' } },
          spec: {
            terminationGracePeriodSeconds: 1,
            automountServiceAccountToken: false,
            containers: [
              {
                name: 'httpd',
                image: 'localhost/vmlet-busybox:1',
                imagePullPolicy: 'Never',
                command: ['sh', '-c', HTTPD],
                ports: [{ containerPort: 8080 }],
                readinessProbe: { tcpSocket: { port: 8080 }, periodSeconds: 1 },
              },
            ],
          },
        },
      },
    });
    await apply({
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name: 'web', namespace: 'web' },
      spec: { selector: { app: 'web' }, ports: [{ port: 80, targetPort: 8080 }] },
    });
    await apply(pod('client', 'web', 'exec sleep 3600', { spec: { restartPolicy: 'Always' } }));
    await k(['-n', 'web', 'rollout', 'status', 'deployment/web', '--timeout=90s']);
    await k(['-n', 'web', 'wait', '--for=condition=Ready', 'pod/client', '--timeout=60s']);
    const svcIp = (await k(['-n', 'web', 'get', 'service', 'web', '-o', 'jsonpath={.spec.clusterIP}'])).trim();
    t.match(svcIp, /^10\.96\./, 'ClusterIP from the service range');
    const podIps = (await k(['-n', 'web', 'get', 'pods', '-l', 'app=web', '-o', 'jsonpath={.items[*].status.podIP}'])).trim().split(/\s+/);
    t.equal(podIps.length, 2, 'two web pods');
    // The first connection may be refused while the Service's endpoints appear (README trap 4): retry a few seconds.
    const fetch = (ip: string, port: number): Promise<string> =>
      waitFor(
        `GET ${ip}:${port} from the client pod`,
        20_000,
        async () => {
          const out = await k(['-n', 'web', 'exec', 'client', '--', 'sh', '-c', `printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 ${ip} ${port}`]);
          return /page from web-/.test(out) ? out : undefined;
        },
        500,
      );
    const seen = new Set<string>();
    for (let i = 0; i < 6; i++) seen.add(/page from (\S+)/.exec(await fetch(svcIp, 80))?.[1] ?? '');
    t.ok(
      [...seen].every((h) => h.startsWith('web-')),
      `through the Service IP ${svcIp}: ${[...seen].join(', ')}`,
    );
    for (const ip of podIps) t.match(await fetch(ip, 8080), /200 OK[\s\S]*page from web-/, `through the pod IP ${ip}`);
  });

  await t.test('DaemonSet, privileged hostPID pod with a hostPath, restricted pod', async (t) => {
    await k(['create', 'namespace', 'node']);
    await apply({
      apiVersion: 'apps/v1',
      kind: 'DaemonSet',
      metadata: { name: 'agent', namespace: 'node' },
      spec: {
        selector: { matchLabels: { app: 'agent' } },
        template: {
          metadata: { labels: { app: 'agent' } },
          spec: {
            terminationGracePeriodSeconds: 1,
            containers: [{ name: 'a', image: 'localhost/vmlet-busybox:1', imagePullPolicy: 'Never', command: ['sleep', '3600'] }],
          },
        },
      },
    });
    await k(['-n', 'node', 'rollout', 'status', 'daemonset/agent', '--timeout=60s']);
    const where = (await k(['-n', 'node', 'get', 'pods', '-l', 'app=agent', '-o', 'jsonpath={.items[*].spec.nodeName}'])).trim();
    t.equal(where, c.config.node, 'the DaemonSet pod landed on the node');

    const hostDir = fs.mkdtempSync('/tmp/vmlet-k8s-hostpath-');
    t.teardown(() => fs.rmSync(hostDir, { recursive: true, force: true }));
    fs.writeFileSync(`${hostDir}/marker`, 'from the host\n');
    const hostInit = fs.readFileSync('/proc/1/comm', 'utf8').trim();
    await apply(
      pod('priv', 'node', 'cat /proc/1/comm; cat /host/marker; grep CapEff /proc/self/status', {
        spec: { hostPID: true, volumes: [{ name: 'h', hostPath: { path: hostDir, type: 'Directory' } }] },
        container: { securityContext: { privileged: true }, volumeMounts: [{ name: 'h', mountPath: '/host' }] },
      }),
    );
    await k(['-n', 'node', 'wait', '--for=jsonpath={.status.phase}=Succeeded', 'pod/priv', '--timeout=60s']);
    const privLog = await k(['-n', 'node', 'logs', 'priv']);
    const [init, marker, capEff] = privLog.split('\n');
    t.equal(init, hostInit, "hostPID: PID 1 is the host's init");
    t.equal(marker, 'from the host', 'the hostPath folder is mounted');
    t.match(capEff, /^CapEff:\s+[0-9a-f]{16}$/);
    t.notMatch(privLog, /CapEff:\s+0{16}/, 'privileged has capabilities');

    await k(['create', 'namespace', 'locked']);
    await k(['label', 'namespace', 'locked', 'pod-security.kubernetes.io/enforce=restricted']);
    const refused = await k(['apply', '-f', '-'], JSON.stringify(pod('root', 'locked', 'id'))).then(
      () => 'accepted',
      (e: unknown) => String(e),
    );
    t.match(refused, /violates PodSecurity "restricted/, 'a pod that breaks the restricted standard is refused');
    await apply(
      pod('nonroot', 'locked', 'id -u; grep -E "^(CapEff|NoNewPrivs|Seccomp):" /proc/self/status', {
        spec: { securityContext: { runAsNonRoot: true, runAsUser: 107, seccompProfile: { type: 'RuntimeDefault' } } },
        container: { securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } } },
      }),
    );
    await k(['-n', 'locked', 'wait', '--for=jsonpath={.status.phase}=Succeeded', 'pod/nonroot', '--timeout=60s']);
    t.match(
      await k(['-n', 'locked', 'logs', 'nonroot']),
      /^107\nCapEff:\s+0{16}\nNoNewPrivs:\s+1\nSeccomp:\s+2\n/,
      'non-root, no capabilities, no new privileges, seccomp',
    );
  });

  await t.test('pods keep running while the API server is stopped for 20 s', async (t) => {
    const ips = (await k(['-n', 'web', 'get', 'pods', '-l', 'app=web', '-o', 'jsonpath={.items[*].status.podIP}'])).trim().split(/\s+/);
    await c.stopApiServer();
    t.equal((await c.api('GET', '/readyz')).status, 0, 'the API server does not answer');
    await sleep(20_000);
    for (const ip of ips) t.match(await httpGet(ip, 8080), /page from web-/, `web pod ${ip} still serves`);
    await c.startApiServer();
    const pods = JSON.parse(await k(['-n', 'web', 'get', 'pods', '-o', 'json'])) as {
      items: Array<{ status: { phase: string; containerStatuses?: Array<{ restartCount: number }> } }>;
    };
    t.equal(pods.items.length, 3, 'kubectl get pods works after the restart');
    t.ok(
      pods.items.every((p) => p.status.phase === 'Running' && (p.status.containerStatuses ?? []).every((s) => s.restartCount === 0)),
      'all Running, none restarted',
    );
  });

  await t.test('restarting containerd and the kubelet leaves the pods running', async (t) => {
    const ips = (await k(['-n', 'web', 'get', 'pods', '-l', 'app=web', '-o', 'jsonpath={.items[*].status.podIP}'])).trim().split(/\s+/);
    await c.restartContainerd();
    for (const ip of ips) t.match(await httpGet(ip, 8080), /page from web-/, `after containerd: ${ip} serves`);
    await c.restartKubelet();
    t.ok((await c.readyNodes()).includes(c.config.node), 'node Ready after the kubelet restart');
    await sleep(3000);
    const pods = JSON.parse(await k(['-n', 'web', 'get', 'pods', '-o', 'json'])) as {
      items: Array<{ status: { phase: string; containerStatuses?: Array<{ restartCount: number }> } }>;
    };
    t.ok(
      pods.items.every((p) => p.status.phase === 'Running' && (p.status.containerStatuses ?? []).every((s) => s.restartCount === 0)),
      'all Running, none restarted',
    );
    for (const ip of ips) t.match(await httpGet(ip, 8080), /page from web-/, `after the kubelet: ${ip} serves`);
  });

  await t.test('down leaves nothing behind', async (t) => {
    const problems = await c.down();
    figures.down = c.timings.down ?? -1;
    t.same(problems, [], 'down reports nothing left');
    const after = await snapshot(snapCfg);
    t.same(
      leftovers(before, after, VMLET_TEST_ITEMS),
      {},
      'no new link, netns, mount, kubepods cgroup, firewall chain or rule, process, host folder or sysctl change',
    );
    t.same(
      after.firewall.filter((r) => /KUBE-|CNI-/.test(r)),
      [],
      'no KUBE-/CNI- chain or rule',
    );
    t.same(
      before.firewall.filter((r) => !/KUBE-|CNI-/.test(r)).filter((r) => !after.firewall.includes(r)),
      [],
      "the host's own rules are all still there",
    );
  });
  t.comment(`figures (s from the start of up): ${JSON.stringify(figures)}`);
});
