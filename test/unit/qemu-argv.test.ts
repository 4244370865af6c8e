import t from 'tap';
import { validateVMI, type VirtualMachineInstance } from '../../src/api/index.js';
import { accelFromCmdline, buildArgv, cmdlineHasVmiUid, firmwareUuid, uuidV5, vmiUidSmbios, type ArgvContext } from '../../src/qemu/argv.js';
import { splitOpts } from '../../src/qemu/escape.js';
import { planVolumes, type ResolvedImage } from '../../src/qemu/volumes.js';

const UID = '3f8a2c1e-5b7d-4e9f-a1c2-d3e4f5a6b7c8';
const RUN = '/run/vmlet/vms/3f8a2c1e';
const OVMF = { code: '/usr/share/OVMF/OVMF_CODE_4M.fd', vars: '/usr/share/OVMF/OVMF_VARS_4M.fd' };

function vmi(spec: Record<string, unknown>, name = 'testvm'): VirtualMachineInstance {
  return validateVMI({
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstance',
    metadata: { name, namespace: 'ns1', uid: UID },
    spec,
  });
}

function ctx(extra: Partial<ArgvContext> = {}): ArgvContext {
  return { qemuBinary: '/usr/bin/qemu-system-x86_64', runDir: RUN, accel: 'tcg', ...extra };
}

/** The values that follow each occurrence of `flag`. */
function values(argv: readonly string[], flag: string): string[] {
  return argv.flatMap((a, i) => (a === flag ? [argv[i + 1] ?? ''] : []));
}

const minimal = {
  domain: { memory: { guest: '128Mi' }, devices: { disks: [{ name: 'root' }] } },
  volumes: [{ name: 'root', hostDisk: { path: '/var/lib/vmlet/images/root.img', type: 'Disk' } }],
};

t.test('snapshot: minimal', async (t) => {
  t.matchSnapshot(buildArgv(vmi(minimal), ctx()));
});

t.test('snapshot: minimal on kvm, host-passthrough, 2x2x1, resources', async (t) => {
  const spec = structuredClone(minimal) as { domain: Record<string, unknown> };
  spec.domain['cpu'] = { model: 'host-passthrough', sockets: 2, cores: 2, threads: 1 };
  spec.domain['resources'] = { requests: { memory: '1Gi' } };
  spec.domain['memory'] = { guest: '1G' };
  t.matchSnapshot(buildArgv(vmi(spec), ctx({ accel: 'kvm', sandbox: false })));
});

t.test('snapshot: kernelBoot', async (t) => {
  const spec = {
    terminationGracePeriodSeconds: 30,
    domain: {
      cpu: { cores: 1 },
      memory: { guest: '128Mi' },
      firmware: {
        serial: 'abc-123',
        kernelBoot: {
          kernelArgs: 'console=ttyS0,115200 quiet panic=-1',
          hostPath: { kernelPath: '/srv/guest/vmlinuz', initrdPath: '/srv/guest/initrd.img' },
        },
      },
    },
  };
  const argv = buildArgv(vmi(spec), ctx());
  t.matchSnapshot(argv);
  t.same(values(argv, '-append'), ['console=ttyS0,115200 quiet panic=-1'], 'kernel args are one plain argument');
  t.same(values(argv, '-kernel'), ['/srv/guest/vmlinuz']);
});

