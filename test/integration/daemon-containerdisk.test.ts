// containerDisk in standalone mode with real guests: an imported archive backs two VMs at once through per-VMI qcow2 overlays, the base never changes, a restart starts clean, a missing image waits, an image in use stays.
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tap from 'tap';
import YAML from 'yaml';
import { buildContainerDisk, containerDiskSkipReason, testDiskImage } from '../support/container-disk.js';
import { daemonSkipReason, READY_MARKER, runInGuest, startTestDaemon, vmObject, vmiObject, waitFor, type KubeObj, type TestDaemon } from '../support/daemon.js';
import { which } from '../support/which.js';

const skip = daemonSkipReason() || containerDiskSkipReason() || (which('qemu-img') ? false : 'qemu-img is missing (apt-get install qemu-utils)');

const BASE_MARKER = 'VMLET-BASE-DISK';

function sha256(file: string): string {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

function containerDiskVm(name: string, image: string): string {
  const vm = vmObject(name, {
    runStrategy: 'Always',
    disks: [{ name: 'data', disk: { bus: 'virtio' } }],
    volumes: [{ name: 'data', containerDisk: { image } }],
  });
  return YAML.stringify(vm);
}

async function runningVmi(d: TestDaemon, name: string, notUid?: string): Promise<KubeObj> {
  return d.waitPhase(name, 'Running', 90_000, (o) => o.metadata.uid !== notUid);
}

tap.test('containerDisk: two VMs share one imported image through their own overlays', { skip }, async (t) => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-cdisk-'));
  t.teardown(() => fs.rmSync(work, { recursive: true, force: true }));
  const raw = await testDiskImage(work);
  const qcow2 = path.join(work, 'disk.qcow2');
  execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, qcow2]);
  const archive = path.join(work, 'disk.oci.tar');
  await buildContainerDisk({ disk: qcow2, name: 'disk.qcow2', format: 'oci-archive', out: archive });

  const d = await startTestDaemon(t);
  const imported = await d.cliOk(['image', 'import', archive, '--name', 'example.com/test/disk:1']);
  t.match(imported, /imported \(sha256:[0-9a-f]{64}, qcow2/, 'vmlet image import reports the digest and the format');
  const list = JSON.parse(await d.cliOk(['image', 'ls', '-o', 'json'])) as { items: Array<{ path: string; digest: string; names: string[] }> };
  t.equal(list.items.length, 1, 'one image in the store');
  const stored = list.items[0]!;
  t.same(stored.names, ['example.com/test/disk:1'], 'under the name it was imported as');
  const baseHash = sha256(stored.path);

  await d.apply(containerDiskVm('cda', 'example.com/test/disk:1') + '---\n' + containerDiskVm('cdb', 'example.com/test/disk:1'));
  const [a, b] = await Promise.all([runningVmi(d, 'cda'), runningVmi(d, 'cdb')]);
  await Promise.all([d.waitConsole(a.metadata.uid, READY_MARKER, 1, 120_000), d.waitConsole(b.metadata.uid, READY_MARKER, 1, 120_000)]);
  t.pass('both guests booted at once');

  for (const [vm, vmi] of [
    ['cda', a],
    ['cdb', b],
  ] as const) {
    const vs = (vmi.status as { volumeStatus?: Array<Record<string, unknown>> }).volumeStatus ?? [];
    t.match(
      vs,
      [{ name: 'data', target: 'vda', format: 'qcow2', containerDiskVolume: { image: 'example.com/test/disk:1', digest: stored.digest } }],
      `${vm}: status.volumeStatus names the image's digest and format`,
    );
    t.ok(fs.existsSync(path.join(d.stateDir, 'scratch', vmi.metadata.uid, 'overlay-data.qcow2')), `${vm}: its overlay is in its scratch folder`);
    await runInGuest(d, vm, vmi.metadata.uid, `head -c ${BASE_MARKER.length} /dev/vda; echo " <${vm}-read"`, `${BASE_MARKER} <${vm}-read`);
    const wrote = `WROTE-BY-${vm}`;
    await runInGuest(
      d,
      vm,
      vmi.metadata.uid,
      `printf '${wrote}' > /dev/vda && sync && head -c ${wrote.length} /dev/vda; echo " <${vm}-wrote"`,
      `${wrote} <${vm}-wrote`,
    );
  }
  t.equal(sha256(stored.path), baseHash, 'the base file is unchanged after both guests wrote to their disks');

  const rm = await d.cli(['image', 'rm', 'example.com/test/disk:1']);
  t.not(rm.code, 0, 'image rm of an image in use fails');
  t.match(rm.stderr, /IMAGE_IN_USE/, 'with IMAGE_IN_USE');
  t.match(rm.stderr, /default\/cda/, 'naming a VMI that uses it');

  // A restart makes a new VMI: a fresh overlay over the clean base.
  await d.cliOk(['restart', 'cda']);
  const a2 = await runningVmi(d, 'cda', a.metadata.uid);
  t.notOk(fs.existsSync(d.vmRunDir(a.metadata.uid)), "the old VMI's run dir is gone");
  t.notOk(fs.existsSync(path.join(d.stateDir, 'scratch', a.metadata.uid)), 'and its overlay');
  await d.waitConsole(a2.metadata.uid, READY_MARKER, 1, 120_000);
  await runInGuest(d, 'cda', a2.metadata.uid, `head -c ${BASE_MARKER.length} /dev/vda; echo " <cda-again"`, `${BASE_MARKER} <cda-again`);
  t.pass('after a restart the guest reads the clean base again');

  await d.cliOk(['delete', 'vm', 'cdb', '--wait']);
  await d.waitGone('vmi', 'cdb', 30_000);
  t.notOk(fs.existsSync(path.join(d.stateDir, 'scratch', b.metadata.uid)), "deleting a VM removes its VMI's overlay (once the VMI is gone)");
  t.equal(sha256(stored.path), baseHash, 'the base is still unchanged');

  await d.cliOk(['delete', 'vm', 'cda', '--wait']);
  await d.waitGone('vmi', 'cda', 30_000);
  await d.cliOk(['image', 'rm', 'example.com/test/disk:1']);
  t.notOk(fs.existsSync(stored.path), 'once no VMI uses it, image rm removes the disk file');
});

