// A failed command carries its exit code and stderr as fields, and "already gone" is read from the stderr field only.
import t from 'tap';
import { VmletError } from '../../src/errors.js';
import { execRunner } from '../../src/net/exec.js';
import { isGone } from '../../src/net/ip-tools.js';

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
