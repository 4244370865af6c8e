// Unit tests for the launcher protocol on the daemon side: line parsing, the ARGV message, and pid-namespace translation with a fake /proc.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import t from 'tap';
import { encodeArgvMessage, encodeNetnsMessage, LauncherServer, MAX_FDS, parseLauncherLine, type LauncherHello } from '../../src/qemu/launcher-server.js';

t.test('parseLauncherLine', async (t) => {
  t.same(parseLauncherLine('HELLO 1 abc-1 42 NEW'), { type: 'hello', version: '1', uid: 'abc-1', launcherPid: 42, state: { kind: 'new' } });
  t.same(parseLauncherLine('HELLO 1 abc 42 RUNNING 43'), { type: 'hello', version: '1', uid: 'abc', launcherPid: 42, state: { kind: 'running', qemuPid: 43 } });
  t.same(parseLauncherLine('HELLO 1 abc 42 EXITED 43 signal=9'), {
    type: 'hello',
    version: '1',
    uid: 'abc',
    launcherPid: 42,
    state: { kind: 'exited', qemuPid: 43, status: { kind: 'signal', signal: 9 } },
  });
  t.same(parseLauncherLine('STARTED 43'), { type: 'started', qemuPid: 43 });
  t.same(parseLauncherLine('EXITED exit=1'), { type: 'exited', status: { kind: 'exit', code: 1 } });
  t.same(parseLauncherLine('ERROR netns setns /run/netns/x: Operation not permitted'), {
    type: 'error',
    reason: 'netns',
    text: 'setns /run/netns/x: Operation not permitted',
  });
  for (const bad of [
    '',
    'HELLO',
    'HELLO 1 abc 42',
    'HELLO 1 abc 42 NEW extra',
    'HELLO 1 a/b 42 NEW',
    'HELLO 1 abc -1 NEW',
    'HELLO 1 abc 42 RUNNING',
    'HELLO 1 abc 42 EXITED 43',
    'HELLO 1 abc 42 EXITED 43 exit=x',
    'STARTED',
    'STARTED 0',
    'EXITED',
    'EXITED 3',
    'ERROR',
    'OK',
    'started 1',
  ]) {
    t.throws(() => parseLauncherLine(bad), { code: 'LAUNCHER_BAD_MESSAGE' }, JSON.stringify(bad));
  }
});

t.test('encodeNetnsMessage', async (t) => {
  t.equal(encodeNetnsMessage('/run/netns/vmlet-1a2b3c4d').toString(), 'NETNS /run/netns/vmlet-1a2b3c4d\n');
  for (const bad of ['run/netns/x', '/run/netns/a\nARGV 1 0', '/a\0b', `/${'x'.repeat(950)}`]) {
    t.throws(() => encodeNetnsMessage(bad), { code: 'LAUNCHER_BAD_ARGV' }, `refused: ${JSON.stringify(bad.slice(0, 30))}`);
  }
});

t.test('encodeArgvMessage', async (t) => {
  const m = encodeArgvMessage(['/usr/bin/qemu', '-S', ''], 2);
  t.equal(m.toString('latin1'), 'ARGV 18 2\n/usr/bin/qemu\0-S\0\0');
  t.equal(encodeArgvMessage(['/q', 'é'], 0).toString('utf8'), 'ARGV 6 0\n/q\0é\0', 'length counts bytes, not chars');
  t.throws(() => encodeArgvMessage([], 0), { code: 'LAUNCHER_BAD_ARGV' });
  t.throws(() => encodeArgvMessage(['qemu'], 0), { code: 'LAUNCHER_BAD_ARGV' }, 'relative argv[0]');
  t.throws(() => encodeArgvMessage(['/q', 'a\0b'], 0), { code: 'LAUNCHER_BAD_ARGV' });
  t.throws(() => encodeArgvMessage(['/q'], MAX_FDS + 1), { code: 'LAUNCHER_BAD_ARGV' });
  t.throws(() => encodeArgvMessage(['/q', 'x'.repeat(70000)], 0), { code: 'LAUNCHER_BAD_ARGV' });
});

