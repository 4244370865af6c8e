// A failed command carries its exit code and stderr as fields (with either runner), "already gone" is read from the stderr field only, and IpTools batches, splits batch failures and runs inside a netns without nsenter when the runner can.
import t from 'tap';
import { VmletError } from '../../src/errors.js';
import { execFileRunner, execRunner, type CommandRunner } from '../../src/net/exec.js';
import { IpTools, isGone, splitBatchFailure } from '../../src/net/ip-tools.js';

const BINS = { ip: 'ip', nft: 'nft', nsenter: 'nsenter' };

t.test('a non-zero exit is NET_COMMAND_FAILED with exitCode and stderr', async (t) => {
  const err = await execRunner('sh', ['-c', 'echo "Cannot find device \\"vm-x\\"" >&2; exit 2']).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(err instanceof VmletError);
  const e = err as VmletError;
  t.equal(e.code, 'NET_COMMAND_FAILED');
  t.equal(e.exitCode, 2);
  t.equal(e.stderr, 'Cannot find device "vm-x"');
  t.match(e.message, /Cannot find device/, 'people still read it in the message');
  t.ok(isGone(e), 'a missing device is gone');
});

t.test('a program that cannot start carries its errno', async (t) => {
  const err = await execRunner('/nonexistent/vmlet-no-such-binary', []).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(err instanceof VmletError);
  t.equal((err as VmletError).errno, 'ENOENT');
  t.equal((err as VmletError).exitCode, undefined);
  t.notOk(isGone(err), 'a missing binary is not a missing device');
});

t.test('isGone reads the stderr field, never the message', async (t) => {
  t.notOk(isGone(new VmletError('NET_COMMAND_FAILED', 'ip link del x: Cannot find device "x"')), 'message only');
  t.notOk(isGone(new Error('Cannot find device "x"')));
  t.ok(
    isGone(
      new VmletError('NET_COMMAND_FAILED', 'ip netns del x', { exitCode: 1, stderr: 'Cannot remove namespace file "/run/netns/x": No such file or directory' }),
    ),
  );
  t.notOk(isGone(new VmletError('NET_COMMAND_FAILED', 'ip link del x', { exitCode: 2, stderr: 'RTNETLINK answers: Operation not permitted' })));
});

for (const [name, runner] of [
  ['execRunner (posix_spawn)', execRunner],
  ['execFileRunner', execFileRunner],
] as const) {
  t.test(`${name}: the same contract`, async (t) => {
    t.same(await runner('cat', [], 'batch\ninput\n'), { stdout: 'batch\ninput\n', stderr: '' }, 'stdin in, stdout out');
    t.same(await runner('sh', ['-c', 'echo warn >&2']), { stdout: '', stderr: 'warn\n' }, 'stderr of a success is kept');
    const err = await runner('sh', ['-c', 'printf "line1\\nline2\\n" >&2; exit 7']).then(
      () => undefined,
      (e: unknown) => e,
    );
    t.match(err, { code: 'NET_COMMAND_FAILED', exitCode: 7, stderr: 'line1\nline2', errno: undefined });
    t.match((err as Error).message, /^sh -c .*: line1; line2$/, 'the command and the first stderr lines');
    const missing = await runner('vmlet-no-such-binary', ['x']).then(
      () => undefined,
      (e: unknown) => e,
    );
    t.match(missing, { code: 'NET_COMMAND_FAILED', errno: 'ENOENT', exitCode: undefined }, 'a bare name not in PATH');
    const killed = await runner('sh', ['-c', 'kill -KILL $$']).then(
      () => undefined,
      (e: unknown) => e,
    );
    t.match(killed, { code: 'NET_COMMAND_FAILED', exitCode: undefined }, 'killed by a signal: no exit code');
  });
}

t.test('execRunner: a killed child and the output cap are in the fields', async (t) => {
  const killed = await execRunner('sh', ['-c', 'echo dying >&2; kill -KILL $$']).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.match(killed, { code: 'NET_COMMAND_FAILED', stderr: 'dying', details: { signal: 'SIGKILL', timedOut: false, overflowed: false } });
  t.match((killed as Error).message, /killed by SIGKILL; dying/);
  const big = await execRunner('head', ['-c', String(12 * 1048576), '/dev/zero']);
  t.equal(big.stdout.length, 12 * 1048576, '12 MiB of output (nft -j list ruleset can be large)');
  const over = await execRunner('head', ['-c', String(17 * 1048576), '/dev/zero']).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.match(over, { code: 'NET_COMMAND_FAILED', details: { overflowed: true } }, 'over 16 MiB');
});

