import fs from 'node:fs/promises';
import t from 'tap';
import { ApiClient, paths } from '../../src/cli/client.js';
import { httpStatusOf } from '../../src/error-codes.js';
import { VmletError, type ErrorCode } from '../../src/errors.js';
import { FAKE_VERSION, startFakeServer } from '../support/fake-backend.js';

const VMIS = '/apis/vmlet.io/v1alpha1/namespaces/default/virtualmachineinstances';
const VMS = '/apis/vmlet.io/v1alpha1/namespaces/default/virtualmachines';
const vmi = (name: string, extra: Record<string, unknown> = {}): Record<string, unknown> => ({
  apiVersion: 'vmlet.io/v1alpha1',
  kind: 'VirtualMachineInstance',
  metadata: { name, ...extra },
  spec: { domain: { devices: {} } },
});

t.test('routes', async (t) => {
  const s = await startFakeServer();
  t.teardown(s.close);
  const c = new ApiClient({ socketPath: s.socketPath });

  t.test('healthz and version', async (t) => {
    const h = await c.request('GET', '/healthz');
    t.equal(h.status, 200);
    t.equal(h.text, 'ok');
    const v = await c.request('GET', '/version');
    t.equal(v.status, 200);
    t.same(v.body, { ...FAKE_VERSION, apiVersion: 'vmlet.io/v1alpha1', nodejs: process.version }, 'what the daemon was started with, as given');
    const bare = await startFakeServer({
      version: { vmlet: '1.2.3', qemu: 'QEMU emulator version 9.0.0', kvm: { usable: true, reason: 'ok' }, accel: 'kvm', useEmulation: false },
    });
    t.teardown(bare.close);
    const b = await new ApiClient({ socketPath: bare.socketPath }).request('GET', '/version');
    t.match(b.body, { vmlet: '1.2.3', qemu: 'QEMU emulator version 9.0.0', kvm: { usable: true, reason: 'ok' }, accel: 'kvm', useEmulation: false });
    t.equal((await c.request('POST', '/version', { body: {} })).status, 405, 'GET only');
  });

  t.test('create, get, list, replace, delete', async (t) => {
    const created = await c.request('POST', VMIS, { body: vmi('a') });
    t.equal(created.status, 201);
    t.match(created.body, { kind: 'VirtualMachineInstance', metadata: { name: 'a', namespace: 'default' } });
    const got = await c.request('GET', `${VMIS}/a`);
    t.equal(got.status, 200);
    t.same(got.body, created.body);
    const list = await c.request('GET', VMIS);
    t.match(list.body, { apiVersion: 'vmlet.io/v1alpha1', kind: 'VirtualMachineInstanceList', items: [{ metadata: { name: 'a' } }] });
    const dup = await c.request('POST', VMIS, { body: vmi('a') });
    t.equal(dup.status, 409);
    t.match(dup.body, { kind: 'Status', status: 'Failure', reason: 'ALREADY_EXISTS', code: 409, message: 'virtualmachineinstances "a" already exists' });
    const put = await c.request('PUT', `${VMIS}/a`, { body: vmi('a', { labels: { x: 'y' } }) });
    t.equal(put.status, 200);
    t.match(put.body, { metadata: { labels: { x: 'y' } } });
    const del = await c.request('DELETE', `${VMIS}/a`);
    t.equal(del.status, 200);
    const gone = await c.request('GET', `${VMIS}/a`);
    t.equal(gone.status, 404);
    t.same(gone.body, {
      kind: 'Status',
      apiVersion: 'v1',
      metadata: {},
      status: 'Failure',
      message: 'virtualmachineinstances "a" not found',
      reason: 'NOT_FOUND',
      code: 404,
      details: { name: 'a', kind: 'virtualmachineinstances' },
    });
  });

  t.test('YAML body', async (t) => {
    const yaml = 'apiVersion: vmlet.io/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: y\nspec:\n  runStrategy: Always\n';
    const r = await c.request('POST', VMS, { body: yaml, contentType: 'application/yaml' });
    t.equal(r.status, 201);
    t.match(r.body, { kind: 'VirtualMachine', metadata: { name: 'y' }, spec: { runStrategy: 'Always' } });
    const two = await c.request('POST', VMS, { body: `${yaml}---\n${yaml}`, contentType: 'application/yaml' });
    t.equal(two.status, 400);
    t.match(two.body, { reason: 'BAD_REQUEST' });
    const weird = await c.request('POST', VMS, { body: 'x', contentType: 'text/plain' });
    t.equal(weird.status, 415);
  });

  t.test('cluster-wide list', async (t) => {
    s.backend.seed('VirtualMachineInstance', 'other', { metadata: { name: 'o' } });
    s.backend.seed('VirtualMachineInstance', 'default', { metadata: { name: 'd' } });
    const r = await c.request('GET', '/apis/vmlet.io/v1alpha1/virtualmachineinstances');
    t.equal(r.status, 200);
    const names = (r.body as { items: { metadata: { name: string } }[] }).items.map((o) => o.metadata.name).sort();
    t.same(names, ['d', 'o']);
    t.equal((await c.request('POST', '/apis/vmlet.io/v1alpha1/virtualmachineinstances', { body: vmi('z') })).status, 405);
  });

  t.test('subresources on both prefixes', async (t) => {
    s.backend.seed('VirtualMachine', 'default', { metadata: { name: 'vm1' } });
    for (const prefix of ['/apis/vmlet.io/v1alpha1', '/apis/subresources.vmlet.io/v1alpha1']) {
      const r = await c.request('PUT', `${prefix}/namespaces/default/virtualmachineinstances/d/pause`);
      t.equal(r.status, 202, prefix);
      t.match(r.body, { kind: 'Status', status: 'Success' });
      const v = await c.request('PUT', `${prefix}/namespaces/default/virtualmachines/vm1/restart`);
      t.equal(v.status, 202, prefix);
    }
    t.match(
      s.backend.calls.filter((x) => x.op === 'vmiAction' || x.op === 'vmAction'),
      [
        { op: 'vmiAction', action: 'pause', ref: { kind: 'VirtualMachineInstance', name: 'd' } },
        { op: 'vmAction', action: 'restart', ref: { kind: 'VirtualMachine', name: 'vm1' } },
        { op: 'vmiAction', action: 'pause' },
        { op: 'vmAction', action: 'restart' },
      ],
    );
    t.equal((await c.request('PUT', paths.subresource('virtualmachines', 'default', 'vm1', 'pause'))).status, 404, 'pause is not a VM verb');
    t.equal((await c.request('PUT', paths.subresource('virtualmachineinstances', 'default', 'd', 'start'))).status, 404, 'start is not a VMI verb');
    t.equal((await c.request('POST', paths.subresource('virtualmachineinstances', 'default', 'd', 'pause'))).status, 405);
    t.equal((await c.request('GET', '/apis/subresources.vmlet.io/v1alpha1/namespaces/default/virtualmachineinstances')).status, 404);
    const missing = await c.request('PUT', paths.subresource('virtualmachineinstances', 'default', 'nope', 'reset'));
    t.equal(missing.status, 404);
    t.match(missing.body, { reason: 'NOT_FOUND', message: 'virtualmachineinstances "nope" not found' });
  });

  t.test('qmp', async (t) => {
    const r = await c.request('POST', paths.subresource('virtualmachineinstances', 'default', 'd', 'qmp'), { body: { execute: 'query-status' } });
    t.equal(r.status, 200);
    t.same(r.body, { return: { echo: { execute: 'query-status' } } });
    const bad = await c.request('POST', paths.subresource('virtualmachineinstances', 'default', 'd', 'qmp'), {
      body: '[1,2]',
      contentType: 'application/json',
    });
    t.equal(bad.status, 400);
    s.backend.failNext.set('qmp', new VmletError('QMP_TIMEOUT', 'no reply'));
    t.equal((await c.request('POST', paths.subresource('virtualmachineinstances', 'default', 'd', 'qmp'), { body: { execute: 'x' } })).status, 504);
    s.backend.failNext.set('qmp', new VmletError('QMP_COMMAND_ERROR', 'GenericError'));
    t.equal((await c.request('POST', paths.subresource('virtualmachineinstances', 'default', 'd', 'qmp'), { body: { execute: 'x' } })).status, 502);
  });

  t.test('events list and field selector', async (t) => {
    s.backend.addEvent('default', { kind: 'VirtualMachineInstance', name: 'd' }, 'Started', 'VMI started');
    s.backend.addEvent('default', { kind: 'VirtualMachineInstance', name: 'e' }, 'Created', 'VMI created');
    const all = await c.request('GET', '/api/v1/namespaces/default/events');
    t.match(all.body, { kind: 'EventList', apiVersion: 'v1' });
    t.equal((all.body as { items: unknown[] }).items.length, 2);
    const one = await c.request('GET', '/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Dd');
    t.match(one.body, { items: [{ reason: 'Started' }] });
    t.equal((one.body as { items: unknown[] }).items.length, 1);
    const bad = await c.request('GET', '/api/v1/namespaces/default/events?fieldSelector=reason%3DStarted');
    t.equal(bad.status, 400);
    t.equal((await c.request('GET', '/api/v1/events')).status, 200);
  });

  t.test('GET console without upgrade is 426', async (t) => {
    const r = await c.request('GET', paths.subresource('virtualmachineinstances', 'default', 'd', 'console'));
    t.equal(r.status, 426);
    t.match(r.body, { reason: 'UPGRADE_REQUIRED' });
  });
});

