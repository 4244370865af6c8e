import t from 'tap';
import { ValidationError, validateObject, validateVM, validateVMI, type FieldError } from '../../src/api/index.js';

type Obj = Record<string, unknown>;

function baseVMI(): Obj {
  return {
    apiVersion: 'vmlet.io/v1alpha1',
    kind: 'VirtualMachineInstance',
    metadata: { name: 'testvm' },
    spec: {
      domain: {
        memory: { guest: '128Mi' },
        devices: { disks: [{ name: 'root', disk: { bus: 'virtio' } }] },
      },
      volumes: [{ name: 'root', hostDisk: { path: '/var/lib/images/root.img', type: 'Disk' } }],
    },
  };
}

function baseVM(): Obj {
  const vmi = baseVMI();
  return {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachine',
    metadata: { name: 'testvm', namespace: 'prod', labels: { app: 'x' } },
    spec: { runStrategy: 'Always', template: { metadata: { labels: { app: 'x' } }, spec: vmi['spec'] } },
  };
}

/** Deep-sets a dotted path ("spec.domain.cpu.cores"; numeric segments index arrays). */
function set(obj: Obj, path: string, value: unknown): Obj {
  const segs = path.split('.');
  let cur: Record<string, unknown> = obj;
  for (const seg of segs.slice(0, -1)) {
    let next = cur[seg];
    if (next === undefined) {
      next = {};
      cur[seg] = next;
    }
    cur = next as Record<string, unknown>;
  }
  const last = segs[segs.length - 1] as string;
  if (value === undefined) delete cur[last];
  else cur[last] = value;
  return obj;
}

function details(fn: () => unknown): FieldError[] {
  try {
    fn();
  } catch (e) {
    if (e instanceof ValidationError) return [...e.details];
    throw e;
  }
  throw new Error('expected a ValidationError');
}

const tap = t;
type Asserts = Pick<typeof tap, 'ok'>;

/** Asserts that validation fails with (at least) `code` at `field`. */
function refuses(t: Asserts, obj: Obj, field: string, code: string, kind: 'vmi' | 'vm' = 'vmi'): void {
  const ds = details(() => (kind === 'vmi' ? validateVMI(obj) : validateVM(obj)));
  t.ok(
    ds.some((d) => d.field === field && d.code === code),
    `refuses ${field} with ${code} (got ${JSON.stringify(ds)})`,
  );
}

t.test('minimal VMI is defaulted and normalised', async (t) => {
  const input = baseVMI();
  input['apiVersion'] = 'kubevirt.io/v1';
  const before = JSON.stringify(input);
  const out = validateVMI(input);
  t.equal(JSON.stringify(input), before, 'input not modified');
  t.equal(out.apiVersion, 'vmlet.io/v1alpha1');
  t.equal(out.metadata.namespace, 'default');
  t.same(out.spec.domain.cpu, { cores: 1, sockets: 1, threads: 1 });
  t.equal(out.spec.domain.machine.type, 'q35');
  t.equal(out.spec.domain.devices.autoattachSerialConsole, true);
  t.equal(out.spec.domain.devices.autoattachGraphicsDevice, false);
  t.same(out.spec.domain.devices.disks?.[0]?.disk, { bus: 'virtio', readonly: false });
  t.equal(out.spec.terminationGracePeriodSeconds, 180);
  t.same(validateVMI(out), out, 'idempotent');
});

t.test('code defaults: disk type, cdrom, cpu and memory from resources', async (t) => {
  const vmi = baseVMI();
  set(vmi, 'spec.domain.memory', undefined);
  set(vmi, 'spec.domain.resources', { requests: { memory: '256Mi', cpu: '500m' }, limits: { cpu: '2500m', memory: '512Mi' } });
  set(vmi, 'spec.domain.devices.disks', [{ name: 'root' }, { name: 'iso', cdrom: {} }]);
  set(vmi, 'spec.volumes', [
    { name: 'root', emptyDisk: { capacity: '1Gi' } },
    { name: 'iso', hostDisk: { path: '/srv/a.iso', type: 'Disk' } },
  ]);
  const out = validateVMI(vmi);
  t.same(out.spec.domain.cpu, { cores: 3, sockets: 1, threads: 1 }, 'vCPUs from cpu limit, rounded up');
  t.equal(out.spec.domain.memory.guest, '256Mi', 'guest memory from requests');
  t.same(out.spec.domain.devices.disks?.[0]?.disk, { bus: 'virtio', readonly: false });
  t.same(out.spec.domain.devices.disks?.[1]?.cdrom, { bus: 'sata', readonly: true });
  const partial = set(baseVMI(), 'spec.domain.cpu', { cores: 2 });
  t.same(validateVMI(partial).spec.domain.cpu, { cores: 2, sockets: 1, threads: 1 });
});

