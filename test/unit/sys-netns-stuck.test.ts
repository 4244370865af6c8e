// A thread that cannot return to its own netns: withNetns throws SYS_SETNS_RESTORE and first hands it to the process's handler (the daemon's logs and exits).
import fs from 'node:fs';
import t from 'tap';
import { isVmletError, type VmletError } from '../../src/errors.js';
import { onNetnsStuck, withNetns } from '../../src/sys/netns.js';

const skip = process.getuid?.() !== 0 ? 'setns needs root' : !fs.existsSync('/proc/thread-self/ns/net') ? 'no /proc/thread-self/ns/net' : undefined;

t.test('the way back fails: the handler gets SYS_SETNS_RESTORE before it is thrown', { skip: skip ?? false }, async (t) => {
  const seen: VmletError[] = [];
  onNetnsStuck((e) => seen.push(e));
  t.teardown(() => onNetnsStuck(undefined));
  const own = fs.readlinkSync('/proc/thread-self/ns/net');
  // "Into" the thread's own netns, and "back" to a file that is no netns: setns back fails (EINVAL) for real, while
  // the thread stays where it was.
  const err = t.throws(() => withNetns('/proc/thread-self/ns/net', () => 'ran', { selfNetns: '/proc/self/status' })) as unknown;
  t.ok(isVmletError(err, 'SYS_SETNS_RESTORE'), 'SYS_SETNS_RESTORE');
  t.equal(seen.length, 1, 'the handler was called once');
  t.equal(seen[0], err, 'with the error that is thrown');
  t.equal(fs.readlinkSync('/proc/thread-self/ns/net'), own, 'the thread is still in its own netns');

  onNetnsStuck(undefined);
  t.throws(() => withNetns('/proc/thread-self/ns/net', () => 'ran', { selfNetns: '/proc/self/status' }), { code: 'SYS_SETNS_RESTORE' });
  t.equal(seen.length, 1, 'without a handler it is only thrown');
});
