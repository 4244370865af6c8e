// A stop (e.g. a delete) that arrives while the supervisor's prepare still builds the sandbox: the VMI finishes at once, and what prepare made afterwards (sandbox, tap fds) is released too.
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import t from 'tap';
import type { VirtualMachineInstance, VirtualMachineInstanceStatus } from '../../src/api/types.js';
import { validateVMI } from '../../src/api/validate.js';
import type { LauncherServer } from '../../src/qemu/launcher-server.js';
import { Supervisor, type PreparedLaunch } from '../../src/daemon/supervisor.js';

function vmi(): VirtualMachineInstance {
  const v = validateVMI({
    apiVersion: 'vmlet.io/v1alpha1',
    kind: 'VirtualMachineInstance',
    metadata: { name: 'late', namespace: 'default' },
    spec: { domain: { memory: { guest: '64Mi' }, devices: {} } },
  });
  return { ...v, metadata: { ...v.metadata, uid: '5a1e5a1e-0000-4000-8000-000000000001' } };
}

function isOpen(fd: number): boolean {
  try {
    fs.fstatSync(fd);
    return true;
  } catch {
    return false;
  }
}

/** A supervisor whose prepare waits until the test settles it; nothing past prepare is reached. */
function setup(t: { teardown(fn: () => void): void }): {
  sup: Supervisor;
  settle: { resolve(p: PreparedLaunch): void; reject(e: Error): void };
  released: () => number;
  status: () => VirtualMachineInstanceStatus;
} {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-late-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  let settle!: { resolve(p: PreparedLaunch): void; reject(e: Error): void };
  const prepared = new Promise<PreparedLaunch>((resolve, reject) => (settle = { resolve, reject }));
  prepared.catch(() => undefined); // rejected before the supervisor awaits it is not unhandled
  let releases = 0;
  let status: VirtualMachineInstanceStatus = {};
  const sup = new Supervisor({
    vmi: vmi(),
    runDir: path.join(dir, 'run'),
    logger: pino({ level: 'silent' }),
    // Only attached: the launcher started beside prepare never gets this far (there is no binary), and the VMI stops before launch.
    launcherServer: { link: () => undefined, attach: () => new EventEmitter(), detach: () => undefined } as unknown as LauncherServer,
    launcherBinary: path.join(dir, 'no-launcher'),
    launcherSocket: path.join(dir, 'no.sock'),
    prepare: () => prepared,
    writeStatus: async (mutate) => {
      status = mutate(status);
    },
    event: () => undefined,
    releaseNetwork: async () => {
      releases++;
    },
  });
  return { sup, settle, released: () => releases, status: () => status };
}

t.test('prepare finishes after the stop: its sandbox and tap fds are released', async (t) => {
  const { sup, settle, released, status } = setup(t);
  const started = sup.start();
  const report = await sup.stop(30, 'deleted');
  t.equal(sup.state, 'Exited', 'the VMI finished at once');
  t.equal(status().phase, report.phase, 'its final phase is written');
  t.equal(released(), 1, 'finish released the (incomplete) sandbox');
  const fds = [fs.openSync('/dev/null', 'r'), fs.openSync('/dev/null', 'r')];
  settle.resolve({ argv: ['qemu'], fds, accel: 'tcg', softwareEmulation: true });
  await started;
  t.equal(released(), 2, 'released again once prepare had made it whole');
  t.same(fds.map(isOpen), [false, false], 'the tap fds prepare opened are closed');
});

t.test('prepare fails after the stop: what it made is released too', async (t) => {
  const { sup, settle, released } = setup(t);
  const started = sup.start();
  await sup.stop(30, 'deleted');
  settle.reject(new Error('ip failed half-way'));
  await started;
  t.equal(sup.state, 'Exited');
  t.equal(released(), 2, 'finish, then the late release');
});

t.test('without a stop nothing is released twice', async (t) => {
  const { sup, settle, released } = setup(t);
  const started = sup.start();
  settle.reject(new Error('bad spec'));
  await started;
  t.equal(sup.state, 'Exited', 'a failed prepare fails the VMI');
  t.equal(released(), 1, 'one release, from finish');
});