t.test('unknown and unsupported fields are refused, naming the field', async (t) => {
  refuses(
    t,
    set(baseVMI(), 'spec.domain.devices.interfaces', [{ name: 'default', masquerade: {}, foo: {} }]),
    'spec.domain.devices.interfaces[0].foo',
    'UNKNOWN_FIELD',
  );
  refuses(t, set(baseVMI(), 'spec.networks', [{ name: 'default', pod: { vmNetworkCIDR: '10.0.2.0/24', x: 1 } }]), 'spec.networks[0].pod.x', 'UNKNOWN_FIELD');
  refuses(t, set(baseVMI(), 'spec.domain.cpu.isolateEmulatorThread', true), 'spec.domain.cpu.isolateEmulatorThread', 'UNKNOWN_FIELD');
  t.equal(
    validateVMI(set(baseVMI(), 'spec.domain.cpu.dedicatedCpuPlacement', true)).spec.domain.cpu?.dedicatedCpuPlacement,
    true,
    'dedicatedCpuPlacement is accepted',
  );
  refuses(t, set(baseVMI(), 'spec.domain.firmware.bootloader.bios.useSerial', true), 'spec.domain.firmware.bootloader.bios.useSerial', 'UNKNOWN_FIELD');
  refuses(t, set(baseVMI(), 'spec.affinity', { podAffinity: {} }), 'spec.affinity.podAffinity', 'UNKNOWN_FIELD');
  const placed = validateVMI(
    set(
      set(set(baseVMI(), 'spec.nodeSelector', { disk: 'nvme' }), 'spec.tolerations', [{ key: 'k', operator: 'Exists', effect: 'NoSchedule' }]),
      'spec.affinity',
      {
        nodeAffinity: {
          requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: [{ matchExpressions: [{ key: 'zone', operator: 'In', values: ['a'] }] }] },
        },
      },
    ),
  );
  t.same(placed.spec.nodeSelector, { disk: 'nvme' }, 'node placement fields (cluster mode) are accepted');
  refuses(t, set(baseVMI(), 'spec.tolerations', [{ key: 'k', operator: 'Maybe' }]), 'spec.tolerations[0].operator', 'INVALID_FIELD');
  refuses(t, set(baseVMI(), 'spec.domain.resources.requests.nvidia', '1'), 'spec.domain.resources.requests.nvidia', 'UNKNOWN_FIELD');
  refuses(t, set(baseVMI(), 'metadata.generateName', 'x-'), 'metadata.generateName', 'UNKNOWN_FIELD');
  refuses(t, set(baseVMI(), 'extra', 1), 'extra', 'UNKNOWN_FIELD');
  const v = baseVMI();
  set(v, 'spec.volumes', [{ name: 'root', dataVolume: { name: 'x' } }]);
  refuses(t, v, 'spec.volumes[0].dataVolume', 'UNKNOWN_FIELD');
  refuses(t, set(baseVMI(), 'spec.domain.firmware.kernelBoot.container', { image: 'x' }), 'spec.domain.firmware.kernelBoot.container', 'UNKNOWN_FIELD');
  const e = t.throws(() => validateVMI(set(baseVMI(), 'spec.domain.devices.watchdog', {})));
  t.match(String((e as Error).message), 'spec.domain.devices.watchdog: field not supported');
});

