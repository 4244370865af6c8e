// runPiped (posix_spawn with pipes): stdin, stdout/stderr, exit codes and signals, ENOENT, the timeout, large output, no inherited fd, a netns of its choosing, and every child reaped under concurrency.
import { execFile, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { closeFd, libc } from '../../src/sys/libc.js';
import { runPiped, type PipedOptions } from '../../src/sys/spawn-piped.js';
import { spawnDetached, unreapedChildren } from '../../src/sys/spawn.js';

const skip = process.platform !== 'linux' ? 'needs Linux (posix_spawn through glibc)' : false;
const dupFn = libc.func('int dup(int fd)') as (fd: number) => number;

const run = (file: string, args: string[], more: Partial<PipedOptions> = {}) => runPiped({ file, args, timeoutMs: 10_000, maxBuffer: 1 << 20, ...more });

/** This process's children that are zombies (exited, not reaped). */
function zombies(): number[] {
  const out: number[] = [];
  for (const p of fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const stat = fs.readFileSync(`/proc/${p}/stat`, 'utf8');
      const [state, ppid] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(ppid) === process.pid && state === 'Z') out.push(Number(p));
    } catch {
      /* gone meanwhile */
    }
  }
  return out;
}

t.test('runPiped', { skip }, async (t) => {
  t.test('stdin in, stdout and stderr apart, the exit code', async (t) => {
    const r = await run('sh', ['-c', 'read a; echo "got $a"; echo oops >&2; exit 4'], { input: 'hello\n' });
    t.match(r, { stdout: 'got hello\n', stderr: 'oops\n', code: 4, signal: null, timedOut: false, overflowed: false });
    const none = await run('sh', ['-c', 'cat; echo "eof at once"']);
    t.equal(none.stdout, 'eof at once\n', 'without input stdin is at EOF');
    t.equal((await run('true', [])).code, 0);
  });

  t.test('a signal is reported by name', async (t) => {
    const r = await run('sh', ['-c', 'kill -TERM $$']);
    t.match(r, { code: null, signal: 'SIGTERM', timedOut: false });
  });

  t.test('a missing program is an errno, not a crash', async (t) => {
    await t.rejects(run('vmlet-no-such-program', []), { code: 'SYS_SPAWN_FAILED', errno: 'ENOENT' }, 'bare name looked up in PATH');
    await t.rejects(run('/nonexistent/vmlet-x', []), { code: 'SYS_SPAWN_FAILED', errno: 'ENOENT' }, 'absolute path');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-piped-'));
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    fs.writeFileSync(path.join(dir, 'x'), 'not a program', { mode: 0o644 });
    await t.rejects(run(path.join(dir, 'x'), []), { code: 'SYS_SPAWN_FAILED', errno: 'EACCES' }, 'not executable');
    const before = fs.readdirSync('/proc/self/fd').length;
    for (let i = 0; i < 20; i++) await t.rejects(run('vmlet-no-such-program', [], { input: 'x' }));
    await t.rejects(run('true', [], { netnsPath: '/nonexistent/netns' }), { code: 'SYS_SETNS' }, 'a missing netns is refused');
    t.equal(fs.readdirSync('/proc/self/fd').length, before, 'no pipe end left open by the failures');
    t.equal((await run('sh', ['-c', 'exit 0'])).code, 0, 'the next run is fine');
  });

  t.test('the timeout SIGKILLs the child', async (t) => {
    const t0 = Date.now();
    const r = await run('sleep', ['30'], { timeoutMs: 200 });
    t.match(r, { code: null, signal: 'SIGKILL', timedOut: true });
    t.ok(Date.now() - t0 < 5000, 'settled soon after the timeout');
    t.notOk(fs.existsSync(`/proc/${r.pid}`), 'and reaped');
  });

  t.test('a grandchild holding the pipes does not hold the result past the timeout', async (t) => {
    const r = await run('sh', ['-c', 'sleep 30 & echo $!; exit 0'], { timeoutMs: 300 });
    const grandchild = Number(r.stdout.trim());
    t.teardown(() => {
      try {
        process.kill(grandchild, 'SIGKILL');
      } catch {
        /* gone */
      }
    });
    t.match(r, { code: 0, timedOut: true }, 'the child exited by itself; the pipes were given up at the timeout');
  });

  t.test('large output and input', async (t) => {
    const big = await run('head', ['-c', String(12 * 1048576), '/dev/zero'], { maxBuffer: 16 * 1048576 });
    t.equal(big.stdout.length, 12 * 1048576, '12 MiB of stdout, whole');
    t.equal(big.overflowed, false);
    const over = await run('head', ['-c', String(40 * 1048576), '/dev/zero'], { maxBuffer: 16 * 1048576 });
    t.match(over, { overflowed: true, signal: 'SIGKILL' }, 'past the cap the child is killed');
    t.equal(over.stdout.length, 16 * 1048576, 'and the output cut at the cap');
    const input = randomBytes(3 * 1048576).toString('hex');
    const wc = await run('wc', ['-c'], { input });
    t.equal(wc.stdout.trim(), String(input.length), '6 MiB through stdin');
    const early = await run('head', ['-c', '1'], { input });
    t.match(early, { code: 0, stdout: input.slice(0, 1) }, 'a child that stops reading (EPIPE) is no error');
  });

  t.test('no fd of this process reaches the child', async (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-piped-'));
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const file = fs.openSync(path.join(dir, 'mine'), 'w'); // close-on-exec, as Node opens them
    const inherited = dupFn(file); // dup(2) drops close-on-exec: an fd as a careless parent would hand down
    t.ok(inherited > 2, 'a plain dup');
    t.teardown(() => {
      fs.closeSync(file);
      closeFd(inherited);
    });
    const r = await run('ls', ['-l', '/proc/self/fd'], { input: 'x' });
    const fds = r.stdout
      .split('\n')
      .map((l) => /\s(\d+) -> (.*)$/.exec(l))
      .filter((m) => m !== null)
      .map((m) => ({ fd: Number(m[1]), to: m[2]! }));
    const listed = fds.map((f) => f.fd);
    t.same(listed.slice(0, 3), [0, 1, 2], 'stdin, stdout, stderr');
    t.ok(
      fds.slice(0, 3).every((f) => f.to.startsWith('pipe:')),
      'all three are pipes',
    );
    t.ok(
      fds.slice(3).every((f) => /^\/proc\/\d+\/fd$/.test(f.to)),
      `beyond them only ls's own directory fd: ${JSON.stringify(fds.slice(3))}`,
    );
    t.notOk(listed.includes(file), `the close-on-exec fd ${file} is not there`);
    t.notOk(listed.includes(inherited), `nor the inheritable fd ${inherited}`);
  });

  t.test('many at once, mixed with spawnDetached and execFile: every one is reaped', async (t) => {
    const keep = setInterval(() => undefined, 1000); // signal listeners do not keep the loop alive
    t.teardown(() => clearInterval(keep));
    const piped = Array.from({ length: 60 }, (_, i) => run('sh', ['-c', `echo ${i}; exit ${i % 7}`]));
    const detached = Array.from({ length: 10 }, (_, i) => spawnDetached({ file: '/bin/sh', argv: ['sh', '-c', `exit ${i}`], env: {}, outputFd: 2 }).exited);
    const libuv = Array.from(
      { length: 10 },
      (_, i) =>
        new Promise<number | null>((resolve) => {
          execFile('sh', ['-c', `exit ${i}`], (err) => resolve(err ? ((err as { code?: number }).code ?? null) : 0));
        }),
    );
    const [a, b, c] = await Promise.all([Promise.all(piped), Promise.all(detached), Promise.all(libuv)]);
    t.same(
      a.map((r) => [r.code, r.stdout]),
      a.map((_, i) => [i % 7, `${i}\n`]),
      'each piped run has its own code and output',
    );
    t.same(
      b.map((e) => e.code),
      b.map((_, i) => i),
      "spawnDetached's children too (one SIGCHLD handler for both)",
    );
    t.same(
      c,
      c.map((_, i) => i),
      "libuv's children are left to libuv",
    );
    t.equal(unreapedChildren(), 0, 'none waited for any more');
    t.same(zombies(), [], 'no zombie children');
  });

  t.test('inside a netns', { skip: process.getuid?.() !== 0 ? 'needs root (ip netns add)' : false }, async (t) => {
    const name = `vmlet-piped-${randomBytes(3).toString('hex')}`;
    execFileSync('ip', ['netns', 'add', name]);
    t.teardown(() => execFileSync('ip', ['netns', 'del', name]));
    const nsPath = `/run/netns/${name}`;
    const r = await run('readlink', ['/proc/self/ns/net'], { netnsPath: nsPath });
    t.equal(r.stdout.trim(), `net:[${fs.statSync(nsPath).ino}]`, 'the child runs in the netns given');
    const back = await run('readlink', ['/proc/self/ns/net']);
    t.equal(back.stdout.trim(), fs.readlinkSync('/proc/thread-self/ns/net'), 'and this thread is back in its own');
  });
});
