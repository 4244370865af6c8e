// Runs the QMP client against a real QEMU (TCG, paused): negotiation, typed commands, 1000 concurrent commands, events, SIGKILL, fd passing.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import t from 'tap';
import { QmpClient } from '../../src/qmp/client.js';
import { type QmpError, isQmpError } from '../../src/qmp/errors.js';
import { which } from '../support/which.js';

type Tap = Parameters<Parameters<typeof t.test>[0]>[0];

const qemuBinary = which('qemu-system-x86_64');
const skip = qemuBinary ? false : 'qemu-system-x86_64 is not installed';

interface Qemu {
  dir: string;
  qmpPath: string;
  proc: ChildProcess;
  exited: Promise<void>;
  stderr: () => string;
}

/** Starts a paused TCG QEMU with only a QMP socket (plus `extra`), killed and cleaned up in teardown. */
function startQemu(t: Tap, extra: string[] = []): Qemu {
  const dir = mkdtempSync(path.join(tmpdir(), 'vmlet-qmp-it-'));
  const qmpPath = path.join(dir, 'qmp.sock');
  const proc = spawn(
    qemuBinary ?? 'qemu-system-x86_64',
    ['-accel', 'tcg', '-S', '-nodefaults', '-display', 'none', '-machine', 'q35', '-m', '64', '-qmp', `unix:${qmpPath},server=on,wait=off`, ...extra],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let err = '';
  proc.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  t.teardown(async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGKILL');
      await exited;
    }
    rmSync(dir, { recursive: true, force: true });
  });
  return { dir, qmpPath, proc, exited, stderr: () => err };
}

async function connect(t: Tap, q: Qemu, opts: Partial<ConstructorParameters<typeof QmpClient>[0]> = {}): Promise<QmpClient> {
  const qmp = new QmpClient({ path: q.qmpPath, connectTimeoutMs: 10_000, ...opts });
  t.teardown(() => qmp.close());
  await qmp.connect();
  return qmp;
}