t.test('schema errors: types, enums, required', async (t) => {
  refuses(t, set(baseVMI(), 'spec.domain.cpu.cores', 'two'), 'spec.domain.cpu.cores', 'INVALID_FIELD');
  refuses(t, set(baseVMI(), 'spec.domain.cpu.cores', 0), 'spec.domain.cpu.cores', 'OUT_OF_RANGE');
  refuses(t, set(baseVMI(), 'spec.domain.devices.disks.0.disk.bus', 'usb'), 'spec.domain.devices.disks[0].disk.bus', 'INVALID_FIELD');
  refuses(t, set(baseVMI(), 'spec.volumes.0.hostDisk.type', 'File'), 'spec.volumes[0].hostDisk.type', 'INVALID_FIELD');
  refuses(t, set(baseVMI(), 'spec.domain', undefined), 'spec.domain', 'MISSING_FIELD');
  refuses(t, set(baseVMI(), 'metadata.name', undefined), 'metadata.name', 'MISSING_FIELD');
  refuses(t, set(baseVMI(), 'spec.domain.memory.guest', true), 'spec.domain.memory.guest', 'INVALID_QUANTITY');
  refuses(t, set(baseVMI(), 'spec.domain.firmware.uuid', 'not-a-uuid'), 'spec.domain.firmware.uuid', 'INVALID_FIELD');
  refuses(t, set(baseVMI(), 'metadata.labels', { a: 1 }), 'metadata.labels.a', 'INVALID_FIELD');
});

t.test('apiVersion and kind', async (t) => {
  refuses(t, set(baseVMI(), 'apiVersion', 'kubevirt.io/v1alpha3'), 'apiVersion', 'UNSUPPORTED_API_VERSION');
  refuses(t, set(baseVMI(), 'apiVersion', undefined), 'apiVersion', 'MISSING_FIELD');
  refuses(t, set(baseVMI(), 'kind', 'Pod'), 'kind', 'UNSUPPORTED_KIND');
  t.throws(() => validateVMI('nope'), { code: 'INVALID_FIELD' });
  t.throws(() => validateObject({ apiVersion: 'v1', kind: 'Pod' }), { code: 'UNSUPPORTED_KIND' });
  t.equal(validateObject(baseVMI()).kind, 'VirtualMachineInstance');
  t.equal(validateObject(baseVM()).kind, 'VirtualMachine');
});

t.test('names', async (t) => {
  for (const bad of ['Test', 'a_b', '-a', 'a-', 'a.b', 'x'.repeat(64), '']) {
    refuses(t, set(baseVMI(), 'metadata.name', bad), 'metadata.name', 'INVALID_NAME');
  }
  refuses(t, set(baseVMI(), 'metadata.namespace', 'Kube_System'), 'metadata.namespace', 'INVALID_NAME');
  t.ok(validateVMI(set(baseVMI(), 'metadata.name', 'a'.repeat(63))));
  const v = baseVMI();
  set(v, 'spec.domain.devices.disks.0.name', 'Root');
  set(v, 'spec.volumes.0.name', 'Root');
  refuses(t, v, 'spec.domain.devices.disks[0].name', 'INVALID_NAME');
  refuses(t, set(baseVMI(), 'metadata.labels', { 'bad key!': 'v' }), 'metadata.labels["bad key!"]', 'INVALID_FIELD');
  refuses(t, set(baseVMI(), 'metadata.labels', { 'app.kubernetes.io/name': 'v v' }), 'metadata.labels["app.kubernetes.io/name"]', 'INVALID_FIELD');
  t.ok(validateVMI(set(baseVMI(), 'metadata.labels', { 'app.kubernetes.io/name': 'my-app_1.0', empty: '' })));
  refuses(t, set(baseVMI(), 'metadata.uid', 'abc,def'), 'metadata.uid', 'INVALID_FIELD');
});

t.test('server-set metadata is accepted', async (t) => {
  const v = baseVMI();
  set(v, 'metadata.uid', '1b4e28ba-2fa1-11d2-883f-0016d3cca427');
  set(v, 'metadata.resourceVersion', '42');
  set(v, 'metadata.creationTimestamp', '2024-01-01T00:00:00Z');
  set(v, 'metadata.annotations', { note: 'multi\nline is fine here' });
  set(v, 'status', { phase: 'Running', conditions: [{ type: 'Ready', status: 'True' }], nodeName: 'n1', vmlet: { qemuPid: 3 } });
  const out = validateVMI(v);
  t.equal(out.metadata.uid, '1b4e28ba-2fa1-11d2-883f-0016d3cca427');
  t.equal(out.status?.phase, 'Running');
});

