// `vmlet --kubeconfig`: the CLI against a fake API server (real HTTPS on 127.0.0.1, self-signed CA): paths, credentials, Status mapping, verbs, target precedence.
import fs from 'node:fs/promises';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { TLSSocket } from 'node:tls';
import t from 'tap';
import YAML from 'yaml';
import { kubeErrorFromResponse } from '../../src/cli/kube-client.js';
import { makeCa, makeServingCert, type KeyedCert } from '../../src/controller/webhook-cert.js';
import { runCli } from '../support/fake-backend.js';

type Obj = Record<string, unknown>;

interface Seen {
  method: string;
  path: string;
  query: URLSearchParams;
  headers: Record<string, string | string[] | undefined>;
  body: unknown;
  peerCn: string | undefined;
}

type Reply = { status: number; body: unknown } | { stream: string[] };

const GROUP = '/apis/vmlet.io/v1alpha1';
const OBJECT_RE = /^\/apis\/vmlet\.io\/v1alpha1\/(?:namespaces\/([^/]+)\/)?(virtualmachines|virtualmachineinstances)(?:\/([^/]+))?(\/status)?$/;

const status = (code: number, reason: string, message: string, extra: Obj = {}): Reply => ({
  status: code,
  body: { kind: 'Status', apiVersion: 'v1', status: 'Failure', code, reason, message, ...extra },
});

function merge(target: Obj, patch: Obj): Obj {
  const out: Obj = { ...target };
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else if (typeof v === 'object' && !Array.isArray(v)) out[k] = merge((out[k] as Obj | undefined) ?? {}, v as Obj);
    else out[k] = v;
  }
  return out;
}

/** A small API server for vmlet's two resources: objects by namespace and name, resourceVersions, uid preconditions, Status errors. */
class FakeApi {
  readonly objects = new Map<string, Obj>();
  readonly seen: Seen[] = [];
  /** Answers before the built-in routes (errors, watches, other paths). */
  override: ((r: Seen) => Reply | undefined) | undefined;
  private rv = 100;
  private uid = 0;

  key(plural: string, ns: string, name: string): string {
    return `${plural}/${ns}/${name}`;
  }

  put(plural: string, ns: string, obj: Obj): Obj {
    const md = obj['metadata'] as Obj;
    const stored = merge(obj, {
      metadata: { ...md, namespace: ns, uid: md['uid'] ?? `uid-${++this.uid}`, resourceVersion: String(++this.rv), creationTimestamp: '2026-03-01T11:00:00Z' },
    });
    this.objects.set(this.key(plural, ns, md['name'] as string), stored);
    return stored;
  }

