// Two daemons on one state or run folder: the second is refused with DAEMON_ALREADY_RUNNING before it touches anything, and the first one's VM, launcher socket and files are left as they were; a killed daemon's lock goes with it.
import fs from 'node:fs';
import path from 'node:path';
import tap from 'tap';
import { daemonSkipReason, isAlive, runDaemonUntilExit, manifestVMI, startTestDaemon } from '../support/daemon.js';

const skip = daemonSkipReason();

/** Runs a second `vmlet daemon` on the given folders; its exit code and output. */
function secondDaemon(configFile: string, socket: string, stateDir: string, runDir: string): Promise<{ code: number | null; out: string }> {
  return runDaemonUntilExit(configFile, path.dirname(socket), { socket, stateDir, runDir });
}

tap.test('a second daemon on the same folders is refused and changes nothing', { skip }, async (t) => {
  const d = await startTestDaemon(t);
  await d.apply(manifestVMI('held'));
  const v = await d.waitPhase('held', 'Running', 60_000);
  const qemuPid = v.status!.vmlet!.qemuPid!;
  const launcherSock = path.join(d.runDir, 'launcher.sock');
  t.ok(fs.existsSync(launcherSock), 'the launcher socket exists');
  // A file the image store would sweep at start (an import in flight), and the VMI's run dir.
  const inflight = path.join(d.stateDir, 'images', '.tmp-inflight');
  fs.mkdirSync(path.dirname(inflight), { recursive: true });
  fs.writeFileSync(inflight, 'partial');
  const configFile = path.join(d.root, 'vmlet.yaml');

  for (const [what, stateDir, runDir] of [
    ['the same state and run folders', d.stateDir, d.runDir],
    ['only the same run folder', path.join(d.root, 'other-state'), d.runDir],
    ['only the same state folder', d.stateDir, path.join(d.root, 'other-run')],
  ] as const) {
    const r = await secondDaemon(configFile, path.join(d.root, 'second.sock'), stateDir, runDir);
    t.equal(r.code, 1, `${what}: the second daemon exits 1`);
    t.match(r.out, /DAEMON_ALREADY_RUNNING/, `${what}: with the code`);
    t.match(r.out, new RegExp(`pid ${d.pid}\\b`), `${what}: naming the holder's pid`);
    t.ok(isAlive(qemuPid), `${what}: the first daemon's QEMU runs on`);
    t.ok(fs.existsSync(launcherSock), `${what}: its launcher socket is still there`);
    t.ok(fs.existsSync(inflight), `${what}: its temporary file is still there`);
    t.notOk(fs.existsSync(path.join(d.root, 'second.sock')), `${what}: the second daemon made no API socket`);
  }
  const after = await d.vmi('held');
  t.equal(after?.status?.phase, 'Running', 'the VMI is still Running');
  t.equal(after?.status?.vmlet?.qemuPid, qemuPid, 'with the same QEMU');
  t.match(await d.cliOk(['pause', 'held']), 'VMI held was scheduled to pause', 'the first daemon still drives it over QMP');

  // kill -9: the kernel drops the lock (QEMU and the launcher never inherited it), and the next daemon re-adopts.
  await d.kill('SIGKILL');
  await d.restart();
  const readopted = await d.waitPhase('held', 'Running', 60_000);
  t.equal(readopted.status?.vmlet?.qemuPid, qemuPid, 'a daemon started after kill -9 takes the folders and re-adopts the same QEMU');
  t.equal(fs.readFileSync(path.join(d.stateDir, 'daemon.lock'), 'utf8').trim(), String(d.pid), 'the lock file names the new holder');
});