t.test('quantities and memory bounds', async (t) => {
  refuses(t, set(baseVMI(), 'spec.domain.memory.guest', '128MB'), 'spec.domain.memory.guest', 'INVALID_QUANTITY');
  refuses(t, set(baseVMI(), 'spec.domain.memory.guest', '0'), 'spec.domain.memory.guest', 'OUT_OF_RANGE');
  refuses(t, set(baseVMI(), 'spec.domain.memory.guest', '-1Gi'), 'spec.domain.memory.guest', 'OUT_OF_RANGE');
  refuses(t, set(baseVMI(), 'spec.domain.memory.guest', '8Mi'), 'spec.domain.memory.guest', 'OUT_OF_RANGE');
  refuses(t, set(baseVMI(), 'spec.domain.memory.guest', '17Ti'), 'spec.domain.memory.guest', 'OUT_OF_RANGE');
  t.ok(validateVMI(set(baseVMI(), 'spec.domain.memory.guest', '16Mi')));
  t.ok(validateVMI(set(baseVMI(), 'spec.domain.memory.guest', 1073741824)));
  t.ok(validateVMI(set(baseVMI(), 'spec.domain.memory.guest', '1G')));
  refuses(t, set(baseVMI(), 'spec.domain.memory', undefined), 'spec.domain.memory.guest', 'MISSING_FIELD');
  refuses(t, set(baseVMI(), 'spec.domain.resources', { requests: { cpu: 'lots' } }), 'spec.domain.resources.requests.cpu', 'INVALID_QUANTITY');
  refuses(t, set(baseVMI(), 'spec.domain.resources', { requests: { cpu: '0' } }), 'spec.domain.resources.requests.cpu', 'OUT_OF_RANGE');
});

t.test('limits below requests', async (t) => {
  refuses(
    t,
    set(baseVMI(), 'spec.domain.resources', { requests: { cpu: '2' }, limits: { cpu: '1' } }),
    'spec.domain.resources.limits.cpu',
    'INVALID_RESOURCES',
  );
  refuses(
    t,
    set(baseVMI(), 'spec.domain.resources', { requests: { memory: '1Gi' }, limits: { memory: '512Mi' } }),
    'spec.domain.resources.limits.memory',
    'INVALID_RESOURCES',
  );
  refuses(t, set(baseVMI(), 'spec.domain.resources', { limits: { memory: '64Mi' } }), 'spec.domain.memory.guest', 'INVALID_RESOURCES');
  t.ok(validateVMI(set(baseVMI(), 'spec.domain.resources', { requests: { cpu: '1', memory: '128Mi' }, limits: { cpu: '1', memory: '128Mi' } })));
});

t.test('cpu', async (t) => {
  refuses(t, set(baseVMI(), 'spec.domain.cpu', { sockets: 8, cores: 8, threads: 16 }), 'spec.domain.cpu', 'OUT_OF_RANGE');
  t.ok(validateVMI(set(baseVMI(), 'spec.domain.cpu', { sockets: 2, cores: 16, threads: 16 })), '512 is fine');
  for (const model of ['host-passthrough', 'host-model', 'Skylake-Client-IBRS', 'qemu64', 'EPYC-Rome-v2']) {
    t.ok(validateVMI(set(baseVMI(), 'spec.domain.cpu', { model })), model);
  }
  for (const model of ['max,+vmx', 'a b', '-x', 'host\n']) {
    const ds = details(() => validateVMI(set(baseVMI(), 'spec.domain.cpu', { model })));
    t.ok(
      ds.some((d) => d.field === 'spec.domain.cpu.model'),
      JSON.stringify(model),
    );
  }
  refuses(t, set(baseVMI(), 'spec.domain.machine.type', 'q35,accel=kvm'), 'spec.domain.machine.type', 'INVALID_FIELD');
});