t.test('a launcher in its own pid namespace (kubernetes): pids are translated through /proc', async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'vmlet-unit-pidns-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const proc = path.join(dir, 'proc');
  const me = process.pid; // SO_PEERCRED of our own connection
  const qemuHostPid = 987654;
  // The "launcher" (us) is pid 1 in its namespace; its child QEMU is 7 there and qemuHostPid here.
  mkdirSync(path.join(proc, String(me), 'task', String(me)), { recursive: true });
  writeFileSync(path.join(proc, String(me), 'status'), `Name:\tvmlet-launch\nNSpid:\t${me}\t1\n`);
  writeFileSync(path.join(proc, String(me), 'task', String(me), 'children'), `${qemuHostPid} `);
  mkdirSync(path.join(proc, String(qemuHostPid)), { recursive: true });
  writeFileSync(path.join(proc, String(qemuHostPid), 'status'), `Name:\tqemu\nNSpid:\t${qemuHostPid}\t7\n`);

  const hellos: LauncherHello[] = [];
  const server = new LauncherServer({
    socketPath: path.join(dir, 'l.sock'),
    procRoot: proc,
    onHello: (h) => {
      hellos.push(h);
      return { action: 'accept' };
    },
  });
  await server.listen();
  t.teardown(() => server.close());
  const link = server.attach('vmi-1');

  const sock = net.connect(path.join(dir, 'l.sock'));
  const reply = new Promise<string>((resolve) => sock.once('data', (c: Buffer) => resolve(c.toString())));
  sock.write('HELLO 1 vmi-1 1 RUNNING 7\n');
  t.equal(await reply, 'OK\n', 'pid 1 is accepted: it is the peer inside its own namespace');
  t.equal(hellos[0]?.launcherPid, 1);
  t.equal(hellos[0]?.peer.pid, me);
  t.same(hellos[0]?.state, { kind: 'running', qemuPid: qemuHostPid }, 'QEMU pid translated to the daemon view');
  t.same(link.state, { kind: 'running', qemuPid: qemuHostPid });

  const exited = link.waitFor('exited', 2000);
  sock.write('EXITED exit=0\n');
  t.same(await exited, [{ kind: 'exit', code: 0 }, qemuHostPid]);
  const disconnected = link.waitFor('disconnected', 2000);
  sock.destroy();
  await disconnected;
  t.notOk(link.connected);
});

t.test("STARTED: a nested launcher's QEMU pid is translated, another launcher's is taken as it is", async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'vmlet-unit-pidns-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const proc = path.join(dir, 'proc');
  const me = process.pid;
  const qemuHostPid = 987655;
  // `inner`: the QEMU child's pid in its own namespace, were the launcher's pids translated.
  const fakeProc = (nspid: string, inner: number): void => {
    rmSync(proc, { recursive: true, force: true });
    mkdirSync(path.join(proc, String(me), 'task', String(me)), { recursive: true });
    writeFileSync(path.join(proc, String(me), 'status'), `Name:\tvmlet-launch\nNSpid:\t${nspid}\n`);
    writeFileSync(path.join(proc, String(me), 'task', String(me), 'children'), `${qemuHostPid} `);
    mkdirSync(path.join(proc, String(qemuHostPid)), { recursive: true });
    writeFileSync(path.join(proc, String(qemuHostPid), 'status'), `Name:\tqemu\nNSpid:\t${qemuHostPid}\t${inner}\n`);
  };
  const server = new LauncherServer({
    socketPath: path.join(dir, 'l.sock'),
    procRoot: proc,
    onHello: () => ({ action: 'launch', argv: ['/usr/bin/qemu-system-x86_64'], fds: [] }),
  });
  await server.listen();
  t.teardown(() => server.close());

  const startedVia = async (uid: string, helloPid: number, reported: number): Promise<unknown> => {
    const link = server.attach(uid);
    const sock = net.connect(path.join(dir, 'l.sock'));
    t.teardown(() => sock.destroy());
    const argv = new Promise<string>((resolve) => sock.once('data', (c: Buffer) => resolve(c.toString())));
    sock.write(`HELLO 1 ${uid} ${helloPid} NEW\n`);
    t.match(await argv, /^ARGV /, `${uid}: the argv is handed over`);
    const started = link.waitFor('started', 2000);
    sock.write(`STARTED ${reported}\n`);
    return (await started)[0];
  };

  fakeProc(`${me}\t1`, 7);
  t.equal(await startedVia('vmi-nested', 1, 7), qemuHostPid, "in a pod's pid namespace: 7 there is QEMU's pid here");
  fakeProc(`${me}`, 4242); // a translation would wrongly find the child here
  t.equal(await startedVia('vmi-flat', me, 4242), 4242, 'in our own namespace: the pid as reported, no procfs look-up');
});