tap.test('containerDisk: a missing image keeps the VMI waiting, not failing, until it is imported', { skip }, async (t) => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-cdisk-'));
  t.teardown(() => fs.rmSync(work, { recursive: true, force: true }));
  const raw = await testDiskImage(work);
  const d = await startTestDaemon(t);
  await d.apply(containerDiskVm('late', 'late-disk:2'));
  const waiting = await d
    .waitPhase('late', 'Scheduled', 30_000, (o) =>
      Boolean(o.status?.conditions?.some((c) => c.type === 'ImageAvailable' && c.status === 'False' && c.reason === 'ImageNotFound')),
    )
    .catch(async () => d.waitPhase('late', 'Pending', 5_000, (o) => Boolean(o.status?.conditions?.some((c) => c.type === 'ImageAvailable'))));
  const cond = waiting.status?.conditions?.find((c) => c.type === 'ImageAvailable');
  t.match(cond?.message, /late-disk:2.*vmlet image import/, 'the condition says which image and how to import it');
  await waitFor(
    'the VM to show ErrImagePull',
    async () => ((await d.vm('late'))?.status as { printableStatus?: string } | undefined)?.printableStatus === 'ErrImagePull',
    10_000,
  );
  t.pass('the VM shows ErrImagePull');
  await new Promise((r) => setTimeout(r, 3000));
  const still = await d.vmi('late');
  t.equal(still?.metadata.uid, waiting.metadata.uid, 'no new VMI was made (no crash loop)');
  t.notOk(['Failed', 'Succeeded'].includes(still?.status?.phase ?? ''), 'the VMI has not failed');

  // A plain raw disk file imports too (no container tooling needed).
  await d.cliOk(['image', 'import', raw, '--name', 'late-disk:2']);
  const vmi = await runningVmi(d, 'late');
  t.equal(vmi.metadata.uid, waiting.metadata.uid, 'the same VMI starts once the image is there');
  t.notOk(
    vmi.status?.conditions?.some((c) => c.type === 'ImageAvailable'),
    'the ImageAvailable condition is gone',
  );
});

tap.test('containerDisk: a VMI deleted while it waits for its image goes away at once and leaves nothing', { skip }, async (t) => {
  const d = await startTestDaemon(t);
  await d.apply(
    YAML.stringify(
      vmiObject('gone', { disks: [{ name: 'data', disk: { bus: 'virtio' } }], volumes: [{ name: 'data', containerDisk: { image: 'never-imported:1' } }] }),
    ),
  );
  const waiting = await waitFor('the VMI to wait for its image', async () => {
    const v = await d.vmi('gone');
    return v?.status?.conditions?.some((c) => c.type === 'ImageAvailable' && c.status === 'False') ? v : undefined;
  });
  const t0 = Date.now();
  await d.cliOk(['delete', 'vmi', 'gone', '--wait']);
  t.ok(Date.now() - t0 < 10_000, `deleted in ${Date.now() - t0} ms: the wait ends with the stop`);
  t.notOk(fs.existsSync(d.vmRunDir(waiting.metadata.uid)), 'no run dir left');
  t.same(d.vmProcesses(), [], 'no launcher or QEMU was started');
});
