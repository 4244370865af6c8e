import fs from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';
import YAML from 'yaml';
import { humanAge, formatTable } from '../../src/cli/output.js';
import { VmletError } from '../../src/errors.js';
import { runCli, startFakeServer } from '../support/fake-backend.js';

const NOW = Date.parse('2026-03-01T12:00:00Z');
const ago = (s: number): Date => new Date(NOW - s * 1000);

t.test('humanAge and formatTable', async (t) => {
  const at = (s: number): string => humanAge(ago(s).toISOString(), NOW);
  t.equal(at(5), '5s');
  t.equal(at(119), '119s');
  t.equal(at(200), '3m20s');
  t.equal(at(600), '10m');
  t.equal(at(3 * 3600 + 120), '3h2m');
  t.equal(at(20 * 3600), '20h');
  t.equal(at(3 * 86400 + 3600), '3d1h');
  t.equal(at(400 * 86400), '400d');
  t.equal(humanAge(undefined, NOW), '<unknown>');
  t.equal(
    formatTable(
      ['A', 'BB'],
      [
        ['xxx', 'y'],
        ['z', ''],
      ],
    ),
    'A     BB\nxxx   y\nz\n',
  );
});

t.test('get', async (t) => {
  const s = await startFakeServer();
  t.teardown(s.close);
  const cli = (argv: string[]): ReturnType<typeof runCli> => runCli(argv, { socketPath: s.socketPath, now: NOW });

  t.test('empty list', async (t) => {
    const r = await cli(['get', 'vmis']);
    t.equal(r.code, 0);
    t.equal(r.stdout, '');
    t.equal(r.stderr, 'No resources found in default namespace.\n');
  });

  t.test('seed', async () => {
    s.backend.seed(
      'VirtualMachineInstance',
      'default',
      { metadata: { name: 'testguest' }, spec: { domain: { cpu: { cores: 2 }, memory: { guest: '512Mi' } } } },
      ago(300),
    );
    s.backend.seed('VirtualMachineInstance', 'default', { metadata: { name: 'pending-one' }, status: { phase: 'Scheduling', conditions: [] } }, ago(30));
    s.backend.seed('VirtualMachineInstance', 'other', { metadata: { name: 'elsewhere' } }, ago(30));
    s.backend.seed('VirtualMachine', 'default', { metadata: { name: 'testguest' }, spec: { runStrategy: 'Always' } }, ago(4000));
  });

  t.test('VMI table', async (t) => {
    const r = await cli(['get', 'vmis']);
    t.equal(r.code, 0);
    t.equal(
      r.stdout,
      [
        'NAME          AGE   PHASE        IP          NODENAME   READY',
        'testguest     5m    Running      10.0.2.15   node1      True',
        'pending-one   30s   Scheduling   <none>      <none>     False',
        '',
      ].join('\n'),
    );
    const one = await cli(['get', 'vmi', 'testguest']);
    t.equal(one.stdout.split('\n').length, 3, 'header and one row');
    const wide = await cli(['get', 'vmi', 'testguest', '-o', 'wide']);
    t.match(wide.stdout, /^NAME\s+AGE\s+PHASE\s+IP\s+NODENAME\s+READY\s+PAUSED\s+CPUS\s+MEMORY\n/);
    t.match(wide.stdout, /testguest\s+5m\s+Running\s+10\.0\.2\.15\s+node1\s+True\s+False\s+2\s+512Mi\n/);
    const all = await cli(['get', 'vmis', '-A']);
    t.match(all.stdout, /^NAMESPACE\s+NAME/);
    t.match(all.stdout, /other\s+elsewhere/);
    const ns = await cli(['-n', 'other', 'get', 'vmis']);
    t.match(ns.stdout, /elsewhere/);
    t.notMatch(ns.stdout, /testguest/);
  });

  t.test('VM table', async (t) => {
    const r = await cli(['get', 'vms']);
    t.equal(r.stdout, 'NAME        AGE   STATUS    READY\ntestguest   66m   Running   True\n');
    const wide = await cli(['get', 'vm', '-o', 'wide']);
    t.match(wide.stdout, /RUNSTRATEGY\ntestguest\s+66m\s+Running\s+True\s+Always\n/);
  });

  t.test('json and yaml print the API objects exactly', async (t) => {
    const one = await cli(['get', 'vmi', 'testguest', '-o', 'json']);
    t.equal(one.code, 0);
    const api = await s.backend.get({ kind: 'VirtualMachineInstance', namespace: 'default', name: 'testguest' });
    t.same(JSON.parse(one.stdout), api);
    const list = await cli(['get', 'vmis', '-o', 'json']);
    const parsed = JSON.parse(list.stdout) as { kind: string; apiVersion: string; items: unknown[] };
    t.equal(parsed.kind, 'VirtualMachineInstanceList');
    t.equal(parsed.apiVersion, 'vmlet.io/v1alpha1');
    t.same(parsed.items, await s.backend.list('VirtualMachineInstance', 'default'));
    const y = await cli(['get', 'vms', '-o', 'yaml']);
    t.match(YAML.parse(y.stdout), { kind: 'VirtualMachineList', items: [{ metadata: { name: 'testguest' } }] });
    const names = await cli(['get', 'vmis', '-o', 'name']);
    t.equal(names.stdout, 'virtualmachineinstance.vmlet.io/testguest\nvirtualmachineinstance.vmlet.io/pending-one\n');
  });

  t.test('errors', async (t) => {
    const r = await cli(['get', 'vmi', 'x']);
    t.equal(r.code, 1);
    t.equal(r.stdout, '');
    t.equal(r.stderr, 'error: virtualmachineinstances "x" not found (NOT_FOUND)\n');
    const bad = await cli(['get', 'pods']);
    t.equal(bad.code, 2);
    t.match(bad.stderr, /^error: unknown resource type "pods".*\(USAGE\)\n$/);
    const fmt = await cli(['get', 'vmis', '-o', 'xml']);
    t.equal(fmt.code, 2);
    const traversal = await cli(['get', 'vmi', '../../etc']);
    t.equal(traversal.code, 1);
    t.match(traversal.stderr, /\(INVALID_PATH\)\n$/);
    s.backend.failNext.set('list', new VmletError('STORE_CONFLICT', 'busy'));
    const conflict = await cli(['get', 'vms']);
    t.equal(conflict.code, 1);
    t.equal(conflict.stderr, 'error: busy (STORE_CONFLICT)\n');
  });
});