t.test('disks and volumes', async (t) => {
  refuses(t, set(baseVMI(), 'spec.volumes', []), 'spec.domain.devices.disks[0].name', 'MISSING_VOLUME');
  const unused = baseVMI();
  (unused['spec'] as { volumes: unknown[] }).volumes.push({ name: 'spare', emptyDisk: { capacity: '1Gi' } });
  refuses(t, unused, 'spec.volumes[1].name', 'UNUSED_VOLUME');
  const dup = baseVMI();
  set(dup, 'spec.domain.devices.disks', [{ name: 'root' }, { name: 'root' }]);
  refuses(t, dup, 'spec.domain.devices.disks[1].name', 'DUPLICATE_NAME');
  const dupv = baseVMI();
  (dupv['spec'] as { volumes: unknown[] }).volumes.push({ name: 'root', emptyDisk: { capacity: '1Gi' } });
  refuses(t, dupv, 'spec.volumes[1].name', 'DUPLICATE_NAME');
  refuses(t, set(baseVMI(), 'spec.domain.devices.disks.0.cdrom', {}), 'spec.domain.devices.disks[0]', 'CONFLICTING_FIELDS');
  refuses(
    t,
    set(baseVMI(), 'spec.domain.devices.disks.0', { name: 'root', cdrom: { bus: 'virtio' } }),
    'spec.domain.devices.disks[0].cdrom.bus',
    'INVALID_FIELD',
  );
  refuses(
    t,
    set(baseVMI(), 'spec.domain.devices.disks.0', { name: 'root', cdrom: { readonly: false } }),
    'spec.domain.devices.disks[0].cdrom.readonly',
    'INVALID_FIELD',
  );
  refuses(
    t,
    set(baseVMI(), 'spec.domain.devices.disks.0', { name: 'root', disk: { bus: 'sata', readonly: true } }),
    'spec.domain.devices.disks[0].disk.readonly',
    'INVALID_FIELD',
  );
  refuses(t, set(baseVMI(), 'spec.domain.devices.disks.0.serial', 'has space'), 'spec.domain.devices.disks[0].serial', 'INVALID_FIELD');
  const boot = baseVMI();
  set(boot, 'spec.domain.devices.disks', [
    { name: 'root', bootOrder: 1 },
    { name: 'b', bootOrder: 1 },
  ]);
  (boot['spec'] as { volumes: unknown[] }).volumes.push({ name: 'b', emptyDisk: { capacity: '1Gi' } });
  refuses(t, boot, 'spec.domain.devices.disks[1].bootOrder', 'INVALID_FIELD');
  refuses(t, set(baseVMI(), 'spec.volumes.0', { name: 'root' }), 'spec.volumes[0]', 'MISSING_FIELD');
  refuses(
    t,
    set(baseVMI(), 'spec.volumes.0', { name: 'root', emptyDisk: { capacity: '1Gi' }, hostDisk: { path: '/a', type: 'Disk' } }),
    'spec.volumes[0]',
    'CONFLICTING_FIELDS',
  );
});

t.test('host paths', async (t) => {
  for (const p of ['relative.img', '/a/../etc/shadow', '/a//b', '/a/./b', '/a/', '/', '/a\u0000b']) {
    const ds = details(() => validateVMI(set(baseVMI(), 'spec.volumes.0.hostDisk.path', p)));
    t.ok(
      ds.some((d) => d.field === 'spec.volumes[0].hostDisk.path' && (d.code === 'INVALID_HOST_PATH' || d.code === 'UNSAFE_VALUE')),
      JSON.stringify(p),
    );
  }
  refuses(t, set(baseVMI(), 'spec.volumes.0.hostDisk.path', '/a/b\nc'), 'spec.volumes[0].hostDisk.path', 'UNSAFE_VALUE');
  t.ok(validateVMI(set(baseVMI(), 'spec.volumes.0.hostDisk.path', '/srv/with,comma,file.driver=null-co.img')), 'commas are fine (escaped later)');
  refuses(t, set(baseVMI(), 'spec.volumes.0.hostDisk.type', 'DiskOrCreate'), 'spec.volumes[0].hostDisk.capacity', 'MISSING_FIELD');
  refuses(t, set(baseVMI(), 'spec.volumes.0.hostDisk.capacity', '1Gi'), 'spec.volumes[0].hostDisk.capacity', 'INVALID_FIELD');
  const ok = set(baseVMI(), 'spec.volumes.0.hostDisk', { path: '/srv/new.img', type: 'DiskOrCreate', capacity: '10Gi' });
  t.ok(validateVMI(ok));
  refuses(t, set(baseVMI(), 'spec.volumes.0', { name: 'root', emptyDisk: { capacity: '0' } }), 'spec.volumes[0].emptyDisk.capacity', 'OUT_OF_RANGE');
  refuses(t, set(baseVMI(), 'spec.volumes.0', { name: 'root', emptyDisk: { capacity: 'big' } }), 'spec.volumes[0].emptyDisk.capacity', 'INVALID_QUANTITY');
  refuses(t, set(baseVMI(), 'spec.volumes.0', { name: 'root', emptyDisk: {} }), 'spec.volumes[0].emptyDisk.capacity', 'MISSING_FIELD');
});