  reply(r: Seen): Reply {
    const o = this.override?.(r);
    if (o) return o;
    if (r.path === '/version') return { status: 200, body: { major: '1', minor: '34', gitVersion: 'v1.34.4', platform: 'linux/amd64' } };
    if (/^\/api\/v1\/(namespaces\/[^/]+\/)?events$/.test(r.path))
      return { status: 200, body: { kind: 'EventList', apiVersion: 'v1', metadata: {}, items: [] } };
    const m = OBJECT_RE.exec(r.path);
    if (!m) return { status: 404, body: '404 page not found' };
    const [, ns, plural = '', name, sub] = m;
    const kind = plural === 'virtualmachines' ? 'VirtualMachine' : 'VirtualMachineInstance';
    if (name === undefined) {
      if (r.method === 'POST') {
        const body = r.body as Obj;
        const n = (body['metadata'] as Obj)['name'] as string;
        if (this.objects.has(this.key(plural, ns ?? '', n))) return status(409, 'AlreadyExists', `${plural}.vmlet.io "${n}" already exists`);
        const { status: _dropped, ...rest } = body;
        void _dropped;
        return { status: 201, body: this.put(plural, ns ?? '', rest) };
      }
      const items = [...this.objects.entries()].filter(([k]) => k.startsWith(`${plural}/${ns === undefined ? '' : `${ns}/`}`)).map(([, v]) => v);
      return { status: 200, body: { apiVersion: 'vmlet.io/v1alpha1', kind: `${kind}List`, metadata: { resourceVersion: String(this.rv) }, items } };
    }
    const k = this.key(plural, ns ?? '', name);
    const cur = this.objects.get(k);
    if (!cur) return status(404, 'NotFound', `${plural}.vmlet.io "${name}" not found`, { details: { name, group: 'vmlet.io', kind: plural } });
    const curRv = (cur['metadata'] as Obj)['resourceVersion'];
    switch (r.method) {
      case 'GET':
        return { status: 200, body: cur };
      case 'PUT': {
        const rv = ((r.body as Obj)['metadata'] as Obj | undefined)?.['resourceVersion'];
        if (rv === undefined)
          return status(422, 'Invalid', `${kind}.vmlet.io "${name}" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update`);
        if (rv !== curRv) return status(409, 'Conflict', `Operation cannot be fulfilled on ${plural}.vmlet.io "${name}": the object has been modified`);
        return { status: 200, body: this.put(plural, ns ?? '', { ...(r.body as Obj), status: cur['status'] }) };
      }
      case 'PATCH': {
        const patch = JSON.parse(String(r.body)) as Obj;
        const rv = (patch['metadata'] as Obj | undefined)?.['resourceVersion'];
        if (rv !== undefined && rv !== curRv) return status(409, 'Conflict', `Operation cannot be fulfilled on ${plural}.vmlet.io "${name}"`);
        const applied = sub === '/status' ? merge(cur, { status: patch['status'] }) : merge(cur, { ...patch, status: null });
        return { status: 200, body: this.put(plural, ns ?? '', sub === '/status' ? applied : { ...applied, status: cur['status'] }) };
      }
      case 'DELETE': {
        const pre = ((r.body as Obj | undefined)?.['preconditions'] as Obj | undefined)?.['uid'];
        if (pre !== undefined && pre !== (cur['metadata'] as Obj)['uid']) return status(409, 'Conflict', 'Precondition failed: UID in precondition');
        this.objects.delete(k);
        return { status: 200, body: cur };
      }
      default:
        return status(405, 'MethodNotAllowed', 'the server does not allow this method on the requested resource');
    }
  }
}

interface Fake {
  api: FakeApi;
  url: string;
  ca: KeyedCert;
  /** A kubeconfig file for this server with the given user entry (and context namespace, server path, CA). */
  kubeconfig(user: Obj, opts?: { namespace?: string; ca?: string; suffix?: string }): Promise<string>;
  client: KeyedCert;
}