t.test('snapshot: disks on each bus, boot order, serials, read-only', async (t) => {
  const spec = {
    domain: {
      memory: { guest: '512Mi' },
      devices: {
        disks: [
          { name: 'vda', disk: { bus: 'virtio' }, bootOrder: 1, serial: 'VDA-1' },
          { name: 'sda', disk: { bus: 'sata' }, bootOrder: 2 },
          { name: 'sdb', disk: { bus: 'scsi', readonly: true }, serial: 'scsi.0' },
          { name: 'sdc', disk: { bus: 'scsi' } },
          { name: 'vdb', disk: { bus: 'virtio', readonly: true } },
        ],
      },
    },
    volumes: [
      { name: 'vda', hostDisk: { path: '/srv/vda.img', type: 'Disk' } },
      { name: 'sda', hostDisk: { path: '/srv/sda.img', type: 'DiskOrCreate', capacity: '2Gi' } },
      { name: 'sdb', hostDisk: { path: '/srv/sdb.img', type: 'Disk' } },
      { name: 'sdc', emptyDisk: { capacity: '1Gi' } },
      { name: 'vdb', emptyDisk: { capacity: '64Mi' } },
    ],
  };
  const argv = buildArgv(vmi(spec), ctx());
  t.matchSnapshot(argv);
  t.same(values(argv, '-boot'), ['strict=on']);
  const devices = values(argv, '-device');
  t.ok(devices.some((d) => d.startsWith('virtio-blk-pci,drive=vol0,id=ua-vda,bootindex=1,serial=VDA-1')));
  t.ok(devices.some((d) => d.startsWith('ide-hd,bus=sata0.0,drive=vol1,id=ua-sda,bootindex=2')));
  t.ok(devices.some((d) => d.startsWith('scsi-hd,bus=scsi0.0,channel=0,scsi-id=0,lun=0,drive=vol2')));
  t.ok(values(argv, '-blockdev').some((b) => b.includes('node-name=vol2,') && b.includes('read-only=on')));
});

t.test('snapshot: cdroms', async (t) => {
  const spec = {
    domain: {
      memory: { guest: '256Mi' },
      devices: { disks: [{ name: 'root' }, { name: 'install', cdrom: {}, bootOrder: 1 }, { name: 'drivers', cdrom: { bus: 'scsi' } }] },
    },
    volumes: [
      { name: 'root', emptyDisk: { capacity: '8Gi' } },
      { name: 'install', hostDisk: { path: '/srv/iso/debian.iso', type: 'Disk' } },
      { name: 'drivers', hostDisk: { path: '/srv/iso/drivers.iso', type: 'Disk' } },
    ],
  };
  const argv = buildArgv(vmi(spec), ctx());
  t.matchSnapshot(argv);
  t.ok(values(argv, '-device').some((d) => d.startsWith('ide-cd,bus=sata0.0,drive=vol1,id=ua-install,bootindex=1')));
  t.ok(values(argv, '-device').some((d) => d.startsWith('scsi-cd,')));
});

t.test('snapshot: efi', async (t) => {
  const spec = { ...structuredClone(minimal), domain: { ...structuredClone(minimal.domain), firmware: { bootloader: { efi: { secureBoot: false } } } } };
  const argv = buildArgv(vmi(spec), ctx({ ovmf: OVMF }));
  t.matchSnapshot(argv);
  t.match(values(argv, '-machine')[0], /,pflash0=pflash0,pflash1=pflash1$/);
  t.throws(() => buildArgv(vmi(spec), ctx()), { code: 'FIRMWARE_UNAVAILABLE' });
});

t.test('snapshot: cloud-init and emptyDisk, graphics, no serial console', async (t) => {
  const spec = {
    domain: {
      memory: { guest: '1Gi' },
      devices: {
        autoattachSerialConsole: false,
        autoattachGraphicsDevice: true,
        disks: [{ name: 'root', bootOrder: 1 }, { name: 'scratch' }, { name: 'cloudinit', disk: { bus: 'virtio' } }],
      },
    },
    volumes: [
      { name: 'root', hostDisk: { path: '/srv/root.img', type: 'Disk' } },
      { name: 'scratch', emptyDisk: { capacity: '10Gi' } },
      { name: 'cloudinit', cloudInitNoCloud: { userData: '#cloud-config\npassword: x\n' } },
    ],
  };
  const argv = buildArgv(vmi(spec), ctx());
  t.matchSnapshot(argv);
  t.notOk(argv.includes('-display'), 'no -display none with graphics');
  t.same(values(argv, '-vnc'), [`unix:${RUN}/vnc.sock`]);
  t.notOk(values(argv, '-chardev').some((c) => c.includes('serial0')));
});