t.test('control characters anywhere in the spec', async (t) => {
  refuses(t, set(baseVMI(), 'spec.domain.firmware.serial', 'abc\ndef'), 'spec.domain.firmware.serial', 'UNSAFE_VALUE');
  refuses(
    t,
    set(baseVMI(), 'spec.domain.firmware.kernelBoot', { kernelArgs: 'a\rb', hostPath: { kernelPath: '/k' } }),
    'spec.domain.firmware.kernelBoot.kernelArgs',
    'UNSAFE_VALUE',
  );
  refuses(t, set(baseVMI(), 'metadata.labels', { a: 'b\tc' }), 'metadata.labels.a', 'UNSAFE_VALUE');
});

t.test('firmware', async (t) => {
  const kb = set(baseVMI(), 'spec.domain.firmware', {
    uuid: '5D307CA9-B3EF-428C-8861-06E72D69F223',
    serial: 'ser,ial',
    kernelBoot: { kernelArgs: 'console=ttyS0,115200 quiet', hostPath: { kernelPath: '/boot/vmlinuz', initrdPath: '/boot/initrd.img' } },
  });
  t.ok(validateVMI(kb));
  refuses(t, set(baseVMI(), 'spec.domain.firmware.kernelBoot', { kernelArgs: 'x' }), 'spec.domain.firmware.kernelBoot.hostPath', 'MISSING_FIELD');
  refuses(
    t,
    set(baseVMI(), 'spec.domain.firmware.kernelBoot', { hostPath: { kernelPath: 'vmlinuz' } }),
    'spec.domain.firmware.kernelBoot.hostPath.kernelPath',
    'INVALID_HOST_PATH',
  );
  refuses(
    t,
    set(baseVMI(), 'spec.domain.firmware.kernelBoot', { hostPath: { kernelPath: '/k', initrdPath: '/i,/etc/shadow' } }),
    'spec.domain.firmware.kernelBoot.hostPath.initrdPath',
    'INVALID_HOST_PATH',
  );
  refuses(
    t,
    set(baseVMI(), 'spec.domain.firmware.bootloader', { efi: { secureBoot: true } }),
    'spec.domain.firmware.bootloader.efi.secureBoot',
    'INVALID_FIELD',
  );
  refuses(t, set(baseVMI(), 'spec.domain.firmware.bootloader', { efi: {}, bios: {} }), 'spec.domain.firmware.bootloader', 'CONFLICTING_FIELDS');
  const efi = validateVMI(set(baseVMI(), 'spec.domain.firmware.bootloader', { efi: {} }));
  t.same(efi.spec.domain.firmware?.bootloader?.efi, { secureBoot: false });
});

t.test('cloud-init', async (t) => {
  const ci = (src: Obj): Obj => {
    const v = baseVMI();
    set(v, 'spec.domain.devices.disks', [{ name: 'root' }, { name: 'ci', cdrom: { bus: 'sata' } }]);
    (v['spec'] as { volumes: unknown[] }).volumes.push({ name: 'ci', cloudInitNoCloud: src });
    return v;
  };
  t.ok(validateVMI(ci({ userData: '#cloud-config\nusers:\n\t- x\n' })), 'newlines and tabs allowed in userData');
  t.ok(validateVMI(ci({ userDataBase64: Buffer.from('#cloud-config\n').toString('base64'), networkData: 'version: 2\n' })));
  refuses(t, ci({ userData: 'a', userDataBase64: 'YQ==' }), 'spec.volumes[1].cloudInitNoCloud.userDataBase64', 'CONFLICTING_FIELDS');
  refuses(t, ci({ userDataBase64: 'not base64!' }), 'spec.volumes[1].cloudInitNoCloud.userDataBase64', 'INVALID_FIELD');
  refuses(t, ci({}), 'spec.volumes[1].cloudInitNoCloud', 'MISSING_FIELD');
  refuses(t, ci({ userData: 'x', secretRef: { name: 's' } }), 'spec.volumes[1].cloudInitNoCloud.secretRef', 'UNKNOWN_FIELD');
});

