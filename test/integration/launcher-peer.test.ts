// Both ends of the launcher socket check who is on the other end with SO_PEERCRED: the daemon refuses a HELLO from another uid (whatever the socket's file mode), and vmlet-launch refuses a "daemon" that is not root, then works with the real one.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import t from 'tap';
import { spawnLauncher } from '../../src/qemu/launch.js';
import { LauncherServer, type HelloDecision, type LauncherHello } from '../../src/qemu/launcher-server.js';
import { cleanNode, forgeHello, NOBODY } from '../support/launcher-forger.js';
import { which } from '../support/which.js';

const nativeDir = fileURLToPath(new URL('../../native/', import.meta.url));
const launcherBinary = path.join(nativeDir, 'build', 'vmlet-launch');

function skipReason(): string | false {
  if (process.getuid?.() !== 0) return 'needs root: peers of another uid are made with setuid';
  if (!existsSync(launcherBinary)) {
    if (!which('cc') || !which('make')) return 'vmlet-launch is not built and cc/make are missing';
    if (spawnSync('make', ['-C', nativeDir], { stdio: 'inherit' }).status !== 0) return 'make -C native failed';
  }
  return false;
}
const skip = skipReason();

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function waitUntil(what: string, ok: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

// A "daemon" that listens on the socket path as nobody and reports every connection and every byte it gets.
const FAKE_DAEMON = `
const net = require('node:net');
const srv = net.createServer((c) => {
  process.stdout.write('CONNECTED\\n');
  c.on('data', (d) => process.stdout.write('GOT ' + JSON.stringify(d.toString('latin1')) + '\\n'));
  c.on('error', () => undefined);
});
srv.listen(process.argv[1], () => process.stdout.write('LISTENING\\n'));
`;

t.test('the daemon side: a HELLO from another uid is refused on the main socket, even with mode 0666', { skip }, async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'vmlet-peer-'));
  chmodSync(dir, 0o755); // nobody must reach the socket: the check may not lean on the file mode
  const socketPath = path.join(dir, 'launcher.sock');
  const hellos: LauncherHello[] = [];
  const logs: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n').filter(Boolean)) logs.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  const server = new LauncherServer({
    socketPath,
    socketMode: 0o666,
    logger: pino({ level: 'info' }, sink),
    onHello: (h): HelloDecision => {
      hellos.push(h);
      return { action: 'accept' };
    },
  });
  await server.listen();
  t.teardown(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const uid = randomUUID();
  const link = server.attach(uid);

  const forged = await forgeHello(socketPath, `HELLO 1 ${uid} {pid} EXITED 4242 exit=0`, NOBODY);
  t.equal(forged.uid, NOBODY, 'the forger runs as nobody');
  t.equal(forged.reply, `REJECT peer-uid the socket peer (pid ${forged.pid}) runs as uid ${NOBODY}, not 0\n`);
  t.same(hellos, [], 'onHello is not asked');
  t.equal(link.state, undefined, 'the link learnt nothing');
  t.notOk(link.connected);
  const warn = logs.find((l) => l.reject === 'peer-uid');
  t.match(
    warn,
    { launcherPeerPid: forged.pid, launcherPeerUid: NOBODY, peerUid: NOBODY, expectedUid: 0, uid },
    "the refusal is logged with the peer's pid and uid",
  );

  const root = await forgeHello(socketPath, `HELLO 1 ${uid} {pid} RUNNING 4242`);
  t.equal(root.reply, 'OK\n', 'the same HELLO from root is heard');
  t.equal(hellos.length, 1);
});

t.test('the launcher side: a listener that is not root gets no HELLO; the real daemon then gets it', { skip }, async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'vmlet-peer-'));
  chmodSync(dir, 0o755);
  const sockDir = path.join(dir, 'sock');
  mkdirSync(sockDir);
  chownSync(sockDir, NOBODY, NOBODY); // nobody binds the socket here
  const socketPath = path.join(sockDir, 'launcher.sock');
  const runDir = path.join(dir, 'run');
  const uid = randomUUID();
  let fake: ChildProcess | undefined;
  let server: LauncherServer | undefined;
  const keepAlive = setInterval(() => undefined, 1000); // the launcher is not one of our event loop's handles
  t.teardown(async () => {
    clearInterval(keepAlive);
    fake?.kill('SIGKILL');
    await server?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const [file, argv] = cleanNode(['-e', FAKE_DAEMON, socketPath]);
  fake = spawn(file, argv, { cwd: '/', uid: NOBODY, gid: NOBODY, stdio: ['ignore', 'pipe', 'inherit'] });
  let seen = '';
  fake.stdout?.on('data', (b: Buffer) => (seen += b.toString()));
  await waitUntil('the fake daemon to listen', () => seen.includes('LISTENING'), 10_000);

  const l = await spawnLauncher({ launcherBinary, uid, socket: socketPath, runDir, lingerSeconds: 20 });
  let launcherExit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  void l.exited.then((x) => (launcherExit = x));
  // The launcher retries with backoff (100 ms doubling to 2 s): several connections in 2.5 s.
  await sleep(2_500);
  const connections = seen.split('\n').filter((x) => x === 'CONNECTED').length;
  t.ok(connections >= 3, `the launcher connected ${connections} times and dropped each connection`);
  t.notMatch(seen, /GOT/, 'not one byte reached the fake daemon: no HELLO, no uid');
  t.equal(launcherExit, undefined, 'the launcher keeps trying, as for an unreachable daemon');
  const log = readFileSync(path.join(runDir, 'launcher.log'), 'utf8');
  const refusals = log.split('\n').filter((x) => x.includes(`refusing ${socketPath}: its peer (pid ${fake.pid}) runs as uid ${NOBODY}, not 0`));
  t.equal(refusals.length, 1, 'the refusal is logged once for that peer');
  t.notMatch(log, /connected to daemon/, 'the launcher never took it for the daemon');

  // The real daemon comes: the same launcher, still waiting, is served by it.
  fake.kill('SIGKILL');
  await new Promise((r) => fake?.once('exit', r));
  const hellos: LauncherHello[] = [];
  server = new LauncherServer({
    socketPath,
    onHello: (h): HelloDecision => {
      hellos.push(h);
      return { action: 'launch', argv: ['/bin/sleep', '30'], fds: [] };
    },
  });
  await server.listen();
  const link = server.attach(uid);
  const [childPid] = await link.waitFor('started', 10_000);
  t.equal(hellos[0]?.peer.pid, l.pid, 'the HELLO came from the launcher');
  t.equal(hellos[0]?.peer.uid, 0);
  t.match(readFileSync(`/proc/${childPid}/cmdline`, 'utf8'), /^\/bin\/sleep\x0030\x00$/, 'the argv the real daemon sent runs');
  process.kill(childPid, 'SIGKILL');
  t.same(await l.exited, { code: 137, signal: null }, "the launcher ends with its child's status");
});
