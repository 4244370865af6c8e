// Exercises the launcher protocol's refusals and failure reports with the real vmlet-launch and raw sockets: unknown uid, forged pid, bad version, denied HELLO, exec and sandbox failures.
import { spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { spawnLauncher, readRunDir, type RunDirState } from '../../src/qemu/launch.js';
import { LauncherServer, type HelloDecision, type LauncherHello } from '../../src/qemu/launcher-server.js';
import { which } from '../support/which.js';

/** A run dir's record without the launcher's start time (the launcher has exited: there is no /proc entry to compare it with). */
function withoutStart(rd: RunDirState): RunDirState {
  const out = { ...rd };
  delete out.launcherStart;
  return out;
}
const nativeDir = fileURLToPath(new URL('../../native/', import.meta.url));
const launcherBinary = path.join(nativeDir, 'build', 'vmlet-launch');

function skipReason(): string | false {
  if (!existsSync(launcherBinary)) {
    if (!which('cc') || !which('make')) return 'vmlet-launch is not built and cc/make are missing';
    const r = spawnSync('make', ['-C', nativeDir], { stdio: 'inherit' });
    if (r.status !== 0) return 'make -C native failed';
  }
  return false;
}
const skip = skipReason();

function netnsSkip(): string | false {
  if (process.getuid?.() !== 0) return 'needs root to make a netns';
  return which('ip') ? false : 'needs ip (iproute2)';
}

/** Connects as a fake launcher, sends `lines`, returns the server's first line ('' if it closed without one). */
async function rawExchange(socketPath: string, lines: string[]): Promise<string> {
  const sock = net.connect(socketPath);
  let got = '';
  sock.on('data', (c: Buffer) => {
    got += c.toString();
    if (got.includes('\n')) sock.destroy();
  });
  await new Promise<void>((resolve, reject) => {
    sock.once('connect', resolve);
    sock.once('error', reject);
  });
  sock.write(lines.map((l) => `${l}\n`).join(''));
  await new Promise<void>((resolve) => {
    sock.on('close', () => resolve());
    sock.on('error', () => resolve());
  });
  return got;
}

t.test('launcher protocol refusals and failures', { skip }, async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'vmlet-proto-'));
  const socketPath = path.join(dir, 'launcher.sock');
  const decide = new Map<string, (h: LauncherHello) => HelloDecision>();
  const hellos: LauncherHello[] = [];
  const server = new LauncherServer({
    socketPath,
    onHello: (h) => {
      hellos.push(h);
      return decide.get(h.uid)?.(h) ?? { action: 'reject', reason: 'no decision in this test' };
    },
  });
  await server.listen();
  t.teardown(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  await t.test('HELLO for a uid the daemon does not know is rejected', async (t) => {
    const uid = randomUUID();
    const reply = await rawExchange(socketPath, [`HELLO 1 ${uid} ${process.pid} NEW`]);
    t.match(reply, /^REJECT unknown-uid .*\n$/);
    t.notOk(
      hellos.some((h) => h.uid === uid),
      'onHello is not even asked',
    );

    const runDir = path.join(dir, uid);
    const l = await spawnLauncher({ launcherBinary, uid, socket: socketPath, runDir, lingerSeconds: 5 });
    t.same(await l.exited, { code: 122, signal: null }, 'the real launcher exits 122 (rejected)');
    t.match(readFileSync(path.join(runDir, 'launcher.log'), 'utf8'), /rejected us: unknown-uid/);
    t.same(withoutStart(await readRunDir(runDir)), { launcherPid: l.pid }, 'no QEMU was ever recorded');
  });

  await t.test('a peer whose SO_PEERCRED pid differs from its claim is rejected', async (t) => {
    const uid = randomUUID();
    server.attach(uid);
    decide.set(uid, () => ({ action: 'accept' }));
    const reply = await rawExchange(socketPath, [`HELLO 1 ${uid} 1 RUNNING 4242`]);
    t.match(reply, /^REJECT pid-mismatch claimed pid 1 but the socket peer is pid \d+\n$/);
    t.notOk(
      hellos.some((h) => h.uid === uid),
      'onHello is not asked',
    );
    const ok = await rawExchange(socketPath, [`HELLO 1 ${uid} ${process.pid} RUNNING 4242`]).catch(() => '');
    t.equal(ok, 'OK\n', 'the same HELLO with the true pid is accepted');
    server.detach(uid);
  });

  await t.test('unsupported protocol version and garbage are rejected', async (t) => {
    const uid = randomUUID();
    server.attach(uid);
    t.match(await rawExchange(socketPath, [`HELLO 2 ${uid} ${process.pid} NEW`]), /^REJECT version /);
    t.match(await rawExchange(socketPath, ['STARTED 12']), /^REJECT bad-hello expected HELLO/);
    t.match(await rawExchange(socketPath, [`HELLO 1 ${uid} ${process.pid} SLEEPING`]), /^REJECT bad-hello /);
    server.detach(uid);
  });

  await t.test('onHello rejection: REJECT denied, launcher exits 122', async (t) => {
    const uid = randomUUID();
    server.attach(uid);
    decide.set(uid, () => ({ action: 'reject', reason: 'pod does not match' }));
    t.match(await rawExchange(socketPath, [`HELLO 1 ${uid} ${process.pid} NEW`]), /^REJECT denied pod does not match\n$/);
    const l = await spawnLauncher({ launcherBinary, uid, socket: socketPath, runDir: path.join(dir, uid), lingerSeconds: 5 });
    t.same(await l.exited, { code: 122, signal: null });
    server.detach(uid);
  });

  await t.test('accepting a NEW launcher without argv is refused as no-argv', async (t) => {
    const uid = randomUUID();
    server.attach(uid);
    decide.set(uid, () => ({ action: 'accept' }));
    t.match(await rawExchange(socketPath, [`HELLO 1 ${uid} ${process.pid} NEW`]), /^REJECT no-argv /);
    server.detach(uid);
  });

  await t.test('exec failure is reported as LAUNCHER_EXEC and the launcher exits 127', async (t) => {
    const uid = randomUUID();
    const link = server.attach(uid);
    decide.set(uid, () => ({ action: 'launch', argv: ['/nonexistent/qemu-system-x86_64', '-S'], fds: [] }));
    const failed = link.waitFor('failed', 10000);
    const l = await spawnLauncher({ launcherBinary, uid, socket: socketPath, runDir: path.join(dir, uid), lingerSeconds: 5 });
    const [failure] = await failed;
    t.equal(failure.reason, 'exec');
    t.equal(failure.error.code, 'LAUNCHER_EXEC');
    t.match(failure.error.message, /No such file or directory/);
    t.same(await l.exited, { code: 127, signal: null });
    server.detach(uid);
  });

  await t.test('sandbox join failure is reported as LAUNCHER_SANDBOX and the launcher exits 121', async (t) => {
    const uid = randomUUID();
    const link = server.attach(uid);
    decide.set(uid, () => ({ action: 'launch', argv: ['/bin/true'], fds: [] }));
    const failed = link.waitFor('failed', 10000);
    const l = await spawnLauncher({
      launcherBinary,
      uid,
      socket: socketPath,
      runDir: path.join(dir, uid),
      lingerSeconds: 5,
      netns: path.join(dir, 'no-such-netns'),
    });
    const [failure] = await failed;
    t.equal(failure.reason, 'netns');
    t.equal(failure.error.code, 'LAUNCHER_SANDBOX');
    t.match(failure.error.message, /no-such-netns/);
    t.same(await l.exited, { code: 121, signal: null });
    t.same(withoutStart(await readRunDir(path.join(dir, uid))), { launcherPid: l.pid }, 'QEMU never started');
    server.detach(uid);
  });

  await t.test('NETNS from the daemon: a netns that cannot be joined fails like --netns, before anything is forked', async (t) => {
    const uid = randomUUID();
    const link = server.attach(uid);
    decide.set(uid, () => ({ action: 'launch', argv: ['/bin/true'], fds: [], netns: path.join(dir, 'no-such-netns') }));
    const failed = link.waitFor('failed', 10000);
    const l = await spawnLauncher({ launcherBinary, uid, socket: socketPath, runDir: path.join(dir, uid), lingerSeconds: 5 });
    const [failure] = await failed;
    t.equal(failure.reason, 'netns');
    t.equal(failure.error.code, 'LAUNCHER_SANDBOX');
    t.match(failure.error.message, /no-such-netns/);
    t.same(await l.exited, { code: 121, signal: null });
    t.same(withoutStart(await readRunDir(path.join(dir, uid))), { launcherPid: l.pid }, 'nothing was started');
    server.detach(uid);
  });

  await t.test('NETNS from the daemon: the launcher joins it just before it forks, so the child runs inside', { skip: netnsSkip() }, async (t) => {
    const uid = randomUUID();
    const ns = `vmlet-proto-${uid.slice(0, 8)}`;
    t.equal(spawnSync('ip', ['netns', 'add', ns]).status, 0, 'ip netns add');
    t.teardown(() => void spawnSync('ip', ['netns', 'del', ns]));
    const link = server.attach(uid);
    decide.set(uid, () => ({ action: 'launch', argv: ['/bin/sleep', '30'], fds: [], netns: `/run/netns/${ns}` }));
    const started = link.waitFor('started', 10000);
    const l = await spawnLauncher({ launcherBinary, uid, socket: socketPath, runDir: path.join(dir, uid), lingerSeconds: 5 });
    const [childPid] = await started;
    const want = statSync(`/run/netns/${ns}`).ino;
    t.equal(statSync(`/proc/${childPid}/ns/net`).ino, want, "the child's netns is the one NETNS named");
    t.equal(statSync(`/proc/${l.pid}/ns/net`).ino, want, 'the launcher is in it too');
    process.kill(childPid, 'SIGKILL');
    await l.exited;
    server.detach(uid);
  });

  await t.test('a daemon that never answers: the launcher gives up after --linger with 124', async (t) => {
    const uid = randomUUID();
    const l = await spawnLauncher({
      launcherBinary,
      uid,
      socket: path.join(dir, 'nobody-listens.sock'),
      runDir: path.join(dir, uid),
      lingerSeconds: 1,
    });
    const keep = setInterval(() => undefined, 1000);
    t.same(await l.exited, { code: 124, signal: null });
    clearInterval(keep);
  });

  await t.test('bad argv from the daemon is refused before anything is sent', async (t) => {
    const uid = randomUUID();
    const link = server.attach(uid);
    decide.set(uid, () => ({ action: 'launch', argv: ['relative/qemu'], fds: [] }));
    const failed = link.waitFor('failed', 5000);
    const reply = rawExchange(socketPath, [`HELLO 1 ${uid} ${process.pid} NEW`]);
    const [failure] = await failed;
    t.equal(failure.error.code, 'LAUNCHER_BAD_ARGV');
    t.equal(await reply, '', 'connection dropped without an ARGV');
    server.detach(uid);
  });
});