t.test('hostile and wrong requests', async (t) => {
  const s = await startFakeServer();
  t.teardown(s.close);
  const c = new ApiClient({ socketPath: s.socketPath });
  s.backend.seed('VirtualMachineInstance', 'default', { metadata: { name: 'a' } });
  const before = s.backend.calls.length;

  t.test('invalid JSON is 400', async (t) => {
    const r = await c.request('POST', VMIS, { body: '{"kind": ', contentType: 'application/json' });
    t.equal(r.status, 400);
    t.match(r.body, { kind: 'Status', reason: 'BAD_REQUEST', code: 400 });
    t.equal((await c.request('POST', VMIS, { body: '', contentType: 'application/json' })).status, 400, 'empty body');
    t.equal((await c.request('POST', VMIS, { body: '"str"', contentType: 'application/json' })).status, 400, 'not an object');
  });

  t.test('path traversal never reaches the backend', async (t) => {
    for (const p of [
      `${VMIS}/..%2F..%2Fetc%2Fpasswd`,
      `${VMIS}/..`,
      `${VMIS}/%2e%2e`,
      '/apis/vmlet.io/v1alpha1/namespaces/..%2Fx/virtualmachineinstances',
      '/apis/vmlet.io/v1alpha1/namespaces/default/virtualmachineinstances/A',
      `${VMIS}/a%00`,
      `${VMIS}/%zz`,
      `${VMIS}/${'x'.repeat(64)}`,
    ]) {
      const r = await c.request('GET', p);
      t.ok(r.status === 400 || r.status === 404, `${p} → ${r.status}`);
      t.match(r.body, { kind: 'Status', status: 'Failure' });
    }
    const raw = await c.request('GET', '/apis/vmlet.io/v1alpha1/namespaces/default/virtualmachineinstances/../../../etc');
    t.ok(raw.status === 400 || raw.status === 404);
    t.equal(s.backend.calls.length, before, 'no backend call');
  });

  t.test('unknown path 404, wrong method 405 with Allow', async (t) => {
    for (const p of ['/', '/apis', '/apis/other.io/v1/x', '/api/v1/pods', `${VMIS}/a/frobnicate`, `${VMIS}//`, '/healthz/x']) {
      const r = await c.request('GET', p);
      t.equal(r.status, 404, p);
      t.match(r.body, { kind: 'Status', reason: 'NOT_FOUND', code: 404 });
    }
    const r = await c.request('PATCH', `${VMIS}/a`, { body: {} });
    t.equal(r.status, 405);
    t.equal(r.headers.allow, 'GET, PUT, DELETE');
    t.match(r.body, { reason: 'METHOD_NOT_ALLOWED', code: 405 });
    t.equal((await c.request('DELETE', VMIS)).status, 405);
  });

  t.test('namespace and name mismatch', async (t) => {
    const r = await c.request('POST', VMIS, { body: vmi('b', { namespace: 'other' }) });
    t.equal(r.status, 400);
    t.match(r.body, { reason: 'NAMESPACE_MISMATCH' });
    const p = await c.request('PUT', `${VMIS}/a`, { body: vmi('b') });
    t.equal(p.status, 400);
    t.match(p.body, { reason: 'NAME_MISMATCH' });
  });

  t.test('code mapping and causes', async (t) => {
    const cases: [ErrorCode, number][] = [
      ['INVALID_QUANTITY', 422],
      ['UNSUPPORTED_API_VERSION', 422],
      ['STORE_CONFLICT', 409],
      ['CONSOLE_BUSY', 409],
      ['VMI_NOT_RUNNING', 409],
    ];
    t.equal(httpStatusOf('SOMETHING_NEW'), 500, 'a code from elsewhere that is not registered answers 500');
    for (const [code, http] of cases) {
      s.backend.failNext.set('create', new VmletError(code, `boom ${code}`));
      const r = await c.request('POST', VMIS, { body: vmi('c') });
      t.equal(r.status, http, code);
      t.match(r.body, { kind: 'Status', apiVersion: 'v1', status: 'Failure', reason: code, code: http, message: `boom ${code}` });
    }
    s.backend.failNext.set('list', new Error('secret internals'));
    const r = await c.request('GET', VMIS);
    t.equal(r.status, 500);
    t.match(r.body, { reason: 'INTERNAL', message: 'internal error' });
    const v = await c.request('POST', VMIS, { body: { kind: 'VirtualMachineInstance', metadata: {} } });
    t.equal(v.status, 422);
    t.same(
      (v.body as { details: { causes: unknown } }).details.causes,
      [{ field: 'metadata.name', code: 'INVALID_FIELD', message: 'required', reason: 'INVALID_FIELD' }],
      "each cause has its code (and Kubernetes' reason)",
    );
    const several = Object.assign(new VmletError('UNKNOWN_FIELD', 'VirtualMachineInstance "default/c" is invalid: three problems'), {
      details: [
        { field: 'spec.x', code: 'UNKNOWN_FIELD', message: 'field not supported' },
        { field: 'metadata.name', code: 'INVALID_NAME', message: 'must be a DNS-1123 label' },
        { message: 'no field' },
      ],
    });
    s.backend.failNext.set('create', several);
    const all = await c.request('POST', VMIS, { body: vmi('c') });
    t.equal(all.status, 422);
    t.same(
      (all.body as { reason: string; details: { causes: unknown } }).details.causes,
      [
        { field: 'spec.x', code: 'UNKNOWN_FIELD', message: 'field not supported', reason: 'UNKNOWN_FIELD' },
        { field: 'metadata.name', code: 'INVALID_NAME', message: 'must be a DNS-1123 label', reason: 'INVALID_NAME' },
        { code: 'UNKNOWN_FIELD', message: 'no field', reason: 'UNKNOWN_FIELD' },
      ],
      "every cause, in order; one without its own code has the error's",
    );
    t.equal((all.body as { reason: string }).reason, 'UNKNOWN_FIELD', "the top-level code is the first problem's");
  });

  t.test('still serving', async (t) => {
    t.equal((await c.request('GET', '/healthz')).status, 200);
  });
});

