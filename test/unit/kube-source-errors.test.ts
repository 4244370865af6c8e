// KubeSource's error mapping: client-node failures (API exceptions, watch status errors, network errors) to the Source's codes.
import { ApiException } from '@kubernetes/client-node';
import t from 'tap';
import { VmletError } from '../../src/errors.js';
import { errorForStatus, isTransient, kubeError, networkCode, statusOf } from '../../src/source/kube-errors.js';

const status = (code: number, reason: string, message: string, details?: unknown): string =>
  JSON.stringify({ kind: 'Status', apiVersion: 'v1', status: 'Failure', code, reason, message, details });

t.test('API exceptions map by HTTP status and reason, keeping the server message and causes', async (t) => {
  const cases: Array<[number, string, string]> = [
    [404, 'NotFound', 'STORE_NOT_FOUND'],
    [409, 'AlreadyExists', 'STORE_ALREADY_EXISTS'],
    [409, 'Conflict', 'STORE_CONFLICT'],
    [410, 'Expired', 'STORE_WATCH_OVERFLOW'],
    [422, 'Invalid', 'STORE_INVALID_OBJECT'],
    [400, 'BadRequest', 'STORE_INVALID_OBJECT'],
    [401, 'Unauthorized', 'KUBE_API_FORBIDDEN'],
    [403, 'Forbidden', 'KUBE_API_FORBIDDEN'],
    [429, 'TooManyRequests', 'KUBE_API_UNAVAILABLE'],
    [500, 'InternalError', 'KUBE_API_UNAVAILABLE'],
    [503, 'ServiceUnavailable', 'KUBE_API_UNAVAILABLE'],
    [405, 'MethodNotAllowed', 'KUBE_API_UNEXPECTED'],
  ];
  for (const [code, reason, want] of cases) {
    const e = kubeError(new ApiException(code, 'Unknown API Status Code!', status(code, reason, `said ${code}`), {}), 'get VirtualMachine ns/a');
    t.equal(e.code, want, `${code} ${reason}`);
    t.match(e.message, `said ${code}`);
    t.match(e.message, /^get VirtualMachine ns\/a/);
    t.match(e.details, { http: code, reason, message: `said ${code}` });
  }
  const causes = [{ reason: 'FieldValueRequired', message: 'Required value', field: 'spec.template.spec.domain' }];
  const invalid = kubeError(new ApiException(422, 'x', status(422, 'Invalid', 'VirtualMachine "a" is invalid', { causes }), {}), 'create');
  t.same((invalid.details as { details: unknown }).details, { causes }, 'the causes are kept');
  t.ok(invalid.cause instanceof ApiException, 'the cause is wrapped');
});

t.test('bodies that are not Status objects still map by status code', async (t) => {
  t.equal(kubeError(new ApiException(404, 'x', 'page not found', {}), 'get').code, 'STORE_NOT_FOUND');
  t.equal(kubeError(new ApiException(409, 'x', undefined, {}), 'update').code, 'STORE_CONFLICT', 'a 409 without reason is a conflict');
  t.same(statusOf('not json'), { message: 'not json' });
  t.equal(statusOf(''), undefined);
  t.same(statusOf({ code: 410, reason: 'Expired', message: 'too old' }), { code: 410, reason: 'Expired', message: 'too old' });
});

t.test("the watch's errors (statusCode) map like API exceptions", async (t) => {
  const e = Object.assign(new Error('Gone'), { statusCode: 410 });
  t.equal(kubeError(e, 'watch').code, 'STORE_WATCH_OVERFLOW');
  t.equal(errorForStatus(410, { code: 410, reason: 'Expired', message: 'too old resource version: 1 (304)' }, 'watch').code, 'STORE_WATCH_OVERFLOW');
  t.equal(errorForStatus(500, undefined, 'watch').code, 'KUBE_API_UNAVAILABLE');
});

t.test('network failures are KUBE_API_UNAVAILABLE with the errno', async (t) => {
  const refused = Object.assign(new Error('request to https://10.250.0.1:6443/ failed, reason: connect ECONNREFUSED'), {
    type: 'system',
    code: 'ECONNREFUSED',
    errno: 'ECONNREFUSED',
  });
  const e = kubeError(refused, 'list VirtualMachine');
  t.equal(e.code, 'KUBE_API_UNAVAILABLE');
  t.equal(e.errno, 'ECONNREFUSED');
  t.ok(isTransient(e));
  const wrapped = new Error('fetch failed', { cause: Object.assign(new Error('reset'), { code: 'ECONNRESET' }) });
  t.equal(networkCode(wrapped), 'ECONNRESET', 'found in the cause chain');
  t.equal(kubeError(new Error('something odd'), 'get').code, 'KUBE_API_UNAVAILABLE', 'an unknown failure of the transport');
  t.notOk(isTransient(kubeError(new ApiException(404, 'x', '', {}), 'get')));
});

t.test('VmletErrors pass through unchanged', async (t) => {
  const mine = new VmletError('STORE_CLOSED', 'closed');
  t.equal(kubeError(mine, 'get'), mine);
});

t.test('KubeSource: an unreachable API server is KUBE_API_UNAVAILABLE; a closed source is STORE_CLOSED', async (t) => {
  const { KubeConfig } = await import('@kubernetes/client-node');
  const { KubeSource } = await import('../../src/source/kube-source.js');
  const { pino } = await import('pino');
  const kc = new KubeConfig();
  kc.loadFromOptions({
    clusters: [{ name: 'c', server: 'https://127.0.0.1:1', skipTLSVerify: true }],
    users: [{ name: 'u' }],
    contexts: [{ name: 'x', cluster: 'c', user: 'u' }],
    currentContext: 'x',
  });
  const s = new KubeSource({ kubeConfig: kc, logger: pino({ level: 'silent' }), watchRetryMs: 300 });
  await t.rejects(s.get('VirtualMachine', 'default', 'a'), { code: 'KUBE_API_UNAVAILABLE' });
  const w = s.watch('VirtualMachine', 'default', undefined, { resourceVersion: '5' });
  await t.rejects(w.next(), { code: 'KUBE_API_UNAVAILABLE' }, 'a watch gives up after watchRetryMs');
  const w2 = s.watch('VirtualMachine', 'default', undefined, { resourceVersion: '5' });
  s.close();
  t.equal(w2.closed, true, 'close ends the watches');
  t.throws(() => s.watch('VirtualMachine'), { code: 'STORE_CLOSED' });
  await t.rejects(s.list('VirtualMachine'), { code: 'STORE_CLOSED' });
  await t.rejects(s.create({ apiVersion: 'vmlet.io/v1alpha1', kind: 'VirtualMachine', metadata: { name: 'a', namespace: 'default' } }), {
    code: 'STORE_CLOSED',
  });
});