t.test('splitBatchFailure gives each failed line of ip -force -batch its own stderr', async (t) => {
  const cmds = [
    ['link', 'del', 'vh1'],
    ['netns', 'del', 'vt1'],
    ['link', 'del', 'vh2'],
  ];
  // what ip 6.1 prints (checked by hand)
  const stderr = ['Cannot find device "vh1"', 'Command failed -:1', 'RTNETLINK answers: Operation not permitted', 'Command failed -:3'].join('\n');
  const whole = new VmletError('NET_COMMAND_FAILED', 'ip -force -batch -: …', { exitCode: 1, stderr });
  const [a, b, c] = splitBatchFailure(cmds, whole);
  t.match(a, { code: 'NET_COMMAND_FAILED', exitCode: 1, stderr: 'Cannot find device "vh1"' });
  t.ok(isGone(a), 'line 1 is gone');
  t.equal(b, null, 'line 2 worked');
  t.match(c, { stderr: 'RTNETLINK answers: Operation not permitted' });
  t.notOk(isGone(c), 'line 3 is a real failure');
  t.match(c?.message, /^ip link del vh2: RTNETLINK answers/);
  const enoent = new VmletError('NET_COMMAND_FAILED', 'ip: ENOENT', { errno: 'ENOENT', stderr: '' });
  t.same(splitBatchFailure(cmds, enoent), [enoent, enoent, enoent], 'ip did not start: every line failed');
  const odd = new VmletError('NET_COMMAND_FAILED', 'x', { exitCode: 1, stderr: 'something else' });
  t.same(splitBatchFailure(cmds, odd), [odd, odd, odd], 'no line numbers: every line failed');
});

t.test('IpTools starts programs inside a netns through the runner when it can, else through nsenter', async (t) => {
  const calls: unknown[][] = [];
  const plain: CommandRunner = async (bin, args, input) => {
    calls.push(['host', bin, [...args], input]);
    return { stdout: '[]\n[{"dst":"default"}]\n', stderr: '' };
  };
  const withNs: CommandRunner = Object.assign(plain.bind(null), {
    inNetns: async (ns: string, bin: string, args: readonly string[], input?: string) => {
      calls.push(['netns', ns, bin, [...args], input]);
      return { stdout: '[]\n[{"dst":"default"}]\n', stderr: '' };
    },
  });
  await new IpTools(plain, BINS).nft('table ip x {}\n', '/run/netns/a');
  await new IpTools(withNs, BINS).nft('table ip x {}\n', '/run/netns/a');
  await new IpTools(withNs, BINS).ipBatch([['link', 'set', 'lo', 'up']]);
  t.same(calls, [
    ['host', 'nsenter', ['--net=/run/netns/a', '--', 'nft', '-f', '-'], 'table ip x {}\n'],
    ['netns', '/run/netns/a', 'nft', ['-f', '-'], 'table ip x {}\n'],
    ['host', 'ip', ['-batch', '-'], 'link set lo up\n'],
  ]);
  calls.length = 0;
  const [links, routes] = await new IpTools(withNs, BINS).ipJsonBatch<[unknown[], { dst: string }[]]>(
    [
      ['addr', 'show'],
      ['route', 'show', 'default'],
    ],
    ['-details'],
    '/proc/1/ns/net',
  );
  t.same([links, routes], [[], [{ dst: 'default' }]], 'one JSON document per command');
  t.same(calls, [['netns', '/proc/1/ns/net', 'ip', ['-json', '-details', '-batch', '-'], 'addr show\nroute show default\n']]);
  await t.rejects(new IpTools(withNs, BINS).ipJsonBatch([['addr', 'show']]), { code: 'NET_COMMAND_FAILED' }, 'a document count that does not match');
});

t.test('IpTools.ipEach: one process, an outcome per command', async (t) => {
  const ran: string[] = [];
  const runner: CommandRunner = async (_bin, args, input) => {
    ran.push(`${args.join(' ')} <${input ?? ''}>`);
    throw new VmletError('NET_COMMAND_FAILED', 'ip -force -batch -', { exitCode: 1, stderr: 'Cannot find device "vh1"\nCommand failed -:1' });
  };
  const out = await new IpTools(runner, BINS).ipEach([
    ['link', 'del', 'vh1'],
    ['netns', 'del', 'vt1'],
  ]);
  t.same(ran, ['-force -batch - <link del vh1\nnetns del vt1\n>']);
  t.ok(isGone(out[0]));
  t.equal(out[1], null);
  t.same(await new IpTools(runner, BINS).ipEach([]), [], 'nothing to run: no process');
  t.equal(ran.length, 1);
});