t.test('real QEMU', { skip }, async (t) => {
  t.test('negotiation and the typed commands', async (t) => {
    const q = startQemu(t, ['-device', 'pcie-root-port,id=rp1,bus=pcie.0,chassis=1', '-device', 'virtio-balloon-pci,id=balloon0']);
    const qmp = await connect(t, q);
    t.equal(qmp.oob, true, 'QEMU 7.2 offers oob and we enabled it');
    const v = await qmp.execute('query-version');
    t.same(v.qemu, qmp.greeting?.QMP.version.qemu);
    t.ok(v.qemu.major >= 7);

    t.same(await qmp.execute('query-status'), { running: false, singlestep: false, status: 'prelaunch' });
    t.same(await qmp.execute('set-action', { shutdown: 'pause', reboot: 'reset', panic: 'pause', watchdog: 'reset' }), {});

    const cpus = await qmp.execute('query-cpus-fast');
    t.equal(cpus.length, 1);
    t.type(cpus[0]?.['thread-id'], 'number');
    t.equal(cpus[0]?.target, 'x86_64');

    const schema = await qmp.execute('query-qmp-schema');
    t.ok(schema.some((e) => e.name === 'query-status' && e['meta-type'] === 'command'));

    t.same(await qmp.execute('query-block'), []);
    await qmp.execute('blockdev-add', { driver: 'null-co', 'node-name': 'null0', size: 1048576 });
    const stats = await qmp.execute('query-blockstats', { 'query-nodes': true });
    t.ok(stats.some((s) => s['node-name'] === 'null0' && typeof s.stats.rd_bytes === 'number'));
    t.same(await qmp.execute('blockdev-del', { 'node-name': 'null0' }), {});

    t.same(await qmp.execute('chardev-add', { id: 'c0', backend: { type: 'null', data: {} } }), {});
    t.same(await qmp.execute('chardev-remove', { id: 'c0' }), {});
    t.same(await qmp.execute('object-add', { 'qom-type': 'memory-backend-ram', id: 'mem0', size: 1048576 }), {});
    t.equal(await qmp.execute('qom-get', { path: '/objects/mem0', property: 'size' }), 1048576);
    t.same(await qmp.execute('object-del', { id: 'mem0' }), {});

    t.same(await qmp.execute('netdev_add', { type: 'user', id: 'n0' }), {});
    t.same(await qmp.execute('device_add', { driver: 'virtio-net-pci', id: 'nic0', netdev: 'n0', bus: 'rp1' }), {});
    t.equal(await qmp.execute('qom-get', { path: '/machine/peripheral/nic0', property: 'type' }), 'virtio-net-pci');
    t.same(await qmp.execute('device_del', { id: 'nic0' }), {}, 'unplug requested (completes when the guest acks)');

    const dup = await qmp.execute('device_add', { driver: 'virtio-net-pci', id: 'nic0' }).catch((e: unknown) => e);
    t.ok(isQmpError(dup, 'QMP_COMMAND_ERROR'), 'duplicate id is a command error');
    t.equal((dup as QmpError).errorClass, 'GenericError');
    const missing = await qmp.execute('netdev_del', { id: 'nope' }).catch((e: unknown) => e);
    t.equal((missing as QmpError).errorClass, 'DeviceNotFound');

    t.ok((await qmp.execute('query-balloon')).actual > 0);
    t.same(await qmp.execute('balloon', { value: 32 * 1024 * 1024 }), {});
    t.type(await qmp.execute('query-migrate'), 'object');
    t.same(await qmp.execute('migrate_cancel'), {});
    t.match(await qmp.execute('human-monitor-command', { 'command-line': 'info version' }), /^\d+\.\d+\.\d+/);
    const unknown = await qmp.execute('no-such-command').catch((e: unknown) => e);
    t.equal((unknown as QmpError).errorClass, 'CommandNotFound');
    t.equal(qmp.state, 'ready');
  });

  t.test('1000 concurrent commands, zero mismatched replies', async (t) => {
    const q = startQemu(t);
    const qmp = await connect(t, q);
    const objects = 20;
    for (let k = 0; k < objects; k++) {
      await qmp.execute('object-add', { 'qom-type': 'memory-backend-ram', id: `m${k}`, size: (k + 1) * 4096 * 16 });
    }
    const n = 1000;
    const calls = Array.from({ length: n }, (_, i) =>
      i % 5 === 4
        ? qmp.execute('query-status').then((s) => (s.status === 'prelaunch' ? 'ok' : `bad status ${JSON.stringify(s)}`))
        : qmp
            .execute('qom-get', { path: `/objects/m${i % objects}`, property: 'size' })
            .then((v) => (v === ((i % objects) + 1) * 4096 * 16 ? 'ok' : `call ${i} got ${String(v)}`)),
    );
    const results = await Promise.all(calls);
    const bad = results.filter((r) => r !== 'ok');
    t.same(bad, [], 'zero mismatched replies');
    t.equal(qmp.pendingCount, 0);
  });

  t.test('events during commands: cont/stop give RESUME/STOP before their replies; quit gives SHUTDOWN first', async (t) => {
    const q = startQemu(t);
    const qmp = await connect(t, q);
    const order: string[] = [];
    qmp.on('RESUME', () => order.push('RESUME'));
    qmp.on('STOP', () => order.push('STOP'));
    qmp.on('SHUTDOWN', (d) => order.push(`SHUTDOWN:${d.reason}`));
    const it = qmp.events({ names: ['RESUME', 'STOP', 'SHUTDOWN'] });
    await qmp.execute('cont').then(() => order.push('cont-reply'));
    t.equal((await qmp.execute('query-status')).status, 'running');
    await qmp.execute('stop').then(() => order.push('stop-reply'));
    await qmp.execute('quit').then(() => order.push('quit-done'));
    t.same(order, ['RESUME', 'cont-reply', 'STOP', 'stop-reply', 'SHUTDOWN:host-qmp-quit', 'quit-done']);
    const seen: string[] = [];
    for await (const ev of it) seen.push(ev.event);
    t.same(seen, ['RESUME', 'STOP', 'SHUTDOWN'], 'the iterator saw them too and ended with the connection');
    await q.exited;
    t.equal(qmp.droppedEvents, 0);
  });

  t.test('QEMU killed with SIGKILL mid-command: pending rejected with QMP_DISCONNECTED within 100 ms', async (t) => {
    const q = startQemu(t);
    const qmp = await connect(t, q);
    // Freeze QEMU so the command is certainly still pending when the kill lands.
    q.proc.kill('SIGSTOP');
    const pending = Array.from({ length: 5 }, () => qmp.execute('query-status').catch((e: unknown) => e));
    await new Promise((r) => setTimeout(r, 50));
    t.equal(qmp.pendingCount, 5);
    const killedAt = performance.now();
    q.proc.kill('SIGKILL');
    const errors = await Promise.all(pending);
    const took = performance.now() - killedAt;
    t.ok(
      errors.every((e) => isQmpError(e, 'QMP_DISCONNECTED')),
      'all rejected with QMP_DISCONNECTED',
    );
    t.ok(took < 100, `rejected ${took.toFixed(1)} ms after SIGKILL`);
    t.equal((await qmp.closed)?.code, 'QMP_DISCONNECTED');
  });

  t.test('a second client gets no greeting while the first holds the monitor; reconnect after close works', async (t) => {
    const q = startQemu(t);
    const first = await connect(t, q);
    const second = new QmpClient({ path: q.qmpPath, greetingTimeoutMs: 300 });
    const err = await second.connect().catch((e: unknown) => e);
    t.ok(isQmpError(err, 'QMP_GREETING_TIMEOUT'), 'QMP_GREETING_TIMEOUT');
    await first.close();
    const third = await connect(t, q);
    t.equal((await third.execute('query-status')).status, 'prelaunch');
  });

  t.test('fd passing: add-fd, then QEMU writes through /dev/fdset/N into our file', async (t) => {
    const q = startQemu(t);
    const qmp = await connect(t, q);
    const file = path.join(q.dir, 'disk.raw');
    writeFileSync(file, Buffer.alloc(1024 * 1024));
    const fd = openSync(file, 'r+');
    let info;
    try {
      info = await qmp.execute('add-fd', { opaque: 'disk0 rw' }, { fds: [fd] });
    } finally {
      closeSync(fd); // QEMU holds its own copy now
    }
    t.type(info['fdset-id'], 'number');
    t.type(info.fd, 'number');
    await qmp.execute('blockdev-add', { driver: 'file', 'node-name': 'disk0', filename: `/dev/fdset/${info['fdset-id']}` });
    const out = await qmp.execute('human-monitor-command', { 'command-line': 'qemu-io disk0 "write -P 0x5a 4096 512"' });
    t.type(out, 'string', 'qemu-io prints its summary to QEMU stdout, not to the monitor');
    await qmp.execute('blockdev-del', { 'node-name': 'disk0' });
    const data = readFileSync(file);
    t.equal(
      data.subarray(4096, 4096 + 512).every((b) => b === 0x5a),
      true,
      'QEMU wrote 0x5a into our file through the passed fd',
    );
    t.equal(data[4095], 0);
    t.equal(data[4096 + 512], 0);
  });

  t.test('fd passing: getfd, then migrate to fd:NAME writes the migration stream into our file', async (t) => {
    const q = startQemu(t);
    const qmp = await connect(t, q);
    const file = path.join(q.dir, 'state.bin');
    const fd = openSync(file, 'w');
    try {
      await qmp.execute('getfd', { fdname: 'mig' }, { fds: [fd] });
    } finally {
      closeSync(fd);
    }
    const statuses: string[] = [];
    const done = new Promise<void>((resolve) =>
      qmp.on('MIGRATION', (d) => {
        statuses.push(d.status);
        if (d.status === 'completed' || d.status === 'failed') resolve();
      }),
    );
    await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
    await qmp.execute('migrate', { uri: 'fd:mig' });
    await done;
    t.equal(statuses.at(-1), 'completed');
    t.equal((await qmp.execute('query-migrate')).status, 'completed');
    const head = readFileSync(file).subarray(0, 4).toString('latin1');
    t.equal(head, 'QEVM', 'the file starts with the migration stream magic');
  });

  t.test('several fd commands at once are serialised and each fd lands where asked', async (t) => {
    const q = startQemu(t);
    const qmp = await connect(t, q);
    const files = Array.from({ length: 4 }, (_, i) => path.join(q.dir, `f${i}.raw`));
    const fds = files.map((f) => {
      writeFileSync(f, Buffer.alloc(65536));
      return openSync(f, 'r+');
    });
    const infos = await Promise.all(
      fds.map((fd, i) => Promise.all([qmp.execute('add-fd', { opaque: `f${i}` }, { fds: [fd] }), qmp.execute('query-status')]).then(([info]) => info)),
    );
    for (const fd of fds) closeSync(fd);
    for (const [i, info] of infos.entries()) {
      await qmp.execute('blockdev-add', { driver: 'file', 'node-name': `f${i}`, filename: `/dev/fdset/${info['fdset-id']}` });
      await qmp.execute('human-monitor-command', { 'command-line': `qemu-io f${i} "write -P ${0x41 + i} 0 512"` });
      await qmp.execute('blockdev-del', { 'node-name': `f${i}` });
    }
    for (const [i, f] of files.entries()) t.equal(readFileSync(f)[0], 0x41 + i, `file ${i} got its own pattern`);
  });
});
