// What a guest writes lives under the state folder, not in the run folder's tmpfs: an emptyDisk's image is in <stateDir>/scratch/<uid>, takes what the guest wrote there, and goes with the VMI; an emptyDisk larger than the free space is refused with SCRATCH_SPACE_LOW.
import fs from 'node:fs';
import path from 'node:path';
import tap from 'tap';
import YAML from 'yaml';
import { daemonSkipReason, READY_MARKER, runInGuest, startTestDaemon, vmiObject } from '../support/daemon.js';

const skip = daemonSkipReason();

const scratchSpec = (capacity: string): { disks: Array<Record<string, unknown>>; volumes: Array<Record<string, unknown>> } => ({
  disks: [{ name: 'scratch', disk: { bus: 'virtio' } }],
  volumes: [{ name: 'scratch', emptyDisk: { capacity } }],
});

tap.test('an emptyDisk is written under the state folder and goes with its VMI', { skip }, async (t) => {
  const d = await startTestDaemon(t);
  await d.apply(YAML.stringify(vmiObject('scr', scratchSpec('64Mi'))));
  const v = await d.waitPhase('scr', 'Running', 90_000);
  const uid = v.metadata.uid;
  const image = path.join(d.stateDir, 'scratch', uid, 'disk-scratch.img');
  t.ok(fs.existsSync(image), `the image is ${image}`);
  t.equal(fs.statSync(image).size, 64 * 1024 * 1024, 'of the asked capacity, sparse');
  t.same(
    fs.readdirSync(d.vmRunDir(uid)).filter((f) => f.endsWith('.img') || f.endsWith('.qcow2')),
    [],
    'no disk image in the run dir',
  );
  await d.waitConsole(uid, READY_MARKER, 1, 120_000);
  await runInGuest(d, 'scr', uid, 'dd if=/dev/zero of=/dev/vda bs=1M count=8 conv=fsync 2>/dev/null; echo "wrote $((4+4)) MiB"', 'wrote 8 MiB');
  t.ok(fs.statSync(image).blocks * 512 >= 8 * 1024 * 1024, `the guest's 8 MiB landed in the state folder (${fs.statSync(image).blocks * 512} bytes allocated)`);
  await d.cliOk(['delete', 'vmi', 'scr', '--wait']);
  t.notOk(fs.existsSync(path.dirname(image)), 'the scratch folder goes with the VMI');
});

tap.test('an emptyDisk larger than the free space fails its VMI with SCRATCH_SPACE_LOW', { skip }, async (t) => {
  const d = await startTestDaemon(t);
  await d.apply(YAML.stringify(vmiObject('huge', scratchSpec('1Pi'))));
  const v = await d.waitPhase('huge', 'Failed', 60_000);
  t.match(String(v.status?.message ?? ''), /emptyDisk volumes ask for 1125899906842624 bytes/, `the message says why (${v.status?.message})`);
  t.same(fs.readdirSync(path.join(d.stateDir, 'scratch', v.metadata.uid)), [], 'nothing was made');
});
