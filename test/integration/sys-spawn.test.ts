// spawnDetached (posix_spawn): exit codes and signals are reported, the child has its own session, default signals and only stdio, and it is reaped.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { decodeWaitStatus, spawnDetached } from '../../src/sys/spawn.js';

const skip = process.platform !== 'linux' ? 'needs Linux (posix_spawn through glibc)' : false;

t.test('wait statuses decode like Node reports them', async (t) => {
  t.same(decodeWaitStatus(0), { code: 0, signal: null });
  t.same(decodeWaitStatus(3 << 8), { code: 3, signal: null });
  t.same(decodeWaitStatus(9), { code: null, signal: 'SIGKILL' });
  t.same(decodeWaitStatus(15 | 0x80), { code: null, signal: 'SIGTERM' }, 'core-dump bit ignored');
});

t.test('spawnDetached', { skip }, async (t) => {
  const keep = setInterval(() => undefined, 1000); // signal listeners do not keep the loop alive
  t.teardown(() => clearInterval(keep));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-spawn-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const log = path.join(dir, 'out.log');
  const fd = fs.openSync(log, 'a');
  const script = [
    'echo "env=$FOO"',
    'grep -E "^(SigIgn|SigBlk):" /proc/self/status',
    'echo "sid=$(cut -d" " -f6 /proc/$$/stat) pid=$$"',
    'ls /proc/$$/fd | sort -n | tr "\\n" " "; echo',
    'read line || echo "stdin=eof"',
    'echo to-stderr >&2',
    'exit 3',
  ].join('\n');
  const mine = fs.openSync(path.join(dir, 'mine'), 'w'); // an fd of this process (close-on-exec, as Node opens them)
  t.teardown(() => fs.closeSync(mine));
  const a = spawnDetached({ file: '/bin/sh', argv: ['sh', '-c', script], env: { FOO: 'bar', PATH: '/usr/bin:/bin' }, outputFd: fd });
  fs.closeSync(fd);
  t.same(await a.exited, { code: 3, signal: null }, 'the exit code');
  const out = fs.readFileSync(log, 'utf8');
  t.match(out, /env=bar/, 'the environment given, and nothing else needed');
  t.match(out, new RegExp(`sid=${a.pid} pid=${a.pid}`), 'a session of its own (setsid)');
  t.match(out, /SigBlk:\s+0{16}/, 'no signal blocked');
  const ign = BigInt(`0x${/SigIgn:\s+([0-9a-f]+)/.exec(out)?.[1] ?? 'ffff'}`);
  t.equal(ign & (1n << 12n), 0n, 'SIGPIPE (ignored by Node) is back at its default');
  const fds = (/^((?:\d+ )+)$/m.exec(out)?.[1] ?? '').trim().split(' ').map(Number);
  t.same(fds.slice(0, 3), [0, 1, 2], 'stdin, stdout, stderr');
  t.notOk(fds.includes(mine), `this process's own fd ${mine} is not inherited`);
  t.notOk(fds.includes(fd), `nor the output fd ${fd} under its own number`);
  t.match(out, /stdin=eof/, 'stdin is /dev/null');
  t.match(out, /to-stderr/, 'stderr goes to the same file');
  t.notOk(fs.existsSync(`/proc/${a.pid}`), 'reaped: no zombie left');

  const b = spawnDetached({ file: '/bin/sleep', argv: ['sleep', '30'], env: {}, outputFd: 2 });
  process.kill(b.pid, 'SIGKILL');
  t.same(await b.exited, { code: null, signal: 'SIGKILL' }, 'a signal is reported by name');

  t.throws(
    () => spawnDetached({ file: path.join(dir, 'missing'), argv: ['x'], env: {}, outputFd: 2 }),
    { code: 'SYS_SPAWN_FAILED', message: /ENOENT/ },
    'a missing program fails at once with its errno',
  );
});