t.test('apply', async (t) => {
  const s = await startFakeServer();
  t.teardown(s.close);
  const cli = (argv: string[], stdin?: string): ReturnType<typeof runCli> =>
    runCli(argv, { socketPath: s.socketPath, ...(stdin === undefined ? {} : { stdin }) });
  const file = path.join(s.dir, 'vm.yaml');
  const doc = (kind: string, name: string, extra = ''): string =>
    `apiVersion: vmlet.io/v1alpha1\nkind: ${kind}\nmetadata:\n  name: ${name}\n${extra}spec:\n  runStrategy: Always\n`;
  await fs.writeFile(file, `${doc('VirtualMachine', 'vm1')}---\n${doc('VirtualMachineInstance', 'vmi1')}\n---\n# only a comment\n`);

  t.test('multi-document: created, then configured', async (t) => {
    const r1 = await cli(['apply', '-f', file]);
    t.equal(r1.code, 0, r1.stderr);
    t.equal(r1.stdout, 'virtualmachine.vmlet.io/vm1 created\nvirtualmachineinstance.vmlet.io/vmi1 created\n');
    t.ok(s.backend.objects.has('VirtualMachine/default/vm1'));
    t.ok(s.backend.objects.has('VirtualMachineInstance/default/vmi1'));
    const r2 = await cli(['apply', '-f', file]);
    t.equal(r2.code, 0);
    t.equal(r2.stdout, 'virtualmachine.vmlet.io/vm1 configured\nvirtualmachineinstance.vmlet.io/vmi1 configured\n');
    t.equal(s.backend.calls.filter((c) => c.op === 'replace').length, 2);
  });

  t.test('stdin, JSON, namespace from -n and from the document', async (t) => {
    const json = JSON.stringify({ apiVersion: 'vmlet.io/v1alpha1', kind: 'VirtualMachine', metadata: { name: 'fromjson' }, spec: {} });
    const r = await cli(['-n', 'team', 'apply', '-f', '-'], json);
    t.equal(r.code, 0, r.stderr);
    t.equal(r.stdout, 'virtualmachine.vmlet.io/fromjson created\n');
    t.ok(s.backend.objects.has('VirtualMachine/team/fromjson'));
    const r2 = await cli(
      ['apply', '-f', '-'],
      doc('VirtualMachine', 'inns', 'metadata:\n  name: inns\n  namespace: blue\n').replace(/metadata:\n {2}name: inns\n(?=metadata)/, ''),
    );
    t.equal(r2.code, 0, r2.stderr);
    t.ok(s.backend.objects.has('VirtualMachine/blue/inns'));
  });

  t.test('malformed YAML fails before any request', async (t) => {
    const before = s.backend.calls.length;
    const r = await cli(['apply', '-f', '-'], `${doc('VirtualMachine', 'ok1')}---\nkind: VirtualMachine\nmetadata: {name: [broken\n`);
    t.equal(r.code, 1);
    t.match(r.stderr, /^error: stdin: document 2: .*\(MANIFEST_PARSE\)\n$/);
    t.equal(s.backend.calls.length, before, 'no request sent');
    const kind = await cli(['apply', '-f', '-'], 'apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n');
    t.equal(kind.code, 1);
    t.match(kind.stderr, /\(UNSUPPORTED_KIND\)\n$/);
    const empty = await cli(['apply', '-f', '-'], '# nothing\n');
    t.equal(empty.code, 1);
    t.match(empty.stderr, /no objects to apply \(MANIFEST_PARSE\)/);
    const noname = await cli(['apply', '-f', '-'], 'kind: VirtualMachine\nmetadata: {}\n');
    t.match(noname.stderr, /metadata\.name is required \(INVALID_FIELD\)/);
    const missing = await cli(['apply', '-f', path.join(s.dir, 'nope.yaml')]);
    t.equal(missing.code, 1);
    t.match(missing.stderr, /ENOENT \(MANIFEST_READ\)/);
    const noFile = await cli(['apply']);
    t.equal(noFile.code, 2);
    t.equal(s.backend.calls.length, before, 'still no request sent');
  });

  t.test('server-side validation error is reported, other documents still applied', async (t) => {
    s.backend.failNext.set('create', Object.assign(new VmletError('INVALID_QUANTITY', 'spec.domain.memory.guest: "lots" is not a quantity'), { details: [] }));
    const r = await cli(['apply', '-f', '-'], `${doc('VirtualMachine', 'bad1')}---\n${doc('VirtualMachine', 'good1')}`);
    t.equal(r.code, 1);
    t.equal(r.stderr, 'error: spec.domain.memory.guest: "lots" is not a quantity (INVALID_QUANTITY)\n');
    t.equal(r.stdout, 'virtualmachine.vmlet.io/good1 created\n');
  });

  t.test('daemon unreachable', async (t) => {
    const sock = path.join(s.dir, 'nobody.sock');
    const r = await runCli(['apply', '-f', file], { socketPath: sock });
    t.equal(r.code, 1);
    t.equal(r.stderr, `error: cannot reach vmlet daemon at ${sock}: connect ENOENT (DAEMON_UNREACHABLE)\n`);
    const env = await runCli(['get', 'vms'], { env: { VMLET_SOCKET: sock } });
    t.equal(env.stderr, `error: cannot reach vmlet daemon at ${sock}: connect ENOENT (DAEMON_UNREACHABLE)\n`);
    const def = await runCli(['get', 'vms'], { env: {} });
    t.match(def.stderr, /^error: cannot reach vmlet daemon at \/run\/vmlet\/vmlet\.sock: connect E[A-Z]+ \(DAEMON_UNREACHABLE\)\n$/);
  });
});