t.test('VirtualMachine', async (t) => {
  const out = validateVM(baseVM());
  t.equal(out.apiVersion, 'vmlet.io/v1alpha1');
  t.equal(out.spec.runStrategy, 'Always');
  t.equal(out.spec.template.spec.domain.machine.type, 'q35');
  t.same(validateVM(out), out, 'idempotent');

  const running = baseVM();
  set(running, 'spec.runStrategy', undefined);
  set(running, 'spec.running', true);
  const r = validateVM(running);
  t.equal(r.spec.runStrategy, 'Always');
  t.notOk('running' in r.spec, 'running is removed');
  set(running, 'spec.running', false);
  t.equal(validateVM(running).spec.runStrategy, 'Halted');

  refuses(t, set(baseVM(), 'spec.running', true), 'spec.running', 'CONFLICTING_FIELDS', 'vm');
  refuses(t, set(baseVM(), 'spec.runStrategy', undefined), 'spec.runStrategy', 'MISSING_FIELD', 'vm');
  refuses(t, set(baseVM(), 'spec.runStrategy', 'Sometimes'), 'spec.runStrategy', 'INVALID_FIELD', 'vm');
  refuses(t, set(baseVM(), 'spec.template.spec.domain.devices.watchdog', {}), 'spec.template.spec.domain.devices.watchdog', 'UNKNOWN_FIELD', 'vm');
  refuses(t, set(baseVM(), 'spec.template.spec.volumes', []), 'spec.template.spec.domain.devices.disks[0].name', 'MISSING_VOLUME', 'vm');
  refuses(t, set(baseVM(), 'spec.template.metadata.labels', { a: 'b c' }), 'spec.template.metadata.labels.a', 'INVALID_FIELD', 'vm');
  t.ok(validateVM(set(baseVM(), 'spec.template.metadata.creationTimestamp', null)), 'creationTimestamp: null as kubectl writes it');
  refuses(t, set(baseVM(), 'kind', 'VirtualMachineInstance'), 'kind', 'UNSUPPORTED_KIND', 'vm');
});

t.test('ValidationError shape', async (t) => {
  const e = t.throws(() => validateVMI(set(set(baseVMI(), 'spec.hostname', 'x'), 'spec.domain.devices.watchdog', {}))) as ValidationError;
  t.ok(e instanceof ValidationError);
  t.equal(e.code, 'UNKNOWN_FIELD');
  t.equal(e.details.length, 2);
  t.match(e.message, /^VirtualMachineInstance "default\/testvm" is invalid: /);
});

t.test('interfaces and networks: KubeVirt fields accepted and defaulted', async (t) => {
  const v = set(
    set(baseVMI(), 'spec.domain.devices.interfaces', [
      {
        name: 'default',
        masquerade: {},
        macAddress: '02:00:00:00:00:01',
        model: 'e1000',
        ports: [
          { name: 'http', port: 80 },
          { port: 53, protocol: 'UDP' },
        ],
      },
    ]),
    'spec.networks',
    [{ name: 'default', pod: { vmNetworkCIDR: '10.11.0.0/24' } }],
  );
  const out = validateVMI(v);
  t.same(
    out.spec.domain.devices.interfaces?.[0]?.ports,
    [
      { name: 'http', port: 80, protocol: 'TCP' },
      { port: 53, protocol: 'UDP' },
    ],
    'protocol defaults to TCP',
  );
  t.same(out.spec.networks, [{ name: 'default', pod: { vmNetworkCIDR: '10.11.0.0/24' } }]);
  refuses(
    t,
    set(baseVMI(), 'spec.domain.devices.interfaces', [{ name: 'default', bridge: {}, ports: [{ port: 70000 }] }]),
    'spec.domain.devices.interfaces[0].ports[0].port',
    'OUT_OF_RANGE',
  );
  refuses(
    t,
    set(baseVMI(), 'spec.domain.devices.interfaces', [{ name: 'default', bridge: {}, ports: [{ port: 80, protocol: 'SCTP' }] }]),
    'spec.domain.devices.interfaces[0].ports[0].protocol',
    'INVALID_FIELD',
  );
  refuses(t, set(baseVMI(), 'spec.domain.devices.interfaces', [{ masquerade: {} }]), 'spec.domain.devices.interfaces[0].name', 'MISSING_FIELD');
});

