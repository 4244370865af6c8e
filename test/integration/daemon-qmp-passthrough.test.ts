// `vmlet qmp` passes only queries and a safe list to QEMU: commands that reach host files as root are refused with QMP_COMMAND_NOT_ALLOWED (QEMU never sees them) unless the daemon config allows them by name; every passthrough is logged and marks the VMI.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tap from 'tap';
import { daemonSkipReason, manifestVMI, startTestDaemon, type KubeObj } from '../support/daemon.js';

const skip = daemonSkipReason();

const condition = (o: KubeObj | undefined): { status: string; message?: string } | undefined =>
  (o?.status?.conditions as Array<{ type: string; status: string; message?: string }> | undefined)?.find((c) => c.type === 'QmpPassthrough');

tap.test('dangerous QMP is refused by default; queries pass and mark the VMI', { skip }, async (t) => {
  const d = await startTestDaemon(t);
  await d.apply(manifestVMI('q'));
  await d.waitPhase('q', 'Running', 60_000);
  t.equal(condition(await d.vmi('q')), undefined, 'no mark before any passthrough');
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-qmp-'));
  t.teardown(() => fs.rmSync(work, { recursive: true, force: true }));
  const target = (n: string): string => path.join(work, n);
  const attacks: Array<[string, Record<string, unknown>]> = [
    ['human-monitor-command', { 'command-line': `pmemsave 0 4096 ${target('hmp')}` }],
    ['migrate', { uri: `exec:cat > ${target('migrate')}` }],
    ['dump-guest-memory', { paging: false, protocol: `file:${target('dump')}` }],
    ['pmemsave', { val: 0, size: 4096, filename: target('pmem') }],
    ['screendump', { filename: target('screen') }],
    ['chardev-add', { id: 'x', backend: { type: 'file', data: { out: target('chardev') } } }],
    ['blockdev-add', { driver: 'file', 'node-name': 'x', filename: '/etc/shadow' }],
    ['object-add', { 'qom-type': 'memory-backend-file', id: 'x', size: 4096, 'mem-path': target('mem') }],
  ];
  for (const [execute, args] of attacks) {
    const r = await d.cli(['qmp', 'q', JSON.stringify({ execute, arguments: args })]);
    t.not(r.code, 0, `${execute}: refused`);
    t.match(r.stderr, /QMP_COMMAND_NOT_ALLOWED/, `${execute}: with QMP_COMMAND_NOT_ALLOWED`);
  }
  t.same(fs.readdirSync(work), [], 'QEMU wrote no host file');
  t.equal(condition(await d.vmi('q')), undefined, 'a refused command marks nothing');

  const ok = await d.cli(['qmp', 'q', '{"execute":"query-status"}']);
  t.equal(ok.code, 0, 'a query passes');
  t.match(ok.stdout, /running/);
  const mark = condition(await d.vmi('q'));
  t.equal(mark?.status, 'True', 'the VMI is marked QmpPassthrough=True');
  t.match(mark?.message, /query-status/, 'naming the command');
  t.match(fs.readFileSync(d.logFile, 'utf8'), /"command":"query-status".*"msg":"QMP passthrough"/, 'and the daemon logged it');
});

tap.test('a command the config allows by name passes', { skip }, async (t) => {
  const d = await startTestDaemon(t, { config: { qmpPassthrough: { allow: ['human-monitor-command'] } } });
  await d.apply(manifestVMI('h'));
  await d.waitPhase('h', 'Running', 60_000);
  const r = await d.cli(['qmp', 'h', '{"execute":"human-monitor-command","arguments":{"command-line":"info version"}}']);
  t.equal(r.code, 0, `allowed (${r.stderr.trim()})`);
  t.match(r.stdout, /7\.\d/, "QEMU's own answer");
  t.match(condition(await d.vmi('h'))?.message, /human-monitor-command/, 'and the VMI is marked');
  const still = await d.cli(['qmp', 'h', '{"execute":"pmemsave","arguments":{"val":0,"size":1,"filename":"/tmp/x"}}']);
  t.match(still.stderr, /QMP_COMMAND_NOT_ALLOWED/, 'what the config does not name stays refused');
});
