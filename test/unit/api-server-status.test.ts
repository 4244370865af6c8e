import t from 'tap';
import { decodeBody, parseRequestUrl } from '../../src/daemon/api-server.js';
import { httpStatusFor, statusFromError } from '../../src/daemon/status.js';
import { VmletError } from '../../src/errors.js';

t.test('code → HTTP status table', async (t) => {
  const want: Record<string, number> = {
    NOT_FOUND: 404,
    STORE_NOT_FOUND: 404,
    ALREADY_EXISTS: 409,
    STORE_ALREADY_EXISTS: 409,
    STORE_CONFLICT: 409,
    INVALID_FIELD: 422,
    UNKNOWN_FIELD: 422,
    INVALID_QUANTITY: 422,
    INVALID_NAME: 422,
    MISSING_VOLUME: 422,
    MANIFEST_PARSE: 422,
    UNSUPPORTED_API_VERSION: 422,
    UNSUPPORTED_KIND: 422,
    VALIDATION_FAILED: 422,
    BAD_REQUEST: 400,
    INVALID_PATH: 400,
    BODY_TOO_LARGE: 413,
    METHOD_NOT_ALLOWED: 405,
    CONSOLE_BUSY: 409,
    VMI_NOT_RUNNING: 409,
    QMP_TIMEOUT: 504,
    OUT_OF_RANGE: 422,
    CONFLICTING_FIELDS: 422,
    STORE_INVALID_KEY: 400,
    STORE_WATCH_OVERFLOW: 410,
    STORE_CLOSED: 503,
    QMP_ERROR: 502,
    QMP_DISCONNECTED: 502,
    QMP_SOMETHING_TIMEOUT: 504,
    NEVER_HEARD_OF: 500,
  };
  for (const [code, http] of Object.entries(want)) t.equal(httpStatusFor(code), http, code);
});

t.test('Status rendering', async (t) => {
  const e = Object.assign(new VmletError('VALIDATION_FAILED', 'two problems\nfound'), {
    details: [
      { field: 'spec.domain.memory.guest', message: 'not a quantity', reason: 'INVALID_QUANTITY' },
      { message: 'no disks' },
      { field: 'spec.x', code: 'UNKNOWN_FIELD', message: 'field not supported' },
      'junk',
    ],
  });
  t.same(statusFromError(e, { kind: 'virtualmachines', name: 'vm1' }), {
    kind: 'Status',
    apiVersion: 'v1',
    metadata: {},
    status: 'Failure',
    message: 'two problems found',
    reason: 'VALIDATION_FAILED',
    code: 422,
    details: {
      name: 'vm1',
      kind: 'virtualmachines',
      causes: [
        { field: 'spec.domain.memory.guest', message: 'not a quantity', reason: 'INVALID_QUANTITY' },
        { message: 'no disks', reason: 'VALIDATION_FAILED' },
        { field: 'spec.x', message: 'field not supported', reason: 'UNKNOWN_FIELD' },
      ],
    },
  });
  t.same(statusFromError(new TypeError('x is undefined')), {
    kind: 'Status',
    apiVersion: 'v1',
    metadata: {},
    status: 'Failure',
    message: 'internal error',
    reason: 'INTERNAL',
    code: 500,
  });
  t.equal(
    statusFromError(new VmletError('STORE_NOT_FOUND', '/var/lib/vmlet/x.json: ENOENT'), { kind: 'virtualmachineinstances', name: 'x' }).message,
    'virtualmachineinstances "x" not found',
  );
});

t.test('URL parsing', async (t) => {
  t.match(parseRequestUrl('/apis/vmlet.io/v1alpha1/namespaces/ns-1/virtualmachines/vm-a/start?x=1').route, {
    type: 'vmAction',
    action: 'start',
    ref: { namespace: 'ns-1', name: 'vm-a', kind: 'VirtualMachine' },
  });
  t.match(parseRequestUrl('/apis/subresources.vmlet.io/v1alpha1/namespaces/d/virtualmachineinstances/a/console').route, { type: 'console' });
  t.match(parseRequestUrl('/api/v1/namespaces/d/events').route, { type: 'events', namespace: 'd' });
  t.throws(() => parseRequestUrl('/apis/vmlet.io/v1alpha1/namespaces/d/virtualmachineinstances/a%2F..'), { code: 'INVALID_PATH' });
  t.throws(() => parseRequestUrl('/apis/vmlet.io/v1alpha1/namespaces/-d/virtualmachineinstances'), { code: 'INVALID_PATH' });
  t.throws(() => parseRequestUrl('http://evil/healthz'), { code: 'NOT_FOUND' });
  t.match(parseRequestUrl('/images').route, { type: 'images' });
  t.match(
    parseRequestUrl(`/images/${encodeURIComponent('quay.io/containerdisks/debian:12')}`).route,
    { type: 'image', image: 'quay.io/containerdisks/debian:12' },
    'a reference is one encoded segment',
  );
  t.throws(() => parseRequestUrl('/images/a/b'), { code: 'NOT_FOUND' });
});

t.test('body decoding', async (t) => {
  t.same(decodeBody(Buffer.from('{"a":1}'), 'application/json; charset=utf-8'), { a: 1 });
  t.same(decodeBody(Buffer.from('a: 1\n'), 'application/yaml'), { a: 1 });
  t.throws(() => decodeBody(Buffer.from('a: [1\n'), 'application/yaml'), { code: 'BAD_REQUEST' });
  // A billion-laughs style alias bomb is refused, not expanded.
  const bomb = [
    'a: &a ["x","x","x","x","x","x","x","x","x"]',
    ...Array.from(
      { length: 8 },
      (_, i) =>
        `${String.fromCharCode(98 + i)}: &${String.fromCharCode(98 + i)} [${Array(9)
          .fill(`*${String.fromCharCode(97 + i)}`)
          .join(',')}]`,
    ),
  ].join('\n');
  t.throws(() => decodeBody(Buffer.from(bomb), 'application/yaml'), { code: 'BAD_REQUEST' });
  t.throws(() => decodeBody(Buffer.from('x'), 'application/xml'), { code: 'UNSUPPORTED_MEDIA_TYPE' });
});