t.test('snapshot: names and values with commas are escaped', async (t) => {
  const evil = '/srv/images/a,file.driver=null-co,b.img';
  const spec = {
    domain: {
      memory: { guest: '128Mi' },
      firmware: { serial: 'serial,uuid=00000000-0000-0000-0000-000000000000' },
      devices: { disks: [{ name: 'root' }] },
    },
    volumes: [{ name: 'root', hostDisk: { path: evil, type: 'Disk' } }],
  };
  const argv = buildArgv(vmi(spec), ctx({ runDir: '/run/vmlet/odd,dir' }));
  t.matchSnapshot(argv);
  const file = values(argv, '-blockdev').find((b) => b.includes('node-name=vol0-file'));
  t.ok(file);
  const parts = splitOpts(file ?? '');
  t.same(parts, ['driver=file', 'node-name=vol0-file', `filename=${evil}`, 'read-only=off', 'discard=unmap'], 'the path stays one option');
  t.notOk(
    parts.some((p) => p.startsWith('file.driver')),
    'no injected option',
  );
  const smbios = splitOpts(values(argv, '-smbios')[0] ?? '');
  t.equal(smbios.filter((p) => p.startsWith('uuid=')).length, 1, 'serial cannot add a second uuid');
  t.ok(smbios.includes('serial=serial,uuid=00000000-0000-0000-0000-000000000000'));
  t.ok(values(argv, '-chardev').some((c) => splitOpts(c).includes('path=/run/vmlet/odd,dir/qmp.sock')));
});

t.test('cpu models', async (t) => {
  const withModel = (model?: string): VirtualMachineInstance => {
    const spec = structuredClone(minimal) as { domain: Record<string, unknown> };
    if (model !== undefined) spec.domain['cpu'] = { model };
    return vmi(spec);
  };
  t.same(values(buildArgv(withModel(), ctx({ accel: 'kvm' })), '-cpu'), ['host'], 'default host-model on kvm');
  t.same(values(buildArgv(withModel(), ctx()), '-cpu'), ['max'], 'default on tcg');
  t.same(values(buildArgv(withModel('host-passthrough'), ctx({ accel: 'kvm' })), '-cpu'), ['host']);
  t.same(values(buildArgv(withModel('host-passthrough'), ctx()), '-cpu'), ['max']);
  t.same(values(buildArgv(withModel('host-model'), ctx()), '-cpu'), ['max']);
  t.same(values(buildArgv(withModel('Skylake-Client'), ctx({ cpuModels: ['Skylake-Client', 'max'] })), '-cpu'), ['Skylake-Client']);
  t.throws(() => buildArgv(withModel('Nehalem'), ctx({ cpuModels: ['max'] })), { code: 'UNSUPPORTED_CPU_MODEL' });
});

t.test('machine types and memory rounding', async (t) => {
  const spec = structuredClone(minimal) as { domain: Record<string, unknown> };
  spec.domain['machine'] = { type: 'pc-q35-7.2' };
  spec.domain['memory'] = { guest: '1G' };
  const argv = buildArgv(vmi(spec), ctx({ machineTypes: ['q35', 'pc-q35-7.2'] }));
  t.match(values(argv, '-machine')[0], /^pc-q35-7\.2,usb=off,/);
  t.same(values(argv, '-accel'), ['tcg,tb-size=64'], 'TCG with a bounded translation cache');
  t.same(values(buildArgv(vmi(spec), ctx({ machineTypes: ['q35', 'pc-q35-7.2'], accel: 'kvm' })), '-accel'), ['kvm'], 'KVM takes no tb-size');
  t.same(values(buildArgv(vmi(spec), ctx({ machineTypes: ['q35', 'pc-q35-7.2'], tcgTbSizeMiB: 100 })), '-accel'), ['tcg,tb-size=100'], 'an explicit size wins');
  t.same(values(argv, '-m'), ['954M'], '1G = 953.67 MiB, rounded up');
  t.throws(() => buildArgv(vmi(spec), ctx({ machineTypes: ['q35'] })), { code: 'UNSUPPORTED_MACHINE' });
});