t.test('every problem at once: schema errors first, then the semantic checks', async (t) => {
  const v = baseVMI();
  set(v, 'metadata.name', 'Bad_Name');
  set(v, 'spec.domain.bogusField', true);
  set(v, 'spec.domain.memory.guest', 'lots');
  const e = t.throws(() => validateVMI(v)) as ValidationError;
  t.ok(e instanceof ValidationError);
  t.equal(e.code, 'UNKNOWN_FIELD', 'the top-level code is still the first problem (the schema error)');
  t.same(
    e.details.map((d) => [d.field, d.code]),
    [
      ['spec.domain.bogusField', 'UNKNOWN_FIELD'],
      ['metadata.name', 'INVALID_NAME'],
      ['spec.domain.memory.guest', 'INVALID_QUANTITY'],
    ],
  );
  for (const d of e.details) t.ok(e.message.includes(`${d.field}: ${d.message}`), `the message names ${d.field}`);

  const vm = baseVM();
  set(vm, 'metadata.name', 'Bad_Name');
  set(vm, 'spec.template.spec.domain.bogusField', true);
  set(vm, 'spec.template.spec.domain.memory.guest', 'lots');
  set(vm, 'spec.runStrategy', 'Sometimes');
  const vmErr = t.throws(() => validateVM(vm)) as ValidationError;
  t.same(
    vmErr.details.map((d) => `${d.field} ${d.code}`).sort(),
    [
      'metadata.name INVALID_NAME',
      'spec.runStrategy INVALID_FIELD',
      'spec.template.spec.domain.bogusField UNKNOWN_FIELD',
      'spec.template.spec.domain.memory.guest INVALID_QUANTITY',
    ],
    'a VM too',
  );
  t.same(
    vmErr.details.slice(2).map((d) => d.code),
    ['INVALID_NAME', 'INVALID_QUANTITY'],
    'the schema errors come first',
  );
});

t.test('a field the schema refused is not reported again by a semantic check', async (t) => {
  const ds = details(() => validateVMI(set(set(baseVMI(), 'spec.domain.memory.guest', true), 'metadata.name', 'X')));
  t.same(
    ds.filter((d) => d.field === 'spec.domain.memory.guest').map((d) => d.code),
    ['INVALID_QUANTITY'],
    'one problem for memory.guest',
  );
  t.ok(
    ds.some((d) => d.field === 'metadata.name' && d.code === 'INVALID_NAME'),
    'and the name is still checked',
  );
  const labels = details(() => validateVMI(set(baseVMI(), 'metadata.labels', { a: 1 })));
  t.equal(labels.filter((d) => d.field === 'metadata.labels.a').length, 1);
});

t.test('malformed shapes still give field errors, never a crash', async (t) => {
  const shapes: Array<[string, unknown]> = [
    ['spec', 'nope'],
    ['spec.domain', 7],
    ['spec.domain.devices', []],
    ['spec.domain.devices.disks', 'root'],
    ['spec.domain.devices.disks', ['root']],
    ['spec.volumes', [null]],
    ['spec.domain.cpu', 'many'],
    ['spec.domain.resources', { requests: 'x' }],
    ['spec.domain.firmware', { kernelBoot: 'x' }],
    ['metadata', 'x'],
    ['metadata.labels', ['a']],
  ];
  for (const [path, value] of shapes) {
    const v = set(baseVMI(), 'metadata.name', 'Bad_Name');
    set(v, path, value);
    const ds = details(() => validateVMI(v));
    t.ok(
      ds.length > 0 && ds.every((d) => typeof d.field === 'string' && typeof d.code === 'string'),
      `${path} = ${JSON.stringify(value)}: ${ds.map((d) => `${d.field} ${d.code}`).join(', ')}`,
    );
    if (path !== 'metadata')
      t.ok(
        ds.some((d) => d.code === 'INVALID_NAME'),
        `${path}: the bad name is reported too`,
      );
  }
  const vm = set(baseVM(), 'spec.template', 'x');
  t.ok(
    details(() => validateVM(vm)).some((d) => d.field === 'spec.template'),
    'a VM whose template is not an object',
  );
});

t.test('an object without metadata is refused with MISSING_FIELD, not a crash', async (t) => {
  for (const [kind, fn] of [
    ['VirtualMachineInstance', validateVMI],
    ['VirtualMachine', validateVM],
  ] as const) {
    const obj = { apiVersion: 'vmlet.io/v1alpha1', kind, spec: {} };
    const e = t.throws(() => fn(obj), { name: 'ValidationError' }, kind) as ValidationError;
    t.ok(
      e.details.some((d) => d.field === 'metadata' && d.code === 'MISSING_FIELD'),
      `${kind}: metadata is named as missing`,
    );
  }
});
