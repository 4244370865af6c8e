// reviewAdmission: the webhook's decisions on real manifests agree with validateObject, VMI specs stay fixed, and malformed reviews are refused without a crash.
import t from 'tap';
import { ValidationError, validateObject, type FieldError } from '../../src/api/index.js';
import { formatFieldErrors, firstDifference, reviewAdmission } from '../../src/controller/admission.js';

type Obj = Record<string, unknown>;

function vmi(): Obj {
  return {
    apiVersion: 'vmlet.io/v1alpha1',
    kind: 'VirtualMachineInstance',
    metadata: { name: 'web-1', namespace: 'h3-adm', labels: { app: 'web' } },
    spec: {
      domain: {
        cpu: { cores: 2 },
        memory: { guest: '512Mi' },
        devices: {
          disks: [
            { name: 'root', disk: { bus: 'virtio' } },
            { name: 'cidata', cdrom: { bus: 'sata', readonly: true } },
          ],
        },
      },
      volumes: [
        { name: 'root', hostDisk: { path: '/var/lib/vmlet/images/web-1.qcow2', type: 'DiskOrCreate', capacity: '10Gi' } },
        { name: 'cidata', cloudInitNoCloud: { userData: '#cloud-config\npassword: x\n' } },
      ],
    },
  };
}

function vm(): Obj {
  const i = vmi();
  return {
    apiVersion: 'vmlet.io/v1alpha1',
    kind: 'VirtualMachine',
    metadata: { name: 'web', namespace: 'h3-adm' },
    spec: { runStrategy: 'Always', template: { metadata: { labels: { app: 'web' } }, spec: i['spec'] } },
  };
}

/** What the API server adds to an object before admission. */
function asServerSees(o: Obj): Obj {
  const c = structuredClone(o);
  const meta = c['metadata'] as Obj;
  Object.assign(meta, {
    uid: '6b1f3c39-0c0c-4d0f-9a36-2a1f0c1d2e3f',
    generateName: 'web-',
    creationTimestamp: '2025-06-01T10:00:00Z',
    generation: 1,
    managedFields: [
      { manager: 'kubectl-client-side-apply', operation: 'Update', apiVersion: 'vmlet.io/v1alpha1', fieldsType: 'FieldsV1', fieldsV1: { 'f:spec': {} } },
    ],
    annotations: { 'kubectl.kubernetes.io/last-applied-configuration': '{"x":1}\n' },
  });
  return c;
}

function reviewOf(op: string, object: Obj | undefined, oldObject?: Obj, extra: Obj = {}): Obj {
  const kind = String(object?.['kind'] ?? oldObject?.['kind']);
  const [group, version] = String(object?.['apiVersion'] ?? oldObject?.['apiVersion']).split('/');
  return {
    apiVersion: 'admission.k8s.io/v1',
    kind: 'AdmissionReview',
    request: {
      uid: 'req-1',
      kind: { group, version, kind },
      resource: { group, version, resource: kind === 'VirtualMachine' ? 'virtualmachines' : 'virtualmachineinstances' },
      operation: op,
      namespace: 'h3-adm',
      name: 'web-1',
      userInfo: { username: 'admin' },
      ...(object === undefined ? {} : { object: asServerSees(object) }),
      ...(oldObject === undefined ? {} : { oldObject: asServerSees(oldObject) }),
      ...extra,
    },
  };
}

function standalone(o: Obj): FieldError[] {
  try {
    validateObject(o);
  } catch (e) {
    if (e instanceof ValidationError) return [...e.details];
    throw e;
  }
  return [];
}

function set(o: Obj, path: string, value: unknown): Obj {
  const segs = path.split('.');
  let cur = o;
  for (const s of segs.slice(0, -1)) cur = cur[s] as Obj;
  cur[segs[segs.length - 1] as string] = value;
  return o;
}

