// Disks in cluster mode on the real node: a containerDisk pulled by the kubelet as a container of the launcher pod and handed to QEMU by fd under an overlay in the pod's emptyDir, a persistentVolumeClaim on a local PersistentVolume whose data outlives a VM restart, and the same claim as an ephemeral volume whose writes do not.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { claimDiskBytes } from '../../src/api/pod-volumes.js';
import { testCluster } from '../support/cluster.js';
import { importContainerDiskImage, containerDiskImageSkipReason } from '../support/cluster/container-disk.js';
import { waitFor } from '../support/cluster/exec.js';
import { GROUP, kubeEnv, type KubeEnv, type Obj } from '../support/cluster/kube-env.js';
import { testDiskImage } from '../support/container-disk.js';
import { guestImage, guestKernelArgs, READY_MARKER } from '../support/guest.js';
import { skipWith } from '../support/skip.js';

const BASE_MARKER = 'VMLET-BASE-DISK';
const DISK_IMAGE = 'localhost/vmlet-test/disk:1';

type Volume = Record<string, unknown> & { name: string };

async function guestVm(name: string, ns: string, volume: Volume): Promise<Record<string, unknown>> {
  const img = await guestImage();
  return {
    apiVersion: 'vmlet.io/v1alpha1',
    kind: 'VirtualMachine',
    metadata: { name, namespace: ns },
    spec: {
      runStrategy: 'Always',
      template: {
        spec: {
          terminationGracePeriodSeconds: 5,
          domain: {
            cpu: { cores: 1 },
            memory: { guest: '128Mi' },
            firmware: { kernelBoot: { kernelArgs: guestKernelArgs(), hostPath: { kernelPath: img.kernelPvh ?? img.kernel, initrdPath: img.initrd } } },
            devices: { autoattachSerialConsole: true, autoattachPodInterface: false, disks: [{ name: volume.name, disk: { bus: 'virtio' } }] },
          },
          volumes: [volume],
        },
      },
    },
  };
}

/**
 * Types `command` into the guest's shell through the node socket and waits for `expect` once more on its console.
 * `expect` must not be a part of `command`: the console echoes what is typed.
 */
async function inGuest(env: KubeEnv, vm: string, vmi: Obj, command: string, expect: string): Promise<void> {
  if (command.includes(expect)) throw new Error(`"${expect}" is part of the command: its echo would match`);
  const pod = await env.podOf(vmi.metadata.uid);
  if (!pod) throw new Error(`VMI ${vm} has no launcher pod`);
  const before = env.consoleOf(pod).split(expect).length - 1;
  const r = await env.nodeCli(['console', vm], `${command}\n`);
  if (r.code !== 0) throw new Error(`vmlet console ${vm}: ${r.out}`);
  await waitFor(`"${expect}" on ${vm}'s console`, 60_000, async () => (env.consoleOf(pod).split(expect).length - 1 > before ? true : undefined));
}

async function booted(env: KubeEnv, vmi: Obj): Promise<void> {
  await waitFor('the guest booted', 240_000, async () => {
    const pod = await env.podOf(vmi.metadata.uid);
    return pod && env.consoleOf(pod).includes(READY_MARKER) ? true : undefined;
  });
}

/** Deletes the VM's VMI (the VM makes a new one: a restart) and waits for the new one to run. */
async function restart(env: KubeEnv, name: string, old: Obj): Promise<Obj> {
  await env.custom.deleteNamespacedCustomObject({ ...GROUP, plural: 'virtualmachineinstances', namespace: env.ns, name });
  return env.running(name, 240_000, old.metadata.uid);
}

