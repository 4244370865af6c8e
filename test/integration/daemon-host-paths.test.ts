// Host paths as an attacker would try them on a standalone daemon: a hostDisk or initrd outside hostPaths.allow, directly or through a symlink, is refused at create with the field; a file swapped for a symlink after admission is refused at start; nothing of the host file reaches QEMU.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tap from 'tap';
import YAML from 'yaml';
import { daemonSkipReason, guestInitrd, guestKernel, startTestDaemon, vmObject, vmiObject, waitFor } from '../support/daemon.js';

const skip = daemonSkipReason();

tap.test('host paths outside hostPaths.allow are refused, symlinks resolved', { skip }, async (t) => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-hp-'));
  t.teardown(() => fs.rmSync(work, { recursive: true, force: true }));
  // Only this folder (and the guest's) is allowed here.
  const allowed = path.join(work, 'vms');
  fs.mkdirSync(allowed);
  const d = await startTestDaemon(t, { config: { hostPaths: { allow: [path.dirname(guestKernel), allowed] } } });
  const disk = (p: string): { disks: Array<Record<string, unknown>>; volumes: Array<Record<string, unknown>> } => ({
    disks: [{ name: 'data', disk: { bus: 'virtio' } }],
    volumes: [{ name: 'data', hostDisk: { path: p, type: 'Disk' } }],
  });
  const refused = async (what: string, manifest: Record<string, unknown>, field: string): Promise<void> => {
    const r = await d.cli(['apply', '-f', '-'], { input: YAML.stringify(manifest) });
    t.not(r.code, 0, `${what}: refused`);
    t.match(r.stderr, /HOST_PATH_NOT_ALLOWED/, `${what}: HOST_PATH_NOT_ALLOWED`);
    t.match(r.stderr, field, `${what}: naming ${field}`);
  };
  await refused('a hostDisk on /etc/shadow', vmiObject('shadow', disk('/etc/shadow')), 'spec.volumes[0].hostDisk.path');
  fs.symlinkSync('/etc/shadow', path.join(allowed, 'innocent.img'));
  await refused('a hostDisk through a symlink out of the folder', vmiObject('link', disk(path.join(allowed, 'innocent.img'))), 'spec.volumes[0].hostDisk.path');
  const initrd = vmiObject('initrd');
  const kb = (initrd.spec as { domain: { firmware: { kernelBoot: { hostPath: { initrdPath: string } } } } }).domain.firmware.kernelBoot.hostPath;
  kb.initrdPath = '/etc/shadow';
  await refused('/etc/shadow as the initrd', initrd, 'spec.domain.firmware.kernelBoot.hostPath.initrdPath');
  await refused('a VM template too', vmObject('tmpl', disk('/etc/passwd')), 'spec.template.spec.volumes[0].hostDisk.path');
  t.same(await d.vmis(), [], 'nothing was stored');

  // A real file at admission, swapped for a symlink before the VM starts: refused at start.
  const real = path.join(allowed, 'real.img');
  fs.writeFileSync(real, Buffer.alloc(1024 * 1024));
  await d.apply(YAML.stringify(vmObject('swap', { runStrategy: 'Halted', ...disk(real) })));
  fs.rmSync(real);
  fs.symlinkSync('/etc/shadow', real);
  await d.cliOk(['start', 'swap']);
  // Each VMI of the VM fails at start (the VM then retries with a back-off): the daemon's log says why.
  const line = await waitFor(
    'the start refused',
    () =>
      fs
        .readFileSync(d.logFile, 'utf8')
        .split('\n')
        .find((l) => l.includes('"name":"swap"') && l.includes('VMI failed') && l.includes('resolves to')),
    60_000,
    200,
  );
  t.match(line, /hostDisk\.path.*resolves to .*\/etc\/shadow.*is not below a folder of hostPaths\.allow/, 'refused at start: the symlink is resolved again');
  await d.cliOk(['stop', 'swap']);
  t.notOk(
    d.vmProcesses().some((p) => p.argv.join(' ').includes('shadow')),
    'no QEMU was given it',
  );

  // The guest's own kernel and initrd stay allowed: a VMI that names them runs.
  await d.apply(YAML.stringify(vmiObject('ok')));
  await d.waitPhase('ok', 'Running', 60_000);
  t.pass(`a VMI whose kernel (${path.basename(guestKernel)}) and initrd (${path.basename(guestInitrd)}) are in an allowed folder runs`);
});