t.test('good manifests are allowed, vmlet.io and kubevirt.io alike', async (t) => {
  for (const [name, o] of [
    ['VMI', vmi()],
    ['VM', vm()],
    ['kubevirt.io/v1 VMI', { ...vmi(), apiVersion: 'kubevirt.io/v1' }],
    ['kubevirt.io/v1 VM', { ...vm(), apiVersion: 'kubevirt.io/v1' }],
  ] as const) {
    t.same(standalone(o), [], `${name}: standalone accepts it`);
    const out = reviewAdmission(reviewOf('CREATE', o));
    t.same(out, { apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', response: { uid: 'req-1', allowed: true } }, `${name}: allowed`);
  }
});

t.test('each class of bad manifest is refused with the code and field standalone gives', async (t) => {
  const cases: Array<[string, Obj, string, string]> = [
    ['unknown field', set(vmi(), 'spec.domain.devices.gpus', [{ name: 'gpu1', deviceName: 'nvidia.com/GA102' }]), 'UNKNOWN_FIELD', 'spec.domain.devices.gpus'],
    ['impossible memory size', set(vmi(), 'spec.domain.memory', { guest: '64Ti' }), 'OUT_OF_RANGE', 'spec.domain.memory.guest'],
    ['tiny memory size', set(vmi(), 'spec.domain.memory', { guest: '1Ki' }), 'OUT_OF_RANGE', 'spec.domain.memory.guest'],
    ['malformed quantity', set(vmi(), 'spec.domain.memory', { guest: '12Gx' }), 'INVALID_QUANTITY', 'spec.domain.memory.guest'],
    ['comma in a disk name', vmiWithDiskName('root,file=/etc/shadow'), 'INVALID_NAME', 'spec.domain.devices.disks[0].name'],
    [
      'comma in an initrd path',
      set(vmi(), 'spec.domain.firmware', { kernelBoot: { hostPath: { kernelPath: '/boot/vmlinuz', initrdPath: '/boot/initrd,if=none' } } }),
      'INVALID_HOST_PATH',
      'spec.domain.firmware.kernelBoot.hostPath.initrdPath',
    ],
    ['newline in a host path', set(vmi(), 'spec.volumes.0.hostDisk.path', '/var/lib/x\n.img'), 'UNSAFE_VALUE', 'spec.volumes[0].hostDisk.path'],
    ['VM without runStrategy', set(vm(), 'spec.runStrategy', undefined), 'MISSING_FIELD', 'spec.runStrategy'],
    ['VM template memory too big', set(vm(), 'spec.template.spec.domain.memory', { guest: '17Ti' }), 'OUT_OF_RANGE', 'spec.template.spec.domain.memory.guest'],
  ];
  for (const [name, o, code, field] of cases) {
    if (name === 'VM without runStrategy') delete (o['spec'] as Obj)['runStrategy'];
    const want = standalone(o);
    t.ok(
      want.some((d) => d.code === code && d.field === field),
      `${name}: standalone says ${code} at ${field}`,
    );
    const res = reviewAdmission(reviewOf('CREATE', o)).response;
    t.equal(res.allowed, false, `${name}: refused`);
    t.equal(res.status?.code, 422, `${name}: 422`);
    t.equal(res.status?.reason, want[0]?.code, `${name}: reason is standalone's code`);
    t.ok(res.status?.message.startsWith(`${code}: `), `${name}: message starts with the code`);
    for (const d of want) t.ok(res.status?.message.includes(`${d.field}: ${d.message}`), `${name}: message names ${d.field}`);
    t.equal(res.status?.message, formatFieldErrors(want), `${name}: message is standalone's details`);
  }
});

function vmiWithDiskName(n: string): Obj {
  const o = vmi();
  const spec = o['spec'] as { domain: { devices: { disks: Obj[] } }; volumes: Obj[] };
  (spec.domain.devices.disks[0] as Obj)['name'] = n;
  (spec.volumes[0] as Obj)['name'] = n;
  return o;
}

t.test('a refusal of several fields lists each with its own code', async (t) => {
  const o = set(vmi(), 'spec.domain.memory', { guest: '12Gx' });
  set(o, 'spec.domain.foo', true);
  const res = reviewAdmission(reviewOf('CREATE', o)).response;
  t.equal(res.status?.reason, 'UNKNOWN_FIELD');
  t.match(res.status?.message, /^UNKNOWN_FIELD: spec\.domain\.foo: field not supported; INVALID_QUANTITY: spec\.domain\.memory\.guest: /);
});

t.test('UPDATE of a VMI: spec is fixed, metadata and status are not', async (t) => {
  const old = vmi();
  const relabeled = structuredClone(old);
  (relabeled['metadata'] as Obj)['labels'] = { app: 'web', tier: 'front' };
  (relabeled['metadata'] as Obj)['finalizers'] = ['vmlet.io/vmi-cleanup'];
  relabeled['status'] = { phase: 'Running' };
  t.equal(reviewAdmission(reviewOf('UPDATE', relabeled, old)).response.allowed, true, 'labels, finalizers and status may change');

  const grown = set(structuredClone(old), 'spec.domain.memory', { guest: '1Gi' });
  const res = reviewAdmission(reviewOf('UPDATE', grown, old)).response;
  t.equal(res.allowed, false);
  t.equal(res.status?.reason, 'VMI_SPEC_IMMUTABLE');
  t.match(res.status?.message, /^VMI_SPEC_IMMUTABLE: spec\.domain\.memory\.guest: /, 'names the first changed field');

  // the API server fills CRD defaults in; a spec equal but for defaults is the same spec
  const defaulted = structuredClone(old);
  set(defaulted, 'spec.domain.machine', { type: 'q35' });
  set(defaulted, 'spec.domain.cpu', { cores: 2, sockets: 1, threads: 1 });
  t.equal(reviewAdmission(reviewOf('UPDATE', defaulted, old)).response.allowed, true, 'defaults written out are no change');

  const bad = set(structuredClone(old), 'spec.domain.memory', { guest: 'lots' });
  t.equal(reviewAdmission(reviewOf('UPDATE', bad, old)).response.status?.reason, 'INVALID_QUANTITY', 'an invalid new spec gets its validation code');

  const deleting = structuredClone(old);
  (deleting['metadata'] as Obj)['deletionTimestamp'] = '2025-06-01T11:00:00Z';
  const changedWhileDeleting = set(structuredClone(deleting), 'spec.domain.memory', { guest: '1Gi' });
  t.equal(reviewAdmission(reviewOf('UPDATE', changedWhileDeleting, deleting)).response.allowed, true, 'an object being deleted is not held up');

  t.equal(reviewAdmission(reviewOf('UPDATE', grown, old, { subResource: 'status' })).response.allowed, true, 'status subresource writes pass');
});

t.test('UPDATE of a VM may change its spec, if valid', async (t) => {
  const old = vm();
  const next = set(structuredClone(old), 'spec.runStrategy', 'Halted');
  t.equal(reviewAdmission(reviewOf('UPDATE', next, old)).response.allowed, true);
  const bad = set(structuredClone(old), 'spec.runStrategy', 'Sometimes');
  const res = reviewAdmission(reviewOf('UPDATE', bad, old)).response;
  t.equal(res.status?.reason, 'INVALID_FIELD');
  t.match(res.status?.message, /spec\.runStrategy: must be one of/);
  // an old object that no longer validates does not block a metadata-only update
  const stale = set(vm(), 'spec.template.spec.domain.memory', { guest: '1Ki' });
  const relabeled = structuredClone(stale);
  (relabeled['metadata'] as Obj)['labels'] = { x: 'y' };
  t.equal(reviewAdmission(reviewOf('UPDATE', relabeled, stale)).response.allowed, true);
});

t.test('DELETE, CONNECT and other kinds or versions are allowed unchecked', async (t) => {
  const bad = set(vmi(), 'spec.domain.memory', { guest: 'nope' });
  t.equal(reviewAdmission(reviewOf('DELETE', undefined, bad)).response.allowed, true, 'DELETE');
  t.equal(reviewAdmission(reviewOf('CONNECT', bad)).response.allowed, true, 'CONNECT');
  const pod = reviewOf('CREATE', { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'p' } });
  t.same(reviewAdmission(pod).response, { uid: 'req-1', allowed: true }, 'a Pod');
  const other = reviewOf('CREATE', { ...bad, apiVersion: 'example.com/v1' });
  t.equal(reviewAdmission(other).response.allowed, true, 'a VirtualMachineInstance of another group');
});

t.test('malformed reviews are refused with WEBHOOK_BAD_REVIEW, never a crash', async (t) => {
  const good = reviewOf('CREATE', vmi());
  const cases: Array<[string, unknown, string]> = [
    ['null', null, ''],
    ['a string', 'hello', ''],
    ['an array', [good], ''],
    ['wrong apiVersion', { ...good, apiVersion: 'admission.k8s.io/v1beta1' }, 'req-1'],
    ['wrong kind', { ...good, kind: 'Review' }, 'req-1'],
    ['no request', { apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview' }, ''],
    ['no uid', { ...good, request: { ...(good['request'] as Obj), uid: undefined } }, ''],
    ['no operation', { ...good, request: { ...(good['request'] as Obj), operation: 7 } }, 'req-1'],
    ['CREATE without object', { ...good, request: { ...(good['request'] as Obj), object: 'x' } }, 'req-1'],
    ['UPDATE without oldObject', { ...good, request: { ...(good['request'] as Obj), operation: 'UPDATE' } }, 'req-1'],
  ];
  for (const [name, input, uid] of cases) {
    const out = reviewAdmission(input);
    t.equal(out.apiVersion, 'admission.k8s.io/v1', `${name}: still a review`);
    t.equal(out.response.uid, uid, `${name}: uid`);
    t.equal(out.response.allowed, false, `${name}: refused`);
    t.equal(out.response.status?.reason, 'WEBHOOK_BAD_REVIEW', `${name}: code`);
    t.match(out.response.status?.message, /^WEBHOOK_BAD_REVIEW: \S/, `${name}: a message`);
  }
  const weird = reviewOf('CREATE', vmi());
  ((weird['request'] as Obj)['object'] as Obj)['spec'] = { domain: 'not an object' };
  const res = reviewAdmission(weird).response;
  t.equal(res.allowed, false, 'an odd spec shape is a validation refusal, not a crash');
  t.equal(res.status?.reason, 'INVALID_FIELD');
});

t.test('firstDifference names the first differing path', async (t) => {
  t.equal(firstDifference({ a: 1 }, { a: 1 }, 'spec'), undefined);
  t.equal(firstDifference({ a: { b: [1, 2] } }, { a: { b: [1, 3] } }, 'spec'), 'spec.a.b[1]');
  t.equal(firstDifference({ a: [1] }, { a: [1, 2] }, 'spec'), 'spec.a');
  t.equal(firstDifference({ a: 1 }, { b: 1 }, 'spec'), 'spec.a');
});