async function startFake(t: { teardown(fn: () => unknown): void }): Promise<Fake> {
  const now = new Date();
  const ca = makeCa(now, 'fake-apiserver-ca');
  const serving = makeServingCert(ca, { dnsNames: ['localhost'], ips: ['127.0.0.1'] }, now);
  const client = makeServingCert(ca, { dnsNames: ['vmlet-cli-user'], ips: [] }, now);
  const api = new FakeApi();
  const server = https.createServer({ cert: serving.cert, key: serving.key, requestCert: true, rejectUnauthorized: false }, (req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const u = new URL(req.url ?? '/', 'https://x');
      const text = Buffer.concat(chunks).toString('utf8');
      const json = req.headers['content-type'] === 'application/json';
      const peer = (req.socket as TLSSocket).getPeerCertificate();
      const seen: Seen = {
        method: req.method ?? '',
        path: u.pathname.replace(/^\/prefix/, ''),
        query: u.searchParams,
        headers: req.headers,
        body: text === '' ? undefined : json ? (JSON.parse(text) as unknown) : text,
        peerCn: typeof peer.subject?.CN === 'string' ? peer.subject.CN : undefined,
      };
      api.seen.push(seen);
      const r = api.reply(seen);
      if ('stream' in r) {
        res.writeHead(200, { 'Content-Type': 'application/json' });
        for (const line of r.stream) res.write(`${line}\n`);
        res.end();
        return;
      }
      const body = typeof r.body === 'string' ? r.body : JSON.stringify(r.body);
      res.writeHead(r.status, { 'Content-Type': typeof r.body === 'string' ? 'text/plain' : 'application/json' });
      res.end(body);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmlet-kube-cli-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  const url = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  let n = 0;
  const kubeconfig = async (user: Obj, opts: { namespace?: string; ca?: string; suffix?: string } = {}): Promise<string> => {
    const file = path.join(dir, `kubeconfig-${++n}`);
    const doc = {
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [
        { name: 'fake', cluster: { server: `${url}${opts.suffix ?? ''}`, 'certificate-authority-data': Buffer.from(opts.ca ?? ca.cert).toString('base64') } },
      ],
      users: [{ name: 'me', user }],
      contexts: [{ name: 'ctx', context: { cluster: 'fake', user: 'me', ...(opts.namespace ? { namespace: opts.namespace } : {}) } }],
      'current-context': 'ctx',
    };
    await fs.writeFile(file, YAML.stringify(doc));
    return file;
  };
  return { api, url, ca, kubeconfig, client };
}

const NOW = Date.parse('2026-03-01T12:00:00Z');
const vm = (name: string, runStrategy: string): Obj => ({
  apiVersion: 'vmlet.io/v1alpha1',
  kind: 'VirtualMachine',
  metadata: { name },
  spec: { runStrategy, template: { metadata: { labels: { app: name } }, spec: { domain: { memory: { guest: '128Mi' } } } } },
});
const vmi = (name: string, phase: string, extra: Obj = {}): Obj => ({
  apiVersion: 'vmlet.io/v1alpha1',
  kind: 'VirtualMachineInstance',
  metadata: { name },
  spec: { domain: { cpu: { cores: 2 }, memory: { guest: '128Mi' } } },
  status: { phase, ...extra },
});

t.test('against a fake API server', async (t) => {
  const f = await startFake(t);
  const tokenFile = await f.kubeconfig({ token: 'sekret-token' });
  const cli = (argv: string[], env: Record<string, string> = {}): ReturnType<typeof runCli> => runCli(['--kubeconfig', tokenFile, ...argv], { env, now: NOW });
  const last = (): Seen => f.api.seen.at(-1)!;

  t.test('get: paths, bearer token, tables computed from the objects', async (t) => {
    f.api.put('virtualmachineinstances', 'default', vmi('vm1', 'Running', { nodeName: 'node-7', interfaces: [{ ipAddress: '10.0.0.9' }] }));
    f.api.put('virtualmachines', 'default', vm('vm1', 'Always'));
    f.api.put('virtualmachines', 'other', vm('vm2', 'Halted'));
    const r = await cli(['get', 'vmi', 'vm1', '-o', 'wide']);
    t.equal(r.code, 0, r.stderr);
    t.equal(last().method, 'GET');
    t.equal(last().path, `${GROUP}/namespaces/default/virtualmachineinstances/vm1`);
    t.equal(last().headers['authorization'], 'Bearer sekret-token');
    t.match(r.stdout, /^NAME\s+AGE\s+PHASE\s+IP\s+NODENAME\s+READY\s+PAUSED\s+CPUS\s+MEMORY\n/);
    t.match(r.stdout, /\nvm1\s+60m\s+Running\s+10\.0\.0\.9\s+node-7\s+False\s+False\s+2\s+128Mi\n$/);
    const all = await cli(['get', 'vms', '-A', '-o', 'wide']);
    t.equal(last().path, `${GROUP}/virtualmachines`, '-A lists without a namespace');
    t.match(all.stdout, /^NAMESPACE\s+NAME\s+AGE\s+STATUS\s+READY\s+RUNSTRATEGY\n/);
    t.match(all.stdout, /default\s+vm1\s.*Always\n/);
    t.match(all.stdout, /other\s+vm2\s.*Halted\n/);
    const json = await cli(['get', 'vm', 'vm1', '-o', 'json']);
    t.match(JSON.parse(json.stdout), { kind: 'VirtualMachine', metadata: { name: 'vm1', resourceVersion: /^\d+$/ } });
    const name = await cli(['get', 'vms', '-o', 'name']);
    t.equal(name.stdout, 'virtualmachine.vmlet.io/vm1\n');
    const empty = await cli(['-n', 'nothing', 'get', 'vmis']);
    t.equal(empty.stderr, 'No resources found in nothing namespace.\n');
  });

  t.test('client certificates and a server path prefix', async (t) => {
    const file = await f.kubeconfig(
      { 'client-certificate-data': Buffer.from(f.client.cert).toString('base64'), 'client-key-data': Buffer.from(f.client.key).toString('base64') },
      { suffix: '/prefix' },
    );
    const r = await runCli(['--kubeconfig', file, 'get', 'vm', 'vm1'], { env: {} });
    t.equal(r.code, 0, r.stderr);
    t.equal(last().peerCn, 'vmlet-cli-user', 'the client certificate was presented');
    t.equal(last().headers['authorization'], undefined, 'no token');
    t.equal(last().path, `${GROUP}/namespaces/default/virtualmachines/vm1`, 'under the prefix of the server URL');
  });

  t.test('a server certificate the kubeconfig CA did not sign is refused', async (t) => {
    const other = makeCa(new Date(), 'some-other-ca');
    const file = await f.kubeconfig({ token: 'x' }, { ca: other.cert });
    const before = f.api.seen.length;
    const r = await runCli(['--kubeconfig', file, 'get', 'vms'], { env: {} });
    t.equal(r.code, 1);
    t.match(r.stderr, /^error: cannot reach the Kubernetes API server at https:\/\/127\.0\.0\.1:\d+: .*certificate.* \(KUBE_API_UNAVAILABLE\)\n$/);
    t.equal(f.api.seen.length, before, 'no request got through');
  });

  t.test('Status errors: code from the reason, message kept readable', async (t) => {
    const missing = await cli(['get', 'vm', 'nope']);
    t.equal(missing.code, 1);
    t.equal(missing.stderr, 'error: virtualmachines.vmlet.io "nope" not found (NOT_FOUND)\n');

    const manifest = path.join(os.tmpdir(), `vmlet-kube-cli-bad-${process.pid}.yaml`);
    t.teardown(() => fs.rm(manifest, { force: true }));
    await fs.writeFile(manifest, YAML.stringify(vm('bad', 'Always')));
    f.api.override = (r) =>
      r.method === 'POST'
        ? status(
            422,
            'OUT_OF_RANGE',
            'admission webhook "validate.vmlet.io" denied the request: OUT_OF_RANGE: spec.template.spec.domain.memory.guest: must be at least 1Mi',
          )
        : undefined;
    const denied = await cli(['apply', '-f', manifest]);
    t.equal(denied.code, 1);
    t.equal(
      denied.stderr,
      'error: admission webhook "validate.vmlet.io" denied the request: spec.template.spec.domain.memory.guest: must be at least 1Mi (OUT_OF_RANGE)\n',
    );

    f.api.override = (r) =>
      r.method === 'POST'
        ? status(422, 'Invalid', 'VirtualMachine.vmlet.io "bad" is invalid: spec.runStrategy: Unsupported value: "Sometimes"', {
            details: { causes: [{ reason: 'FieldValueNotSupported', message: 'Unsupported value: "Sometimes"', field: 'spec.runStrategy' }] },
          })
        : undefined;
    const invalid = await cli(['apply', '-f', manifest]);
    t.equal(
      invalid.stderr,
      'error: VirtualMachine.vmlet.io "bad" is invalid:\nerror: spec.runStrategy: Unsupported value: "Sometimes" (FieldValueNotSupported)\n',
    );

    f.api.override = () => status(403, 'Forbidden', 'virtualmachines.vmlet.io is forbidden: User "bob" cannot list resource "virtualmachines"');
    const forbidden = await cli(['get', 'vms']);
    t.equal(forbidden.stderr, 'error: virtualmachines.vmlet.io is forbidden: User "bob" cannot list resource "virtualmachines" (KUBE_API_FORBIDDEN)\n');

    f.api.override = () => status(404, 'NotFound', 'the server could not find the requested resource');
    const noCrd = await cli(['get', 'vms']);
    t.match(noCrd.stderr, /could not find the requested resource \(is the vmlet\.io\/v1alpha1 API installed\? .*\) \(NOT_FOUND\)\n$/);

    f.api.override = () => ({ status: 502, body: 'bad gateway\nmore' });
    const bare = await cli(['get', 'vms']);
    t.equal(bare.stderr, 'error: the API server answered HTTP 502: bad gateway (HTTP_502)\n');
    f.api.override = undefined;

    const gone = kubeErrorFromResponse(410, { kind: 'Status', reason: 'Expired', message: 'too old resource version' }, '');
    t.equal(gone.reason, 'Expired', 'a reason without a vmlet code is shown as it is');
    t.equal(gone.code, 'DAEMON_ERROR');
  });

  t.test('apply: POST when absent, PUT with the resourceVersion read when present', async (t) => {
    const manifest = path.join(os.tmpdir(), `vmlet-kube-cli-apply-${process.pid}.yaml`);
    t.teardown(() => fs.rm(manifest, { force: true }));
    await fs.writeFile(manifest, YAML.stringify(vm('applied', 'Halted')));
    const created = await cli(['apply', '-f', manifest]);
    t.equal(created.stdout, 'virtualmachine.vmlet.io/applied created\n', created.stderr);
    t.equal(last().method, 'POST');
    t.equal(last().path, `${GROUP}/namespaces/default/virtualmachines`);
    const rv = (f.api.objects.get('virtualmachines/default/applied')!['metadata'] as Obj)['resourceVersion'];
    await fs.writeFile(manifest, YAML.stringify(vm('applied', 'Always')));
    const configured = await cli(['apply', '-f', manifest]);
    t.equal(configured.stdout, 'virtualmachine.vmlet.io/applied configured\n', configured.stderr);
    t.equal(last().method, 'PUT');
    t.match(last().body, { metadata: { name: 'applied', resourceVersion: rv }, spec: { runStrategy: 'Always' } });
    t.match(f.api.objects.get('virtualmachines/default/applied'), { spec: { runStrategy: 'Always' } });

    // A controller writing the status between our GET and PUT: read again and replace.
    let conflicts = 1;
    f.api.override = (r) => (r.method === 'PUT' && conflicts-- > 0 ? status(409, 'Conflict', 'the object has been modified') : undefined);
    const retried = await cli(['apply', '-f', manifest]);
    t.equal(retried.stdout, 'virtualmachine.vmlet.io/applied configured\n', retried.stderr);
    t.equal(
      f.api.seen
        .slice(-4)
        .map((r) => r.method)
        .join(','),
      'GET,PUT,GET,PUT',
    );
    // A resourceVersion in the manifest is the user's own precondition: a conflict is reported.
    const pinned = vm('applied', 'Always');
    (pinned['metadata'] as Obj)['resourceVersion'] = '1';
    await fs.writeFile(manifest, YAML.stringify(pinned));
    f.api.override = undefined;
    const stale = await cli(['apply', '-f', manifest]);
    t.equal(stale.code, 1);
    t.match(stale.stderr, /the object has been modified \(CONFLICT\)\n$/);
  });

  t.test('start/stop/restart write what the controller acts on', async (t) => {
    f.api.objects.clear();
    f.api.put('virtualmachines', 'default', vm('halted', 'Halted'));
    const start = await cli(['start', 'halted']);
    t.equal(start.stdout, 'VM halted was scheduled to start\n', start.stderr);
    t.equal(last().method, 'PATCH');
    t.equal(last().headers['content-type'], 'application/merge-patch+json');
    t.match(JSON.parse(String(last().body)), { metadata: { resourceVersion: /^\d+$/ }, spec: { runStrategy: 'Always', running: null } });
    t.match(f.api.objects.get('virtualmachines/default/halted'), { spec: { runStrategy: 'Always' } });
    let conflicts = 1;
    f.api.override = (r) => (r.method === 'PATCH' && conflicts-- > 0 ? status(409, 'Conflict', 'the object has been modified') : undefined);
    const retried = await cli(['stop', 'halted']);
    t.equal(retried.code, 0, `a conflict is decided again on fresh reads (${retried.stderr})`);
    t.equal(f.api.seen.filter((r) => r.method === 'PATCH').length >= 3, true);
    f.api.override = undefined;
    await cli(['start', 'halted']);

    const stopped = await cli(['stop', 'halted']);
    t.equal(stopped.code, 0, stopped.stderr);
    t.match(f.api.objects.get('virtualmachines/default/halted'), { spec: { runStrategy: 'Halted' } });
    const again = await cli(['stop', 'halted']);
    t.equal(again.stderr, 'error: VirtualMachine "halted" is not running (VM_NOT_RUNNING)\n');
    const restartNone = await cli(['restart', 'halted']);
    t.equal(restartNone.stderr, 'error: VirtualMachine "halted" is not running; use start (VM_NOT_RUNNING)\n');

    f.api.put('virtualmachines', 'default', vm('always', 'Always'));
    const running = f.api.put('virtualmachineinstances', 'default', vmi('always', 'Running'));
    const busy = await cli(['start', 'always']);
    t.equal(busy.code, 1);
    t.equal(busy.stderr, 'error: VirtualMachine "always" is already running (VM_ALREADY_RUNNING)\n');
    const restart = await cli(['restart', 'always']);
    t.equal(restart.code, 0, restart.stderr);
    t.equal(last().method, 'DELETE');
    t.equal(last().path, `${GROUP}/namespaces/default/virtualmachineinstances/always`);
    t.match(last().body, { kind: 'DeleteOptions', preconditions: { uid: (running['metadata'] as Obj)['uid'] } });
    t.notOk(f.api.objects.has('virtualmachineinstances/default/always'), 'the VMI is deleted; the controller makes the next');
    t.match(f.api.objects.get('virtualmachines/default/always'), { spec: { runStrategy: 'Always' } }, 'runStrategy untouched');

    const manual = f.api.put('virtualmachines', 'default', vm('manual', 'Manual'));
    f.api.put('virtualmachineinstances', 'default', vmi('manual', 'Running'));
    const r = await cli(['restart', 'manual']);
    t.equal(r.code, 0, r.stderr);
    const made = f.api.objects.get('virtualmachineinstances/default/manual');
    t.match(made, {
      metadata: {
        labels: { app: 'manual' },
        ownerReferences: [{ kind: 'VirtualMachine', name: 'manual', uid: (manual['metadata'] as Obj)['uid'], controller: true }],
      },
      spec: { domain: { memory: { guest: '128Mi' } } },
    });
    t.match(f.api.objects.get('virtualmachines/default/manual'), { spec: { runStrategy: 'Manual' } }, 'a Manual VM stays Manual');
    t.equal((await cli(['start', 'missing'])).stderr, 'error: virtualmachines.vmlet.io "missing" not found (NOT_FOUND)\n');
  });

  t.test('node-local verbs are refused, naming the node and the command to run there', async (t) => {
    f.api.put('virtualmachineinstances', 'default', vmi('placed', 'Running', { nodeName: 'node-7' }));
    f.api.put('virtualmachineinstances', 'default', vmi('waiting', 'Pending'));
    for (const verb of ['pause', 'unpause', 'softreboot', 'reset', 'console']) {
      const r = await cli([verb, 'placed']);
      t.equal(r.code, 1, verb);
      t.match(
        r.stderr,
        new RegExp(`^error: .*run it on node node-7: vmlet --socket /run/vmlet/vmlet\\.sock -n default ${verb} placed \\(NODE_LOCAL_VERB\\)\\n$`),
        verb,
      );
    }
    const qmp = await cli(['qmp', 'placed', '{"execute":"query-status"}']);
    t.match(qmp.stderr, /node node-7: vmlet --socket \S+ -n default qmp placed 'JSON' \(NODE_LOCAL_VERB\)/);
    t.match((await cli(['pause', 'waiting'])).stderr, /has no node yet .*\(NODE_LOCAL_VERB\)\n$/);
    t.match((await cli(['pause', 'ghost'])).stderr, /that VMI does not exist \(NODE_LOCAL_VERB\)\n$/);
    t.equal((await cli(['pause'])).code, 2, 'a missing NAME is still a usage error');
  });

  t.test('version: the CLI and the API server', async (t) => {
    const r = await cli(['version']);
    t.equal(r.code, 0, r.stderr);
    t.match(r.stdout, /^Client:\s+vmlet \S+\nServer:\s+Kubernetes v1\.34\.4 at https:\/\/127\.0\.0\.1:\d+\n$/);
    t.equal(last().path, '/version');
    const json = JSON.parse((await cli(['version', '-o', 'json'])).stdout) as Obj;
    t.match(json, { client: { vmlet: String }, server: { url: f.url, kubernetes: { gitVersion: 'v1.34.4' } } });
    let busy = 1;
    f.api.override = () => (busy-- > 0 ? status(429, 'TooManyRequests', 'storage is (re)initializing') : undefined);
    const before = f.api.seen.length;
    const retried = await cli(['version']);
    t.equal(retried.code, 0, 'a 429 is tried again after its Retry-After (1 s without the header)');
    t.equal(f.api.seen.length - before, 2, 'once');
    f.api.override = () => status(503, 'ServiceUnavailable', 'the server is shutting down');
    const down = await cli(['version']);
    t.equal(down.code, 1);
    t.match(down.stdout, /^Client:\s+vmlet \S+\n$/);
    t.equal(down.stderr, 'error: the API server did not report its version: the server is shutting down (KUBE_API_UNAVAILABLE)\n');
    f.api.override = undefined;
  });

  t.test('watches: events --watch and delete --wait', async (t) => {
    const ev = (reason: string): string =>
      JSON.stringify({
        type: 'ADDED',
        object: { kind: 'Event', involvedObject: { kind: 'VirtualMachineInstance', name: 'placed' }, type: 'Normal', reason, message: `${reason} happened` },
      });
    f.api.override = (r) => (r.query.get('watch') === 'true' ? { stream: [ev('Started'), ev('Paused')] } : undefined);
    const w = await cli(['events', 'placed', '--watch']);
    t.equal(w.code, 0, w.stderr);
    t.equal(last().path, '/api/v1/namespaces/default/events');
    t.equal(last().query.get('fieldSelector'), 'involvedObject.name=placed');
    t.match(w.stdout, /REASON.*\n.*Started.*Started happened\n.*Paused.*Paused happened\n$/);

    f.api.override = (r) =>
      r.query.get('watch') === 'true' ? { stream: [JSON.stringify({ type: 'DELETED', object: { metadata: { name: 'placed' } } })] } : undefined;
    const d = await cli(['delete', 'vmi', 'placed', '--wait']);
    t.equal(d.code, 0, d.stderr);
    t.equal(d.stdout, 'virtualmachineinstance.vmlet.io "placed" deleted\n');
    const watchReq = f.api.seen.find((s) => s.query.get('fieldSelector') === 'metadata.name=placed');
    t.equal(watchReq?.path, `${GROUP}/namespaces/default/virtualmachineinstances`);
    f.api.override = undefined;
  });

  t.test('which target: flags, then VMLET_SOCKET, then KUBECONFIG', async (t) => {
    f.api.put('virtualmachines', 'default', vm('vm1', 'Always'));
    const byEnv = await runCli(['get', 'vm', 'vm1'], { env: { KUBECONFIG: `/nonexistent${path.delimiter}${tokenFile}` } });
    t.equal(byEnv.code, 0, `$KUBECONFIG without a socket: the cluster (${byEnv.stderr})`);
    t.equal(last().path, `${GROUP}/namespaces/default/virtualmachines/vm1`);
    const socketWins = await runCli(['get', 'vms'], { env: { KUBECONFIG: tokenFile, VMLET_SOCKET: '/nonexistent/vmlet.sock' } });
    t.match(socketWins.stderr, /cannot reach vmlet daemon at \/nonexistent\/vmlet\.sock.*\(DAEMON_UNREACHABLE\)/);
    const flagWins = await runCli(['--kubeconfig', tokenFile, 'get', 'vm', 'vm1'], { env: { VMLET_SOCKET: '/nonexistent/vmlet.sock' } });
    t.equal(flagWins.code, 0, '--kubeconfig beats $VMLET_SOCKET');
    const both = await runCli(['--socket', '/x.sock', '--kubeconfig', tokenFile, 'get', 'vms'], { env: {} });
    t.equal(both.code, 2);
    t.equal(both.stderr, 'error: --socket and --kubeconfig exclude each other: a daemon or a cluster (USAGE)\n');
    const missing = await runCli(['--kubeconfig', '/nonexistent/kubeconfig', 'get', 'vms'], { env: {} });
    t.equal(missing.code, 1);
    t.match(missing.stderr, /^error: kubeconfig \/nonexistent\/kubeconfig \(--kubeconfig\): .*\(KUBECONFIG_INVALID\)\n$/);
    const ctxNs = await f.kubeconfig({ token: 't' }, { namespace: 'team' });
    await runCli(['--kubeconfig', ctxNs, 'get', 'vms'], { env: {} });
    t.equal(last().path, `${GROUP}/namespaces/team/virtualmachines`, "the context's namespace without -n");
    await runCli(['--kubeconfig', ctxNs, '-n', 'blue', 'get', 'vms'], { env: {} });
    t.equal(last().path, `${GROUP}/namespaces/blue/virtualmachines`, '-n wins');
    const controller = await runCli(['controller', '--kubeconfig', tokenFile, 'extra'], { env: {} });
    t.match(controller.stderr, /controller takes no positional arguments/, '--kubeconfig still applies to controller');
  });
});
