import { spawn } from 'node:child_process';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { ApiClient, paths } from '../../src/cli/client.js';
import { VmletError } from '../../src/errors.js';
import { runCli, startFakeServer } from '../support/fake-backend.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

async function until(cond: () => boolean, what: string, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

t.test('verbs', async (t) => {
  const s = await startFakeServer();
  t.teardown(s.close);
  const cli = (argv: string[], opts: { stdin?: string | PassThrough } = {}): ReturnType<typeof runCli> => runCli(argv, { socketPath: s.socketPath, ...opts });
  t.before(() => {
    s.backend.seed('VirtualMachine', 'default', { metadata: { name: 'vm1' } });
    s.backend.seed('VirtualMachineInstance', 'default', { metadata: { name: 'vm1' } });
  });

  t.test('VM and VMI actions', async (t) => {
    for (const verb of ['start', 'stop', 'restart']) {
      const r = await cli([verb, 'vm1']);
      t.equal(r.code, 0);
      t.equal(r.stdout, `VM vm1 was scheduled to ${verb}\n`);
    }
    for (const verb of ['pause', 'unpause', 'softreboot', 'reset']) {
      const r = await cli([verb, 'vm1']);
      t.equal(r.code, 0);
      t.equal(r.stdout, `VMI vm1 was scheduled to ${verb}\n`);
    }
    t.same(
      s.backend.calls.filter((c) => c.op.endsWith('Action')).map((c) => `${c.op}:${c.action}`),
      ['vmAction:start', 'vmAction:stop', 'vmAction:restart', 'vmiAction:pause', 'vmiAction:unpause', 'vmiAction:softreboot', 'vmiAction:reset'],
    );
    s.backend.failNext.set('vmiAction', new VmletError('VMI_NOT_RUNNING', 'vm1 is not running'));
    const r = await cli(['pause', 'vm1']);
    t.equal(r.code, 1);
    t.equal(r.stderr, 'error: vm1 is not running (VMI_NOT_RUNNING)\n');
    t.equal((await cli(['start'])).code, 2, 'missing NAME is a usage error');
    t.equal((await cli(['start', 'a', 'b'])).code, 2);
  });

  t.test('qmp', async (t) => {
    const r = await cli(['qmp', 'vm1', '{"execute":"query-status"}']);
    t.equal(r.code, 0);
    t.same(JSON.parse(r.stdout), { return: { echo: { execute: 'query-status' } } });
    const bad = await cli(['qmp', 'vm1', '{nope']);
    t.equal(bad.code, 2);
    t.match(bad.stderr, /not valid JSON.*\(USAGE\)/);
    s.backend.failNext.set('qmp', new VmletError('QMP_COMMAND_ERROR', 'CommandNotFound: The command nope has not been found'));
    const err = await cli(['qmp', 'vm1', '{"execute":"nope"}']);
    t.equal(err.code, 1);
    t.equal(err.stderr, 'error: CommandNotFound: The command nope has not been found (QMP_COMMAND_ERROR)\n');
  });

  t.test('delete and delete --wait', async (t) => {
    s.backend.seed('VirtualMachineInstance', 'default', { metadata: { name: 'gone' } });
    const r = await cli(['delete', 'vmi', 'gone']);
    t.equal(r.code, 0);
    t.equal(r.stdout, 'virtualmachineinstance.vmlet.io "gone" deleted\n');
    const again = await cli(['delete', 'vmi', 'gone']);
    t.equal(again.code, 1);
    t.equal(again.stderr, 'error: virtualmachineinstances "gone" not found (NOT_FOUND)\n');

    s.backend.seed('VirtualMachine', 'default', { metadata: { name: 'slow' } });
    s.backend.deleteDelayMs = 400;
    const started = Date.now();
    const w = await cli(['delete', 'vm', 'slow', '--wait']);
    s.backend.deleteDelayMs = 0;
    t.equal(w.code, 0, w.stderr);
    t.equal(w.stdout, 'virtualmachine.vmlet.io "slow" deleted\n');
    t.ok(Date.now() - started >= 350, 'waited for the object to go');
    t.notOk(s.backend.objects.has('VirtualMachine/default/slow'));
    await until(() => s.backend.watchSignals.every((sig) => sig.aborted), 'watch closed');
  });

  t.test('events list and --watch', async (t) => {
    s.backend.addEvent('default', { kind: 'VirtualMachineInstance', name: 'vm1' }, 'Started', 'VMI started\non node1');
    s.backend.addEvent('default', { kind: 'VirtualMachine', name: 'other' }, 'Created', 'created VMI');
    const all = await cli(['events']);
    t.equal(all.code, 0);
    t.match(all.stdout, /^LAST SEEN\s+TYPE\s+REASON\s+OBJECT\s+MESSAGE\n/);
    t.match(all.stdout, /Normal\s+Started\s+virtualmachineinstance\/vm1\s+VMI started on node1\n/);
    t.match(all.stdout, /virtualmachine\/other/);
    const one = await cli(['events', 'vm1']);
    t.notMatch(one.stdout, /other/);
    const json = await cli(['events', 'vm1', '-o', 'json']);
    t.match(JSON.parse(json.stdout), { kind: 'EventList', items: [{ reason: 'Started' }] });
    const none = await cli(['-n', 'empty', 'events']);
    t.equal(none.stderr, 'No events found in empty namespace.\n');

    const running = cli(['events', 'vm1', '--watch']);
    await until(() => s.backend.watchSignals.length > 0 && s.backend.watchSignals.some((x) => !x.aborted), 'watch open');
    s.backend.addEvent('default', { kind: 'VirtualMachineInstance', name: 'vm1' }, 'Paused', 'VMI paused', 'Normal');
    s.backend.addEvent('default', { kind: 'VirtualMachineInstance', name: 'other' }, 'Noise', 'not ours');
    await sleep(100);
    s.backend.endWatches();
    const w = await running;
    t.equal(w.code, 0);
    const lines = w.stdout.trimEnd().split('\n');
    t.match(lines[0], /^LAST SEEN\s+TYPE/);
    t.match(lines[1], /Started\s+virtualmachineinstance\/vm1/, 'existing event first');
    t.match(lines[2], /Paused\s+virtualmachineinstance\/vm1\s+VMI paused$/);
    t.equal(lines.length, 3);
    t.equal(lines[1]!.indexOf('virtualmachineinstance'), lines[0]!.indexOf('OBJECT'), 'streamed rows align with the header');
  });

  t.test('console with piped stdin: output, input, exits when stdin ends', async (t) => {
    const r = await cli(['console', 'vm1'], { stdin: 'echo hi\r' });
    t.equal(r.code, 0, r.stderr);
    t.match(r.stderr, /^Successfully connected to vm1 console\. The escape sequence is \^\]\n/);
    t.match(r.stdout, /\[ring\] boot log/);
    t.equal(Buffer.concat(s.backend.consoleInput).toString(), 'echo hi\r');
    await until(() => s.backend.consoleReaders === 0, 'attachment released');
  });

  t.test('console: Ctrl+] detaches and frees the writer lock', async (t) => {
    s.backend.consoleInput.length = 0;
    const stdin = new PassThrough();
    const running = cli(['console', 'vm1'], { stdin });
    await until(() => s.backend.consoleReaders === 1, 'attached');
    stdin.write('ls\r');
    await until(() => Buffer.concat(s.backend.consoleInput).toString() === 'ls\r', 'input arrived');
    // A second writer is refused while this one is attached.
    const busy = await cli(['console', 'vm1']);
    t.equal(busy.code, 1);
    t.equal(busy.stderr, 'error: another client holds the console for writing (CONSOLE_BUSY)\n');
    stdin.write(Buffer.from([0x70, 0x77, 0x64, 0x1d, 0x78])); // "pwd", Ctrl+], "x" (after the escape: never sent)
    const r = await running;
    t.equal(r.code, 0);
    t.match(r.stdout, /LS\r/, 'echo of the input');
    await until(() => s.backend.consoleReaders === 0, 'detached');
    t.equal(Buffer.concat(s.backend.consoleInput).toString(), 'ls\rpwd');
    const again = new PassThrough();
    const next = cli(['console', 'vm1'], { stdin: again });
    await until(() => s.backend.consoleReaders === 1, 'lock free again');
    again.end();
    t.equal((await next).code, 0);
  });

  t.test('console ends when the VM goes away', async (t) => {
    const stdin = new PassThrough();
    const running = cli(['console', 'vm1'], { stdin });
    await until(() => s.backend.consoleReaders === 1, 'attached');
    s.backend.consoleHangup();
    t.equal((await running).code, 0);
    t.equal((await cli(['console', 'missing'])).stderr, 'error: virtualmachineinstances "missing" not found (NOT_FOUND)\n');
  });

  t.test('usage errors', async (t) => {
    const help = await cli(['--help']);
    t.equal(help.code, 0);
    t.match(help.stdout, /^Usage: vmlet/);
    for (const argv of [[], ['frobnicate'], ['get', 'vmis', '--wait'], ['daemon', '--accel', 'fast'], ['delete', 'vm'], ['apply', 'x']]) {
      const r = await cli(argv);
      t.equal(r.code, 2, argv.join(' '));
      t.not(r.stderr, '');
    }
  });

  t.test('the entry point as a process', async (t) => {
    const run = (argv: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> =>
      new Promise((resolve) => {
        const p = spawn(process.execPath, ['--import', 'tsx', path.join(root, 'src/cli/main.ts'), ...argv], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
        let stdout = '';
        let stderr = '';
        p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
        p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
        p.on('close', (code) => resolve({ code, stdout, stderr }));
      });
    const ok = await run(['--socket', s.socketPath, 'get', 'vm', 'vm1', '-o', 'json']);
    t.equal(ok.code, 0, ok.stderr);
    t.match(JSON.parse(ok.stdout), { metadata: { name: 'vm1' } });
    const dead = await run(['--socket', path.join(s.dir, 'dead.sock'), 'get', 'vms']);
    t.equal(dead.code, 1);
    t.equal(dead.stderr, `error: cannot reach vmlet daemon at ${path.join(s.dir, 'dead.sock')}: connect ENOENT (DAEMON_UNREACHABLE)\n`);
  });

  t.test('client talks to the same paths the server routes', async (t) => {
    const c = new ApiClient({ socketPath: s.socketPath });
    t.equal((await c.request('GET', paths.list('virtualmachines', undefined))).status, 200);
    t.equal((await c.request('GET', paths.events(undefined))).status, 200);
    t.equal((await c.request('GET', paths.object('virtualmachines', 'default', 'vm1'))).status, 200);
  });
});