t.test('socket file: mode 0660, stale file replaced, live daemon refused, removed on close', async (t) => {
  const s = await startFakeServer();
  const st = await fs.stat(s.socketPath);
  t.ok(st.isSocket());
  t.equal(st.mode & 0o777, 0o660);
  await t.rejects(startFakeServer({ socketPath: s.socketPath }), { code: 'SOCKET_IN_USE' });
  t.equal((await new ApiClient({ socketPath: s.socketPath }).request('GET', '/healthz')).status, 200, 'first daemon unharmed');
  await s.server.close();
  await t.rejects(fs.stat(s.socketPath), { code: 'ENOENT' }, 'removed on close');

  // A stale socket file: bound by a process that is gone (simulated by a listener closed without unlinking).
  const net = await import('node:net');
  const stale = net.createServer();
  await new Promise<void>((r) => stale.listen(s.socketPath, r));
  const fd = (stale as unknown as { _handle: { fd: number } })._handle.fd;
  t.ok(fd >= 0);
  // Copy the socket inode elsewhere by hard link so closing the listener (which unlinks) leaves a stale file.
  await fs.link(s.socketPath, `${s.socketPath}.keep`);
  await new Promise<void>((r) => stale.close(() => r()));
  await fs.rename(`${s.socketPath}.keep`, s.socketPath);
  t.ok((await fs.lstat(s.socketPath)).isSocket(), 'stale socket present');
  const s2 = await startFakeServer({ socketPath: s.socketPath });
  t.equal((await new ApiClient({ socketPath: s.socketPath }).request('GET', '/healthz')).status, 200);
  await s2.close();

  await fs.mkdir(s.dir, { recursive: true });
  await fs.writeFile(s.socketPath, 'not a socket');
  await t.rejects(startFakeServer({ socketPath: s.socketPath }), { code: 'SOCKET_PATH_INVALID' });
  t.equal(await fs.readFile(s.socketPath, 'utf8'), 'not a socket', 'regular file left alone');
  await fs.rm(s.dir, { recursive: true, force: true });
});