t.test('identity: uid, uuid, name', async (t) => {
  const argv = buildArgv(vmi(minimal), ctx());
  t.ok(cmdlineHasVmiUid(argv, UID), 'the uid is in the command line');
  t.notOk(cmdlineHasVmiUid(argv, 'other-uid'));
  t.same(values(argv, '-smbios')[1], vmiUidSmbios(UID));
  t.same(values(argv, '-name'), ['guest=ns1_testvm,debug-threads=on']);
  const uuid = firmwareUuid(vmi(minimal));
  t.equal(uuid, uuidV5('ns1/testvm'));
  t.match(uuid, /^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  t.not(firmwareUuid(vmi(minimal, 'other')), uuid, 'differs per name');
  const fixed = vmi({
    ...structuredClone(minimal),
    domain: { ...structuredClone(minimal.domain), firmware: { uuid: '5D307CA9-B3EF-428C-8861-06E72D69F223' } },
  });
  t.same(values(buildArgv(fixed, ctx()), '-uuid'), ['5d307ca9-b3ef-428c-8861-06e72d69f223']);
  const noUid = structuredClone(vmi(minimal));
  delete noUid.metadata.uid;
  t.throws(() => buildArgv(noUid, ctx()), { code: 'MISSING_UID' });
});

t.test('required options are present', async (t) => {
  const argv = buildArgv(vmi(minimal), ctx());
  t.equal(argv[0], '/usr/bin/qemu-system-x86_64');
  for (const flag of ['-S', '-nodefaults', '-no-user-config']) t.ok(argv.includes(flag), flag);
  t.same(values(argv, '-display'), ['none']);
  t.same(values(argv, '-msg'), ['timestamp=on']);
  t.same(values(argv, '-action'), ['reboot=reset,shutdown=poweroff,panic=pause'], 'guest events set at start: no set-action before cont');
  t.ok(values(argv, '-chardev').includes(`socket,id=qmp,path=${RUN}/qmp.sock,server=on,wait=off`));
  t.same(values(argv, '-mon'), ['chardev=qmp,mode=control']);
  t.ok(values(argv, '-chardev').includes(`socket,id=serial0,path=${RUN}/serial.sock,server=on,wait=off`));
  t.ok(values(argv, '-chardev').includes(`socket,id=qga0,path=${RUN}/qga.sock,server=on,wait=off`));
  t.ok(values(argv, '-device').some((d) => d.endsWith('name=org.qemu.guest_agent.0')));
  t.match(values(argv, '-sandbox')[0], /^on,/);
  t.notOk(argv.includes('-boot'), 'no strict boot without bootOrder');
  t.same(buildArgv(vmi(minimal), ctx()), argv, 'deterministic');
});

t.test('ctx.volumes overrides the plan; a missing volume is an error', async (t) => {
  const argv = buildArgv(vmi(minimal), ctx({ volumes: { root: { file: { path: '/elsewhere/root.raw' }, format: 'raw', readOnly: true } } }));
  t.ok(values(argv, '-blockdev').some((b) => b.includes('filename=/elsewhere/root.raw,read-only=on')));
  t.throws(() => buildArgv(vmi(minimal), ctx({ volumes: {} })), { code: 'MISSING_VOLUME' });
});

t.test('planVolumes', async (t) => {
  const spec = {
    domain: {
      memory: { guest: '128Mi' },
      firmware: { bootloader: { efi: {} } },
      devices: { disks: [{ name: 'a' }, { name: 'b' }, { name: 'c' }, { name: 'd', cdrom: {} }] },
    },
    volumes: [
      { name: 'a', hostDisk: { path: '/srv/a.img', type: 'Disk' } },
      { name: 'b', hostDisk: { path: '/srv/b.img', type: 'DiskOrCreate', capacity: '1Gi' } },
      { name: 'c', emptyDisk: { capacity: '512Mi' } },
      {
        name: 'd',
        cloudInitNoCloud: { userDataBase64: Buffer.from('#cloud-config\n').toString('base64'), networkData: 'version: 2\n' },
      },
    ],
  };
  const plan = planVolumes(vmi(spec), RUN, { ovmf: OVMF });
  t.same(plan.volumes, {
    a: { file: { path: '/srv/a.img' }, format: 'raw', readOnly: false },
    b: { file: { path: '/srv/b.img' }, format: 'raw', readOnly: false },
    c: { file: { path: `${RUN}/disk-c.img` }, format: 'raw', readOnly: false, virtualSize: 512 * 1024 * 1024 },
    d: { file: { path: `${RUN}/cloudinit-d.iso` }, format: 'raw', readOnly: false },
  });
  t.match(plan.files, [
    { kind: 'hostDisk', volume: 'a', path: '/srv/a.img', create: false, sizeBytes: null },
    { kind: 'hostDisk', volume: 'b', path: '/srv/b.img', create: true, sizeBytes: 1n << 30n },
    { kind: 'emptyDisk', volume: 'c', path: `${RUN}/disk-c.img`, sizeBytes: 512n << 20n },
    { kind: 'cloudInitIso', volume: 'd', path: `${RUN}/cloudinit-d.iso`, label: 'cidata' },
    { kind: 'efiVars', path: `${RUN}/efi-vars.fd`, template: OVMF.vars },
  ]);
  const ci = plan.files.find((f) => f.kind === 'cloudInitIso');
  t.same(ci?.kind === 'cloudInitIso' ? ci.files.map((f) => [f.name, f.data.toString('utf8')]) : [], [
    ['meta-data', 'instance-id: testvm.ns1\nlocal-hostname: testvm\n'],
    ['user-data', '#cloud-config\n'],
    ['network-data', 'version: 2\n'],
  ]);
  t.throws(() => planVolumes(vmi(spec), RUN), { code: 'FIRMWARE_UNAVAILABLE' });
});

const DIGEST = `sha256:${'ab'.repeat(32)}`;
const IMAGE = { file: { path: '/var/lib/vmlet/images/disks/ab/disk.qcow2' }, format: 'qcow2' as const, virtualSize: 1 << 30, digest: DIGEST };

t.test('planVolumes: a containerDisk gets an overlay in the run dir, or the base itself when read-only', async (t) => {
  const spec = {
    domain: { memory: { guest: '128Mi' }, devices: { disks: [{ name: 'root' }, { name: 'iso', cdrom: {} }] } },
    volumes: [
      { name: 'root', containerDisk: { image: 'quay.io/containerdisks/debian:12' } },
      { name: 'iso', containerDisk: { image: 'tools:1' } },
    ],
  };
  const plan = planVolumes(vmi(spec), RUN, { images: { root: IMAGE, iso: { ...IMAGE, format: 'raw' } } });
  t.same(plan.volumes, {
    root: {
      file: { path: `${RUN}/overlay-root.qcow2` },
      format: 'qcow2',
      readOnly: false,
      backing: { file: IMAGE.file, format: 'qcow2' },
      imageDigest: DIGEST,
      virtualSize: 1 << 30,
    },
    iso: { file: IMAGE.file, format: 'raw', readOnly: true, imageDigest: DIGEST, virtualSize: 1 << 30, byFd: true },
  });
  t.same(plan.files, [{ kind: 'overlay', volume: 'root', path: `${RUN}/overlay-root.qcow2`, base: IMAGE }], 'one overlay, none for the read-only cdrom');
  t.throws(() => planVolumes(vmi(spec), RUN), { code: 'MISSING_VOLUME' }, 'a containerDisk needs its resolved image');
});

t.test('planVolumes: a claim is its disk by fd; an ephemeral claim the base of an overlay; neither without a cluster', async (t) => {
  const spec = {
    domain: { memory: { guest: '128Mi' }, devices: { disks: [{ name: 'data' }, { name: 'seed' }, { name: 'ro' }] } },
    volumes: [
      { name: 'data', persistentVolumeClaim: { claimName: 'c1' } },
      { name: 'seed', ephemeral: { persistentVolumeClaim: { claimName: 'c2' } } },
      { name: 'ro', persistentVolumeClaim: { claimName: 'c3', readOnly: true } },
    ],
  };
  const disk = (p: string): ResolvedImage => ({ file: { path: p }, format: 'raw', virtualSize: 1 << 20, digest: '' });
  const plan = planVolumes(vmi(spec), RUN, { claims: { data: disk('/proc/9/root/d'), seed: disk('/proc/9/root/s'), ro: disk('/proc/9/root/r') } });
  t.same(plan.volumes, {
    data: { file: { path: '/proc/9/root/d' }, format: 'raw', readOnly: false, virtualSize: 1 << 20, byFd: true },
    seed: {
      file: { path: `${RUN}/overlay-seed.qcow2` },
      format: 'qcow2',
      readOnly: false,
      backing: { file: { path: '/proc/9/root/s' }, format: 'raw' },
      virtualSize: 1 << 20,
    },
    ro: { file: { path: '/proc/9/root/r' }, format: 'raw', readOnly: true, virtualSize: 1 << 20, byFd: true },
  });
  t.same(
    plan.files.map((f) => [f.kind, f.path]),
    [['overlay', `${RUN}/overlay-seed.qcow2`]],
  );
  t.throws(() => planVolumes(vmi(spec), RUN), { code: 'VOLUME_NEEDS_CLUSTER' });
});

t.test('argv: an overlay names its base node explicitly, and images passed by fd are fd sets', async (t) => {
  const spec = {
    domain: {
      memory: { guest: '128Mi' },
      devices: {
        disks: [
          { name: 'root', bootOrder: 1 },
          { name: 'iso', cdrom: { bus: 'sata' } },
        ],
      },
    },
    volumes: [
      { name: 'root', containerDisk: { image: 'debian:12' } },
      { name: 'iso', containerDisk: { image: 'tools:1' } },
    ],
  };
  const volumes = {
    root: { file: { path: `${RUN}/overlay-root.qcow2` }, format: 'qcow2' as const, readOnly: false, backing: { file: { fd: 3 }, format: 'qcow2' as const } },
    iso: { file: { fd: 4 }, format: 'raw' as const, readOnly: true, imageDigest: DIGEST },
  };
  const argv = buildArgv(vmi(spec), ctx({ volumes }));
  t.same(values(argv, '-add-fd'), ['fd=3,set=1', 'fd=4,set=2'], 'one fd set per inherited fd');
  const blockdevs = values(argv, '-blockdev');
  t.same(blockdevs.slice(0, 4), [
    'driver=file,node-name=vol0-base-file,filename=/dev/fdset/1,read-only=on',
    'driver=qcow2,node-name=vol0-base,file=vol0-base-file,read-only=on',
    `driver=file,node-name=vol0-file,filename=${RUN}/overlay-root.qcow2,read-only=off,discard=unmap`,
    'driver=qcow2,node-name=vol0,file=vol0-file,read-only=off,discard=unmap,backing=vol0-base',
  ]);
  t.ok(blockdevs.includes('driver=raw,node-name=vol1,file=vol1-file,read-only=on'), 'the read-only image is attached as it is, raw');
  t.ok(argv.indexOf('-add-fd') < argv.indexOf('-blockdev'), '-add-fd comes before the block nodes that use it');
});

t.test('argv: a block device is opened with host_device, by path or by fd', async (t) => {
  const spec = {
    domain: { memory: { guest: '128Mi' }, devices: { disks: [{ name: 'a' }, { name: 'b' }] } },
    volumes: ['a', 'b'].map((n) => ({ name: n, hostDisk: { path: `/dev/${n}`, type: 'Disk' } })),
  };
  const volumes = {
    a: { file: { path: '/dev/loop7', device: true as const }, format: 'raw' as const, readOnly: false },
    b: { file: { fd: 3, device: true as const }, format: 'raw' as const, readOnly: false },
  };
  const blockdevs = values(buildArgv(vmi(spec), ctx({ volumes })), '-blockdev');
  t.ok(blockdevs.includes('driver=host_device,node-name=vol0-file,filename=/dev/loop7,read-only=off,discard=unmap'));
  t.ok(blockdevs.includes('driver=host_device,node-name=vol1-file,filename=/dev/fdset/1,read-only=off,discard=unmap'));
});

t.test('argv: cache, io and shareable', async (t) => {
  const spec = {
    domain: {
      memory: { guest: '128Mi' },
      devices: {
        disks: [
          { name: 'a', cache: 'none', io: 'native', shareable: true },
          { name: 'b', cache: 'writethrough', io: 'threads' },
          { name: 'c', cache: 'writeback' },
        ],
      },
    },
    volumes: ['a', 'b', 'c'].map((n) => ({ name: n, hostDisk: { path: `/srv/${n}.img`, type: 'Disk' } })),
  };
  const argv = buildArgv(vmi(spec), ctx());
  const blockdevs = values(argv, '-blockdev');
  t.ok(
    blockdevs.includes('driver=file,node-name=vol0-file,filename=/srv/a.img,read-only=off,aio=native,cache.direct=on,discard=unmap'),
    'none + native: O_DIRECT, Linux AIO',
  );
  t.ok(blockdevs.includes('driver=file,node-name=vol1-file,filename=/srv/b.img,read-only=off,aio=threads,discard=unmap'));
  const devices = values(argv, '-device').filter((d) => d.startsWith('virtio-blk-pci'));
  t.match(devices[0], /share-rw=on/, 'shareable: share-rw');
  t.match(devices[1], /write-cache=off/, 'writethrough: the device reports no write cache');
  t.notMatch(devices[2], /write-cache|share-rw/, "writeback is QEMU's default");
});

t.test('validation: io native needs cache none; containerDisk needs an image reference', async (t) => {
  const disk = (extra: Record<string, unknown>): Record<string, unknown> => ({
    domain: { memory: { guest: '128Mi' }, devices: { disks: [{ name: 'a', ...extra }] } },
    volumes: [{ name: 'a', hostDisk: { path: '/srv/a.img', type: 'Disk' } }],
  });
  t.throws(() => vmi(disk({ io: 'native' })), { code: 'INVALID_FIELD', message: /cache: none/ });
  t.throws(() => vmi(disk({ cache: 'unsafe' })), { code: 'INVALID_FIELD' });
  t.throws(() => vmi(disk({ lun: {} })), { code: 'UNKNOWN_FIELD' }, 'a KubeVirt field vmlet does not implement is refused by name');
  const cd = (image: string): Record<string, unknown> => ({
    domain: { memory: { guest: '128Mi' }, devices: { disks: [{ name: 'a' }] } },
    volumes: [{ name: 'a', containerDisk: { image } }],
  });
  t.ok(vmi(cd('quay.io/containerdisks/debian:12')));
  t.ok(vmi(cd(`localhost:5000/x/y@${DIGEST}`)));
  t.throws(() => vmi(cd('Debian:12')), { code: 'IMAGE_NAME_INVALID' });
  t.throws(() => vmi(cd('a b')), { code: 'IMAGE_NAME_INVALID' });
  t.throws(() => vmi({ ...cd('x'), volumes: [{ name: 'a', containerDisk: { image: 'x', path: '/disk' } }] }), { code: 'UNKNOWN_FIELD' });
});

t.test('the accelerator is read back from a command line', async (t) => {
  t.equal(accelFromCmdline(buildArgv(vmi(minimal), ctx())), 'tcg');
  t.equal(accelFromCmdline(buildArgv(vmi(minimal), ctx({ accel: 'kvm' }))), 'kvm');
  t.equal(accelFromCmdline(['qemu', '-machine', 'q35,accel=kvm,usb=off']), 'kvm', 'the older -machine accel= form');
  t.equal(accelFromCmdline(['qemu', '-accel', 'hvf']), undefined);
  t.equal(accelFromCmdline(['qemu', '-name', 'accel=kvm']), undefined, 'only -accel and -machine count');
});