t.test('disks in cluster mode', async (t) => {
  const skip = await containerDiskImageSkipReason();
  if (skip) {
    skipWith(t, skip);
    return;
  }
  const c = await testCluster(t);
  if (!c) return;
  const img = await guestImage();
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-kdisk-'));
  t.teardown(() => fs.rmSync(work, { recursive: true, force: true }));
  const env = await kubeEnv(t, c, { namePrefix: 'disks', clusterConfig: { hostPaths: { allow: [path.dirname(img.initrd)] } } });
  const { ns, custom, core } = env;

  await t.test('containerDisk: the kubelet pulls it as a container of the launcher pod; QEMU writes to an overlay in the pod', async (t) => {
    const raw = await testDiskImage(work);
    const qcow2 = path.join(work, 'disk.qcow2');
    execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, qcow2]);
    await importContainerDiskImage(c.paths.containerdSock, { disk: qcow2, name: DISK_IMAGE, workDir: work });
    await custom.createNamespacedCustomObject({
      ...GROUP,
      plural: 'virtualmachines',
      namespace: ns,
      body: await guestVm('cd', ns, { name: 'data', containerDisk: { image: DISK_IMAGE, imagePullPolicy: 'Never' } }),
    });
    const vmi = await env.running('cd');
    const pod = (await env.podOf(vmi.metadata.uid))!;
    t.same(
      pod.spec?.containers.map((x) => [x.name, x.image]),
      [
        ['compute', pod.spec?.containers[0]?.image],
        ['volume-0', DISK_IMAGE],
      ],
      'the launcher pod has one container per containerDisk, with its image',
    );
    t.same(
      pod.spec?.initContainers?.map((x) => x.name),
      ['vmlet-bin'],
      "an init container brings vmlet's waiting program",
    );
    t.match(
      env.status(vmi).volumeStatus,
      [{ name: 'data', target: 'vda', format: 'qcow2', containerDiskVolume: { image: DISK_IMAGE } }],
      'status.volumeStatus',
    );
    t.ok(fs.existsSync(path.join(env.podRunDir(pod), 'overlay-data.qcow2')), "the overlay is in the pod's emptyDir");
    await booted(env, vmi);
    await inGuest(env, 'cd', vmi, `head -c ${BASE_MARKER.length} /dev/vda; echo " <cd-read"`, `${BASE_MARKER} <cd-read`);
    await inGuest(env, 'cd', vmi, `printf 'WROTE-IN-POD' > /dev/vda && sync && head -c 12 /dev/vda; echo " <cd-wrote"`, 'WROTE-IN-POD <cd-wrote');
    t.pass("the guest reads the image's disk and writes to its own overlay");

    const again = await restart(env, 'cd', vmi);
    await booted(env, again);
    await inGuest(env, 'cd', again, `head -c ${BASE_MARKER.length} /dev/vda; echo " <cd-again"`, `${BASE_MARKER} <cd-again`);
    t.pass('after a VM restart the guest reads the clean image again');
    await custom.deleteNamespacedCustomObject({ ...GROUP, plural: 'virtualmachines', namespace: ns, name: 'cd' });
  });

  await t.test('containerDisk whose image the node cannot get: the VMI waits (ErrImagePull), no crash loop', async (t) => {
    await custom.createNamespacedCustomObject({
      ...GROUP,
      plural: 'virtualmachines',
      namespace: ns,
      body: await guestVm('nope', ns, { name: 'data', containerDisk: { image: 'localhost/vmlet-test/missing:1', imagePullPolicy: 'Never' } }),
    });
    const waiting = await waitFor('the VMI to wait for its image', 120_000, async () => {
      const v = await env.getVmi('nope');
      return env.status(v).conditions?.some((x) => x.type === 'ImageAvailable' && x.status === 'False') ? v : undefined;
    });
    t.match(
      env.status(waiting).conditions?.find((x) => x.type === 'ImageAvailable')?.message,
      /localhost\/vmlet-test\/missing:1/,
      'the condition names the image',
    );
    await waitFor('the VM to show ErrImagePull', 30_000, async () => {
      const vm = (await custom.getNamespacedCustomObject({ ...GROUP, plural: 'virtualmachines', namespace: ns, name: 'nope' })) as Obj;
      return (vm.status as { printableStatus?: string } | undefined)?.printableStatus === 'ErrImagePull' ? true : undefined;
    });
    await new Promise((r) => setTimeout(r, 3000));
    t.equal((await env.getVmi('nope'))?.metadata.uid, waiting.metadata.uid, 'still the same VMI: no crash loop');
    await custom.deleteNamespacedCustomObject({ ...GROUP, plural: 'virtualmachines', namespace: ns, name: 'nope' });
  });

  await t.test('persistentVolumeClaim on a local PersistentVolume: disk.img made on first use, data kept across a VM restart', async (t) => {
    const pvDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-pv-'));
    t.teardown(() => fs.rmSync(pvDir, { recursive: true, force: true }));
    const pvName = `${ns}-data`;
    t.teardown(() =>
      c.kubectl(['delete', 'pv', pvName, '--wait=false']).then(
        () => undefined,
        () => undefined,
      ),
    );
    // The claim first, before its volume exists: the VMI waits, with no pod.
    await custom.createNamespacedCustomObject({
      ...GROUP,
      plural: 'virtualmachines',
      namespace: ns,
      body: await guestVm('pv', ns, { name: 'data', persistentVolumeClaim: { claimName: 'data' } }),
    });
    await waitFor('the VMI to wait for its claim', 60_000, async () => {
      const v = await env.getVmi('pv');
      return v && (env.status(v).conditions ?? []).some((x) => x.status === 'False' && /claim/i.test(`${x.reason} ${x.message}`)) ? v : undefined;
    });
    t.notOk(await env.podOf(((await env.getVmi('pv')) as Obj).metadata.uid), 'no launcher pod while the claim is missing');
    await waitFor('the VM to show ErrorPvcNotFound', 30_000, async () => {
      const vm = (await custom.getNamespacedCustomObject({ ...GROUP, plural: 'virtualmachines', namespace: ns, name: 'pv' })) as Obj;
      return (vm.status as { printableStatus?: string } | undefined)?.printableStatus === 'ErrorPvcNotFound' ? true : undefined;
    });

    await core.createPersistentVolume({
      body: {
        metadata: { name: pvName },
        spec: {
          capacity: { storage: '1Gi' },
          accessModes: ['ReadWriteOnce'],
          persistentVolumeReclaimPolicy: 'Retain',
          storageClassName: '',
          volumeMode: 'Filesystem',
          local: { path: pvDir },
          nodeAffinity: {
            required: { nodeSelectorTerms: [{ matchExpressions: [{ key: 'kubernetes.io/hostname', operator: 'In', values: [c.config.node] }] }] },
          },
        },
      },
    });
    await core.createNamespacedPersistentVolumeClaim({
      namespace: ns,
      body: {
        metadata: { name: 'data' },
        spec: { accessModes: ['ReadWriteOnce'], storageClassName: '', volumeName: pvName, resources: { requests: { storage: '1Gi' } } },
      },
    });
    const vmi = await env.running('pv');
    t.match(
      env.status(vmi).volumeStatus,
      [{ name: 'data', format: 'raw', persistentVolumeClaimInfo: { claimName: 'data', capacity: { storage: '1Gi' } } }],
      'status.volumeStatus has the claim',
    );
    const diskImg = path.join(pvDir, 'disk.img');
    t.equal(fs.statSync(diskImg).size, claimDiskBytes(1 << 30, 0.055), 'disk.img at the claim root: 1Gi less 5.5%');
    await booted(env, vmi);
    await inGuest(env, 'pv', vmi, `printf 'PVC-MARKER-1' > /dev/vda && sync && head -c 12 /dev/vda; echo " <pv-wrote"`, 'PVC-MARKER-1 <pv-wrote');
    const again = await restart(env, 'pv', vmi);
    await booted(env, again);
    await inGuest(env, 'pv', again, `head -c 12 /dev/vda; echo " <pv-read"`, 'PVC-MARKER-1 <pv-read');
    t.pass('the marker the guest wrote is there after a VM restart');
    t.equal(fs.readFileSync(diskImg).subarray(0, 12).toString(), 'PVC-MARKER-1', 'and in disk.img on the volume');
    await custom.deleteNamespacedCustomObject({ ...GROUP, plural: 'virtualmachines', namespace: ns, name: 'pv' });
    await waitFor('VMI pv gone', 120_000, async () => ((await env.getVmi('pv')) === undefined ? true : undefined));

    // The same claim as an ephemeral volume: the guest sees its data, writes go to an overlay that goes with the VMI.
    await custom.createNamespacedCustomObject({
      ...GROUP,
      plural: 'virtualmachines',
      namespace: ns,
      body: await guestVm('eph', ns, { name: 'data', ephemeral: { persistentVolumeClaim: { claimName: 'data' } } }),
    });
    const eph = await env.running('eph');
    await booted(env, eph);
    await inGuest(env, 'eph', eph, `head -c 12 /dev/vda; echo " <eph-read"`, 'PVC-MARKER-1 <eph-read');
    await inGuest(env, 'eph', eph, `printf 'EPHEMERAL!!!' > /dev/vda && sync && head -c 12 /dev/vda; echo " <eph-wrote"`, 'EPHEMERAL!!! <eph-wrote');
    t.equal(fs.readFileSync(diskImg).subarray(0, 12).toString(), 'PVC-MARKER-1', "an ephemeral volume's writes never reach the claim");
    const eph2 = await restart(env, 'eph', eph);
    await booted(env, eph2);
    await inGuest(env, 'eph', eph2, `head -c 12 /dev/vda; echo " <eph-again"`, 'PVC-MARKER-1 <eph-again');
    t.pass('after a restart the ephemeral volume starts from the claim again');
    await custom.deleteNamespacedCustomObject({ ...GROUP, plural: 'virtualmachines', namespace: ns, name: 'eph' });
  });

  await t.test('a Block claim on a loop device: the device is the disk', async (t) => {
    const backing = path.join(work, 'block.img');
    fs.writeFileSync(backing, Buffer.alloc(0));
    fs.truncateSync(backing, 64 * 1024 * 1024);
    let loop: string;
    try {
      loop = execFileSync('losetup', ['--find', '--show', backing], { encoding: 'utf8' }).trim();
    } catch (e) {
      skipWith(t, `no loop device: ${(e as Error).message.split('\n')[0]}`);
      return;
    }
    t.teardown(() => void execFileSync('losetup', ['-d', loop]));
    const pvName = `${ns}-block`;
    t.teardown(() =>
      c.kubectl(['delete', 'pv', pvName, '--wait=false']).then(
        () => undefined,
        () => undefined,
      ),
    );
    await core.createPersistentVolume({
      body: {
        metadata: { name: pvName },
        spec: {
          capacity: { storage: '64Mi' },
          accessModes: ['ReadWriteOnce'],
          persistentVolumeReclaimPolicy: 'Retain',
          storageClassName: '',
          volumeMode: 'Block',
          local: { path: loop },
          nodeAffinity: {
            required: { nodeSelectorTerms: [{ matchExpressions: [{ key: 'kubernetes.io/hostname', operator: 'In', values: [c.config.node] }] }] },
          },
        },
      },
    });
    await core.createNamespacedPersistentVolumeClaim({
      namespace: ns,
      body: {
        metadata: { name: 'raw' },
        spec: { accessModes: ['ReadWriteOnce'], storageClassName: '', volumeMode: 'Block', volumeName: pvName, resources: { requests: { storage: '64Mi' } } },
      },
    });
    await custom.createNamespacedCustomObject({
      ...GROUP,
      plural: 'virtualmachines',
      namespace: ns,
      body: await guestVm('blk', ns, { name: 'data', persistentVolumeClaim: { claimName: 'raw' } }),
    });
    const vmi = await env.running('blk');
    const pod = (await env.podOf(vmi.metadata.uid))!;
    t.same(pod.spec?.containers[0]?.volumeDevices, [{ name: 'pvc-data', devicePath: '/dev/vmlet-pvc-data' }], 'the claim is a device of the compute container');
    t.match(
      env.status(vmi).volumeStatus,
      [{ name: 'data', format: 'raw', size: 64 * 1024 * 1024, persistentVolumeClaimInfo: { volumeMode: 'Block' } }],
      'status.volumeStatus: raw, the device size, Block',
    );
    await booted(env, vmi);
    await inGuest(env, 'blk', vmi, `printf 'ON-THE-BLOCK' > /dev/vda && sync && head -c 12 /dev/vda; echo " <blk-wrote"`, 'ON-THE-BLOCK <blk-wrote');
    const onDevice = Buffer.alloc(12);
    const fd = fs.openSync(loop, 'r');
    fs.readSync(fd, onDevice, 0, 12, 0);
    fs.closeSync(fd);
    t.equal(onDevice.toString(), 'ON-THE-BLOCK', "the guest's write is on the loop device");
    await custom.deleteNamespacedCustomObject({ ...GROUP, plural: 'virtualmachines', namespace: ns, name: 'blk' });
    await waitFor('VMI blk gone', 120_000, async () => ((await env.getVmi('blk')) === undefined ? true : undefined));
  });
});
