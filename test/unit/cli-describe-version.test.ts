import { readFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import YAML from 'yaml';
import { ApiClient, paths } from '../../src/cli/client.js';
import { accelVerdict, humanDuration, type DaemonVersion } from '../../src/cli/output.js';
import { vmletVersion } from '../../src/version.js';
import { validateVM } from '../../src/api/validate.js';
import { VmletError } from '../../src/errors.js';
import { FAKE_VERSION, runCli, startFakeServer } from '../support/fake-backend.js';

const NOW = Date.parse('2025-01-01T12:00:00Z');
const ago = (s: number): string => new Date(NOW - s * 1000).toISOString();

t.test('describe', async (t) => {
  const s = await startFakeServer();
  t.teardown(s.close);
  const cli = (argv: string[]): ReturnType<typeof runCli> => runCli(argv, { socketPath: s.socketPath, now: NOW });
  const b = s.backend;
  b.seed(
    'VirtualMachineInstance',
    'default',
    {
      metadata: { name: 'web' },
      status: {
        phase: 'Failed',
        reason: 'QemuExited',
        nodeName: 'node1',
        interfaces: [{ name: 'default', ipAddress: '10.213.0.7' }],
        vmlet: { accel: 'tcg', softwareEmulation: true },
        conditions: [
          { type: 'Ready', status: 'False', reason: 'QemuExited' },
          {
            type: 'SoftwareEmulation',
            status: 'True',
            reason: 'KvmUnusable',
            message: 'QEMU runs with software emulation (TCG): expect it to be slow;\nKVM is not usable: /dev/kvm does not exist',
          },
        ],
        message: "QEMU ended: exit status 1\nqemu-system-x86_64: -drive file=/nope.img: Could not open '/nope.img': No such file or directory",
      },
    },
    new Date(NOW - 300_000),
  );
  b.addEvent('default', { kind: 'VirtualMachineInstance', name: 'web', uid: 'uid-web' }, 'Started', 'QEMU started', 'Normal', { lastTimestamp: ago(200) });
  b.addEvent('default', { kind: 'VirtualMachineInstance', name: 'web', uid: 'uid-web' }, 'Failed', 'QEMU exited with status 1', 'Warning', {
    lastTimestamp: ago(30),
    firstTimestamp: ago(180),
    count: 3,
  });
  b.addEvent('default', { kind: 'VirtualMachineInstance', name: 'web', uid: 'uid-older' }, 'Failed', 'an earlier VMI of this name', 'Warning', {
    lastTimestamp: ago(600),
  });
  b.addEvent('default', { kind: 'VirtualMachine', name: 'web', uid: 'uid-vm' }, 'SuccessfulCreate', 'created VMI web', 'Normal', { lastTimestamp: ago(250) });

  t.test('vmi: fields, conditions table, the last QEMU error and its own events', async (t) => {
    const r = await cli(['describe', 'vmi', 'web']);
    t.equal(r.code, 0, r.stderr);
    t.comment(`\n${r.stdout}`);
    const lines = r.stdout.split('\n');
    for (const [label, value] of [
      ['Name', 'web'],
      ['Namespace', 'default'],
      ['Created', `${ago(300)} (5m ago)`],
      ['Phase', 'Failed'],
      ['Reason', 'QemuExited'],
      ['Node', 'node1'],
      ['IP', '10.213.0.7'],
      ['Accelerator', 'tcg (software emulation, slow)'],
    ]) {
      t.ok(
        lines.some((l) => new RegExp(`^${label}:\\s+${value!.replace(/[()]/g, '\\$&')}$`).test(l)),
        `${label}: ${value}`,
      );
    }
    const conditions = lines.indexOf('Conditions:');
    t.match(lines[conditions + 1], /^ {2}TYPE\s+STATUS\s+REASON\s+MESSAGE$/, 'conditions as a table');
    t.match(lines[conditions + 2], /^ {2}Ready\s+False\s+QemuExited$/);
    t.match(
      lines[conditions + 3],
      /^ {2}SoftwareEmulation\s+True\s+KvmUnusable\s+QEMU runs with software emulation \(TCG\): expect it to be slow; KVM is not usable: \/dev\/kvm does not exist$/,
      'a multi-line message stays on its row',
    );
    const err = lines.indexOf('Last QEMU error:');
    t.ok(err > conditions, "the failed VMI's message is labelled as the last QEMU error");
    t.equal(lines[err + 1], '  QEMU ended: exit status 1');
    t.equal(
      lines[err + 2],
      "  qemu-system-x86_64: -drive file=/nope.img: Could not open '/nope.img': No such file or directory",
      'each QEMU line on its own line',
    );
    const events = lines.indexOf('Events:');
    t.ok(events > err);
    t.match(lines[events + 1], /^ {2}AGE\s+TYPE\s+REASON\s+MESSAGE$/);
    t.match(lines[events + 2], /^ {2}3m20s\s+Normal\s+Started\s+QEMU started$/, 'oldest first');
    t.match(lines[events + 3], /^ {2}30s \(x3 over 3m\)\s+Warning\s+Failed\s+QEMU exited with status 1$/, 'a repeated event with its count');
    t.notMatch(r.stdout, 'an earlier VMI of this name', 'not the events of an earlier VMI of the same name');
    t.notMatch(r.stdout, 'SuccessfulCreate', "not the VM's events");
  });

  t.test('vmi: a running one has no error section, and says <none> where there is nothing', async (t) => {
    b.seed('VirtualMachineInstance', 'default', { metadata: { name: 'fresh' }, status: { phase: 'Pending' } });
    const r = await cli(['describe', 'vmi', 'fresh']);
    t.equal(r.code, 0, r.stderr);
    t.match(r.stdout, /^Phase:\s+Pending$/m);
    t.match(r.stdout, /^IP:\s+<none>$/m);
    t.match(r.stdout, /^Accelerator:\s+<none>$/m);
    t.match(r.stdout, /^Conditions:\s+<none>$/m);
    t.match(r.stdout, /^Events:\s+<none>$/m);
    t.notMatch(r.stdout, /Last QEMU error|Message:/);
    b.seed('VirtualMachineInstance', 'default', { metadata: { name: 'note' }, status: { phase: 'Running', message: 'guest agent not connected' } });
    t.match(
      (await cli(['describe', 'vmi', 'note'])).stdout,
      /^Message:\n {2}guest agent not connected$/m,
      'a message on a VMI that did not fail is just "Message"',
    );
  });

  t.test('vm: status, start failures, its VMI and the events of both', async (t) => {
    b.seed(
      'VirtualMachine',
      'default',
      {
        metadata: { name: 'web' },
        spec: { runStrategy: 'Always' },
        status: {
          printableStatus: 'CrashLoopBackOff',
          ready: false,
          startFailure: { consecutiveFailCount: 3, retryAfterTimestamp: new Date(NOW + 20_000).toISOString() },
          conditions: [{ type: 'Ready', status: 'False', reason: 'VMINotRunning', message: 'the VMI failed' }],
        },
      },
      new Date(NOW - 600_000),
    );
    const r = await cli(['describe', 'vm', 'web']);
    t.equal(r.code, 0, r.stderr);
    t.comment(`\n${r.stdout}`);
    t.match(r.stdout, /^Run strategy:\s+Always$/m);
    t.match(r.stdout, /^Status:\s+CrashLoopBackOff$/m);
    t.match(r.stdout, /^Ready:\s+False$/m);
    t.match(r.stdout, /^Start failures:\s+3 in a row; next start in 20s$/m);
    t.match(r.stdout, /^VMI:\s+Failed \(QemuExited\)$/m);
    t.match(r.stdout, /^Conditions:\n {2}TYPE\s+STATUS\s+REASON\s+MESSAGE\n {2}Ready\s+False\s+VMINotRunning\s+the VMI failed$/m);
    t.match(r.stdout, /^Last QEMU error:\n {2}QEMU ended: exit status 1\n {2}qemu-system-x86_64: -drive/m, 'why its VMI failed');
    t.match(r.stdout, /^ {2}AGE\s+TYPE\s+REASON\s+OBJECT\s+MESSAGE$/m, 'events name their object');
    t.match(r.stdout, /^ {2}4m10s\s+Normal\s+SuccessfulCreate\s+vm\/web\s+created VMI web$/m);
    t.match(r.stdout, /^ {2}10m\s+Warning\s+Failed\s+vmi\/web\s+an earlier VMI of this name$/m, 'the failures of earlier VMIs too');
    b.seed('VirtualMachine', 'default', { metadata: { name: 'halted' }, spec: { runStrategy: 'Halted' }, status: { printableStatus: 'Stopped' } });
    const h = await cli(['describe', 'vm', 'halted']);
    t.equal(h.code, 0, h.stderr);
    t.match(h.stdout, /^VMI:\s+<none>$/m);
    t.notMatch(h.stdout, /Start failures|Last QEMU error/);
  });

  t.test('errors', async (t) => {
    const missing = await cli(['describe', 'vmi', 'nope']);
    t.equal(missing.code, 1);
    t.equal(missing.stderr, 'error: virtualmachineinstances "nope" not found (NOT_FOUND)\n');
    t.equal((await cli(['describe', 'vmi'])).code, 2, 'a NAME is needed');
    t.equal((await cli(['describe', 'pods', 'x'])).code, 2);
    t.equal((await cli(['describe', 'vm', 'a', 'b'])).code, 2);
  });
});

t.test('version', async (t) => {
  const s = await startFakeServer();
  t.teardown(s.close);
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  t.equal(vmletVersion(), pkg.version, "the CLI reports package.json's version");

  t.test('with a daemon', async (t) => {
    const r = await runCli(['version'], { socketPath: s.socketPath });
    t.equal(r.code, 0, r.stderr);
    t.comment(`\n${r.stdout}`);
    t.same(
      r.stdout
        .split('\n')
        .filter(Boolean)
        .map((l) => l.split(/:\s+/)[0]),
      ['Client', 'Daemon', 'QEMU', 'KVM', 'Accelerator'],
    );
    t.match(r.stdout, new RegExp(`^Client:\\s+vmlet ${pkg.version.replace(/\./g, '\\.')}$`, 'm'));
    t.match(r.stdout, /^Daemon:\s+vmlet 9\.9\.9-fake$/m);
    t.match(r.stdout, /^QEMU:\s+QEMU emulator version 8\.2\.2 \(fake\)$/m);
    t.match(r.stdout, /^KVM:\s+not usable: \/dev\/kvm does not exist: no KVM module loaded, or no hardware or nested virtualisation \(checked in 3 ms\)$/m);
    t.match(r.stdout, /^Accelerator:\s+auto, useEmulation true → VMs run with software emulation \(TCG, slow\)$/m);
    const json = await runCli(['version', '-o', 'json'], { socketPath: s.socketPath });
    t.same(JSON.parse(json.stdout), { client: { vmlet: pkg.version }, daemon: FAKE_VERSION });
    t.same(YAML.parse((await runCli(['version', '-o', 'yaml'], { socketPath: s.socketPath })).stdout), {
      client: { vmlet: pkg.version },
      daemon: FAKE_VERSION,
    });
    t.equal((await runCli(['version', '-o', 'wide'], { socketPath: s.socketPath })).code, 2);
    t.equal((await runCli(['version', 'x'], { socketPath: s.socketPath })).code, 2);
  });

  t.test('without a daemon: the CLI version first, then why there is no more', async (t) => {
    const sock = path.join(s.dir, 'nobody.sock');
    const r = await runCli(['version'], { socketPath: sock });
    t.equal(r.code, 1);
    t.equal(r.stdout, `Client:  vmlet ${pkg.version}\n`);
    t.equal(r.stderr, `error: the daemon is not reachable: cannot reach vmlet daemon at ${sock}: connect ENOENT (DAEMON_UNREACHABLE)\n`);
    const json = await runCli(['version', '-o', 'json'], { socketPath: sock });
    t.same(JSON.parse(json.stdout), { client: { vmlet: pkg.version } });
  });

  t.test("the accelerator verdict follows the daemon's rule", async (t) => {
    const v = (accel: string, usable: boolean, useEmulation: boolean): string =>
      accelVerdict({ vmlet: 'x', qemu: 'q', kvm: { usable, reason: 'r' }, accel, useEmulation } satisfies DaemonVersion);
    t.equal(v('auto', true, false), 'auto, useEmulation false → VMs run with KVM');
    t.equal(v('auto', false, true), 'auto, useEmulation true → VMs run with software emulation (TCG, slow)');
    t.match(v('auto', false, false), /^auto, useEmulation false → VMs fail to start \(KVM_UNAVAILABLE\)/);
    t.match(v('kvm', false, true), /^kvm → VMs fail to start \(KVM_UNAVAILABLE\)/, 'accel kvm never falls back');
    t.equal(v('kvm', true, false), 'kvm → VMs run with KVM');
    t.equal(v('tcg', true, false), 'tcg → VMs run with software emulation (TCG, slow)');
    t.equal(humanDuration(200_000), '3m20s');
  });
});

t.test('a refused manifest: every cause, each on its own line, through the API and the CLI', async (t) => {
  const s = await startFakeServer();
  t.teardown(s.close);
  const manifest = {
    apiVersion: 'vmlet.io/v1alpha1',
    kind: 'VirtualMachine',
    metadata: { name: 'Bad_Name' },
    spec: {
      runStrategy: 'Always',
      template: {
        spec: {
          domain: { bogusField: true, memory: { guest: 'lots' }, devices: { disks: [{ name: 'root' }] } },
          volumes: [{ name: 'root', emptyDisk: { capacity: '1Gi' } }],
        },
      },
    },
  };
  // What the daemon's validation says about it (the fake backend does not validate by itself).
  const refusal = (): unknown => {
    try {
      validateVM(manifest);
    } catch (e) {
      return e;
    }
    throw new Error('the manifest was accepted');
  };

  t.test('API: the first code on top, all of them in details.causes', async (t) => {
    s.backend.failNext.set('create', refusal());
    const c = new ApiClient({ socketPath: s.socketPath });
    const r = await c.request('POST', paths.list('virtualmachines', 'default'), { body: manifest });
    t.equal(r.status, 422);
    t.match(r.body, { kind: 'Status', reason: 'UNKNOWN_FIELD', code: 422, message: /^VirtualMachine "default\/Bad_Name" is invalid: / });
    const causes = (r.body as { details: { causes: Array<Record<string, unknown>> } }).details.causes;
    t.same(
      causes.map((c) => [c.field, c.code, c.reason]),
      [
        ['spec.template.spec.domain.bogusField', 'UNKNOWN_FIELD', 'UNKNOWN_FIELD'],
        ['metadata.name', 'INVALID_NAME', 'INVALID_NAME'],
        ['spec.template.spec.domain.memory.guest', 'INVALID_QUANTITY', 'INVALID_QUANTITY'],
      ],
      "field, code (and Kubernetes' reason) of each",
    );
    t.ok(
      causes.every((c) => typeof c.message === 'string' && c.message !== ''),
      'each with a message',
    );
  });

  t.test('vmlet apply prints each cause as error: FIELD: MESSAGE (CODE)', async (t) => {
    s.backend.failNext.set('create', refusal());
    const r = await runCli(['apply', '-f', '-'], { socketPath: s.socketPath, stdin: YAML.stringify(manifest) });
    t.equal(r.code, 1);
    t.comment(`\n${r.stderr}`);
    const lines = r.stderr.trimEnd().split('\n');
    t.equal(lines[0], 'error: VirtualMachine "default/Bad_Name" is invalid:', 'what was refused');
    t.equal(lines[1], 'error: spec.template.spec.domain.bogusField: field not supported (UNKNOWN_FIELD)');
    t.match(lines[2], /^error: metadata\.name: must be a DNS-1123 label.* \(INVALID_NAME\)$/);
    t.match(lines[3], /^error: spec\.template\.spec\.domain\.memory\.guest: invalid quantity "lots".* \(INVALID_QUANTITY\)$/);
    t.equal(lines.length, 4);
  });

  t.test('an error without causes is still one line', async (t) => {
    s.backend.failNext.set('create', new VmletError('BAD_REQUEST', 'the request body must be an object'));
    const r = await runCli(['apply', '-f', '-'], { socketPath: s.socketPath, stdin: YAML.stringify({ ...manifest, metadata: { name: 'ok' } }) });
    t.equal(r.stderr, 'error: the request body must be an object (BAD_REQUEST)\n');
  });
});
