// QEMU's own words reach the user: a QEMU that refuses its command line fails the VMI with QEMU's last stderr lines in status.message, the Warning event and one log line per failure (no stack traces).
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import YAML from 'yaml';
import { daemonSkipReason, startTestDaemon, vmiObject, vmObject, waitFor } from '../support/daemon.js';

const skip = daemonSkipReason();

/** A hostDisk that is a directory: admission and prepare (with QEMU kept root) accept it (it exists), QEMU itself refuses it. */
function brokenDisk(dir: string): { disks: Array<Record<string, unknown>>; volumes: Array<Record<string, unknown>> } {
  return {
    disks: [{ name: 'data', disk: { bus: 'virtio' } }],
    volumes: [{ name: 'data', hostDisk: { path: dir, type: 'Disk' } }],
  };
}

t.test('a QEMU that refuses to start: its message in status, event and log', { skip }, async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'vmlet-notadisk-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  // QEMU kept root, so it opens the path itself and says why not; a confined QEMU gets hostDisks by fd, and the
  // daemon refuses a directory first (HOSTDISK_NOT_A_DISK, daemon-qemu-confinement.test.ts).
  const d = await startTestDaemon(t, { config: { qemuUser: 'root' } });

  await t.test("a VMI fails with QEMU's error in status.message", async (t) => {
    await d.apply(YAML.stringify(vmiObject('refused', brokenDisk(dir))));
    const vmi = await d.waitPhase('refused', 'Failed', 60_000);
    const msg = vmi.status?.message ?? '';
    t.match(msg, /QEMU said: /, `the message quotes QEMU (${msg})`);
    t.match(msg, `Could not open '${dir}': Is a directory`, "QEMU's own reason, not a socket error");
    t.notMatch(msg, /^\d{4}-\d\d-\d\dT/m, "without QEMU's timestamps");
    const ev = JSON.parse(await d.cliOk(['events', 'refused', '-o', 'json'])) as { items: Array<{ type: string; reason: string; message: string }> };
    const warn = ev.items.find((e) => e.type === 'Warning' && e.message.includes('Is a directory'));
    t.ok(warn, `a Warning event carries QEMU's words (${ev.items.map((e) => `${e.type}/${e.reason}: ${e.message}`).join('; ')})`);
  });

  await t.test('a VM that keeps failing: one log line per failure, no stack traces', async (t) => {
    await d.apply(YAML.stringify(vmObject('crashloop', { runStrategy: 'Always', ...brokenDisk(dir) })));
    const failedLines = (): string[] =>
      readFileSync(d.logFile, 'utf8')
        .split('\n')
        .filter((l) => l.includes('"msg":"VMI failed') && l.includes('crashloop'));
    await waitFor('two failed starts of the VM', () => failedLines().length >= 2, 90_000, 200);
    const lines = failedLines();
    for (const l of lines) {
      t.match(l, /Is a directory/, "each failure line says why in QEMU's words");
      t.notMatch(l, /"stack"/, 'without a stack trace');
    }
    const all = readFileSync(d.logFile, 'utf8')
      .split('\n')
      .filter((l) => l.includes('crashloop'));
    t.notOk(
      all.some((l) => l.includes('"stack"') && /"level":(40|50)/.test(l)),
      'no warning or error line about the VM carries a stack',
    );
    await waitFor('the VM to show CrashLoopBackOff', async () => (await d.vm('crashloop'))?.status?.printableStatus === 'CrashLoopBackOff', 60_000, 200);
    t.pass('the VM backs off');
  });
});
