// Fakes the kubelet's part of a launcher pod for real (emptyDir folder, pod cgroup, uid 107, the pod's own mount view) and runs vmlet-launch and a TCG QEMU in it: the pod's socket accepts only that pod's launcher of that VMI.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import {
  chmodSync,
  chownSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readlinkSync,
  rmSync,
  rmdirSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import t from 'tap';
import { PodLauncherSockets, chownForPod, podRunVolumeDir } from '../../src/daemon/pod-launcher-sockets.js';
import { isLiveProcessFor } from '../../src/qemu/launch.js';
import { LauncherServer, type HelloDecision, type LauncherHello } from '../../src/qemu/launcher-server.js';
import { podUidOfPid } from '../../src/qemu/pod-identity.js';
import { which } from '../support/which.js';

const nativeDir = fileURLToPath(new URL('../../native/', import.meta.url));
const launcherBinary = path.join(nativeDir, 'build', 'vmlet-launch');
const qemuBinary = which('qemu-system-x86_64');
const PIDS_ROOT = '/sys/fs/cgroup/pids';

function skipReason(): string | false {
  if (process.getuid?.() !== 0) return 'needs root (cgroups, setpriv, mount namespaces)';
  for (const tool of ['setpriv', 'unshare', 'mount']) if (!which(tool)) return `${tool} (util-linux) is not installed`;
  if (!qemuBinary) return 'qemu-system-x86_64 is not installed';
  if (!existsSync(path.join(PIDS_ROOT, 'cgroup.procs'))) return `no cgroup v1 pids hierarchy at ${PIDS_ROOT}`;
  if (!existsSync(launcherBinary)) {
    if (!which('cc') || !which('make')) return 'vmlet-launch is not built and cc/make are missing';
    const r = spawnSync('make', ['-C', nativeDir], { stdio: 'inherit' });
    if (r.status !== 0) return 'make -C native failed';
  }
  return false;
}
const skip = skipReason();

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function waitUntil(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 10000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/** One QMP command after the handshake; returns its `return`. */
async function qmp(sockPath: string, execute: string): Promise<unknown> {
  let sock: net.Socket | undefined;
  for (let i = 0; !sock; i++) {
    sock = await new Promise<net.Socket | undefined>((resolve) => {
      const s = net.connect(sockPath, () => resolve(s));
      s.once('error', () => resolve(undefined));
    });
    if (!sock && i > 100) throw new Error(`cannot connect to QMP at ${sockPath}`);
    if (!sock) await sleep(50);
  }
  const conn = sock;
  let buf = '';
  const replies: Array<Record<string, unknown>> = [];
  let wake: (() => void) | undefined;
  conn.on('data', (c: Buffer) => {
    buf += c.toString();
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const m = JSON.parse(buf.slice(0, nl)) as Record<string, unknown>;
      buf = buf.slice(nl + 1);
      if (!('event' in m)) replies.push(m);
    }
    wake?.();
  });
  conn.on('error', () => undefined);
  const next = async (): Promise<Record<string, unknown>> => {
    for (;;) {
      const r = replies.shift();
      if (r) return r;
      if (conn.destroyed) throw new Error('QMP closed');
      await new Promise<void>((r) => {
        wake = r;
        setTimeout(r, 200);
      });
    }
  };
  await next(); // greeting
  conn.write('{"execute":"qmp_capabilities"}\n');
  await next();
  conn.write(JSON.stringify({ execute }) + '\n');
  const reply = await next();
  conn.destroy();
  return reply.return ?? reply;
}

interface Started {
  child: ChildProcess;
  pid: number;
  stderr: () => string;
  exited: Promise<number | null>;
}

t.test('vmlet-launch in a (faked) launcher pod', { skip }, async (t) => {
  const base = mkdtempSync(path.join(tmpdir(), 'vmlet-pl-'));
  chmodSync(base, 0o755); // uid 107 must reach the pod folders below it
  const kubeletRoot = path.join(base, 'kubelet');
  const linksDir = path.join(base, 'links');
  const cgBase = path.join(PIDS_ROOT, `vmlet-h6-test-${process.pid}`);
  const podA = randomUUID();
  const podB = randomUUID();
  const vmiA = randomUUID();
  const vmiB = randomUUID();
  const cgA = path.join(cgBase, 'kubepods', 'besteffort', `pod${podA}`, 'c1');
  const cgB = path.join(cgBase, 'kubepods', 'besteffort', `pod${podB}`, 'c1');
  const cgOutside = path.join(cgBase, 'outside');
  const cgroups = [
    cgA,
    path.dirname(cgA),
    cgB,
    path.dirname(cgB),
    path.join(cgBase, 'kubepods', 'besteffort'),
    path.join(cgBase, 'kubepods'),
    cgOutside,
    cgBase,
  ];
  for (const d of [cgA, cgB, cgOutside]) mkdirSync(d, { recursive: true });

  const logLines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n').filter(Boolean)) logLines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  const logger = pino({ level: 'info' }, sink);
  const hellos: LauncherHello[] = [];
  const runDirA = podRunVolumeDir(kubeletRoot, podA);
  const podView = path.join(base, 'v'); // where the pod sees its vmlet-run folder (/var/run/vmlet in a real pod)
  mkdirSync(podView);
  const qemuArgv = (uid: string): string[] => [
    qemuBinary ?? '/usr/bin/qemu-system-x86_64',
    ...['-machine', 'q35,accel=tcg', '-nodefaults', '-display', 'none', '-S', '-uuid', uid, '-name', `guest=vmi-${uid}`],
    ...['-qmp', `unix:${podView}/qmp.sock,server=on,wait=off`], // the pod's view of the path
  ];
  const server = new LauncherServer({
    socketPath: path.join(base, 'main.sock'),
    logger,
    onHello: (h): HelloDecision => {
      hellos.push(h);
      if (h.state.kind === 'new') return { action: 'launch', argv: qemuArgv(h.uid), fds: [] };
      return { action: 'accept' };
    },
  });
  const sockets = new PodLauncherSockets({ server, kubeletRootDir: kubeletRoot, linksDir, pollIntervalMs: 50, waitTimeoutMs: 10000, logger });
  const children: Started[] = [];
  const pids: number[] = [];
  const keepAlive = setInterval(() => undefined, 1000); // launchers are not our event loop's handles
  t.teardown(async () => {
    clearInterval(keepAlive);
    for (const c of children) c.child.kill('SIGKILL');
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    await server.close();
    for (const d of cgroups) {
      await waitUntil(`${d} to empty`, () => !existsSync(d) || readFileSync(path.join(d, 'cgroup.procs'), 'utf8').trim() === '', 5000).catch(() => undefined);
      try {
        rmdirSync(d);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') t.comment(`cannot remove cgroup ${d}: ${(e as Error).message}`);
      }
    }
    rmSync(base, { recursive: true, force: true });
  });

  /** Makes a pod's emptyDir folder as the kubelet would (mode 0777, owned by the pod's fsGroup user). */
  function makePodFolder(podUid: string): string {
    const dir = podRunVolumeDir(kubeletRoot, podUid);
    mkdirSync(dir, { recursive: true, mode: 0o755 });
    chmodSync(dir, 0o777);
    chownSync(dir, 107, 107);
    for (let d = path.dirname(dir); d.startsWith(kubeletRoot); d = path.dirname(d)) chmodSync(d, 0o755);
    return dir;
  }

  /**
   * Starts vmlet-launch as the kubelet would start the pod's entrypoint: in `cgroup`, in its own mount
   * namespace with `folder` at the pod's view, as uid 107 without capabilities. User data only as argv entries.
   */
  function startLauncher(o: { cgroup: string; folder: string; uid: string; runDir?: string }): Started {
    const script = 'mount --bind "$1" "$2" && echo $$ > "$3"/cgroup.procs && shift 3 && exec "$@"';
    const argv = ['--mount', '--propagation', 'private', 'sh', '-c', script, 'sh', o.folder, podView, o.cgroup];
    argv.push('setpriv', '--reuid=107', '--regid=107', '--clear-groups', '--inh-caps=-all', '--bounding-set=-all');
    argv.push(launcherBinary, '--uid', o.uid, '--socket', path.join(podView, 'launcher.sock'), '--run-dir', o.runDir ?? podView, '--linger', '10');
    const child = spawn('unshare', argv, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr?.on('data', (c: Buffer) => (err += c.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    const s: Started = { child, pid: child.pid ?? -1, stderr: () => err, exited };
    children.push(s);
    return s;
  }

  /** A run dir for a launcher that must not touch pod A's files. */
  function rogueRunDir(name: string): string {
    const d = path.join(base, name);
    mkdirSync(d);
    chownSync(d, 107, 107);
    return d;
  }

  await server.listen();
  const linkA = server.attach(vmiA);
  server.attach(vmiB);

  await t.test('open waits for the pod folder, links it and listens in it with mode 0666', async (t) => {
    const opening = sockets.open(podA, vmiA);
    await sleep(300);
    t.notOk(existsSync(path.join(linksDir, podA)), 'no link before the kubelet made the folder');
    makePodFolder(podA);
    const link = await opening;
    t.equal(link, path.join(linksDir, podA));
    t.equal(readlinkSync(link), runDirA, 'the link points at the emptyDir folder');
    t.ok(lstatSync(path.join(runDirA, 'launcher.sock')).isSocket(), 'launcher.sock is in the pod folder');
    t.equal(statSync(path.join(runDirA, 'launcher.sock')).mode & 0o777, 0o666);
    t.equal(await sockets.open(podA, vmiA), link, 'opening again returns the same link');
    t.throws(() => sockets.open(podA, vmiB), { code: 'POD_UID_INVALID' }, 'a pod serves one VMI');
    t.throws(() => sockets.open('../etc', vmiA), { code: 'POD_UID_INVALID' }, 'a uid that is a path is refused');
  });

  await t.test('a pod folder that never appears: POD_RUN_DIR_TIMEOUT, nothing left', async (t) => {
    const s = new PodLauncherSockets({ server, kubeletRootDir: kubeletRoot, linksDir, pollIntervalMs: 20, waitTimeoutMs: 200 });
    const ghost = randomUUID();
    await t.rejects(s.open(ghost, vmiB), { code: 'POD_RUN_DIR_TIMEOUT' });
    t.notOk(existsSync(path.join(linksDir, ghost)));
    t.same(s.pods(), []);
  });

  let qemuPid = 0;
  let launcherA: Started | undefined;

  await t.test("the pod's launcher is accepted and QEMU runs in the pod as uid 107", async (t) => {
    const started = linkA.waitFor('started', 20000);
    launcherA = startLauncher({ cgroup: cgA, folder: runDirA, uid: vmiA });
    pids.push(launcherA.pid);
    [qemuPid] = await started;
    pids.push(qemuPid);
    t.ok(qemuPid > 0, `QEMU pid ${qemuPid}`);
    const hello = hellos.find((h) => h.uid === vmiA);
    t.same(hello?.pod, { podUid: podA, vmiUid: vmiA }, 'onHello saw the pod listener');
    t.equal(hello?.peer.pid, launcherA.pid);
    t.equal(hello?.peer.uid, 107, 'the launcher runs as uid 107');
    const status = readFileSync(`/proc/${qemuPid}/status`, 'utf8');
    t.match(status, /^Uid:\s+107\s+107\s+107\s+107$/m, 'QEMU runs as uid 107');
    t.match(status, /^CapEff:\s+0+$/m, 'QEMU has no capabilities');
    const procs = readFileSync(path.join(cgA, 'cgroup.procs'), 'utf8').trim().split('\n').map(Number);
    t.ok(procs.includes(qemuPid) && procs.includes(launcherA.pid), "launcher and QEMU are in the pod's cgroup");
    t.equal(await podUidOfPid(qemuPid, '/proc'), podA, "QEMU's /proc/PID/cgroup names the pod");
    t.ok(await isLiveProcessFor(qemuPid, vmiA));
    const qs = await qmp(path.join(linksDir, podA, 'qmp.sock'), 'query-status');
    t.match(qs, { status: 'prelaunch', running: false }, 'QEMU answers QMP through the daemon-side link');
    t.ok(linkA.connected);
  });

  /** Starts a launcher that must be refused; returns its exit code, stderr and the server's warning about it. */
  async function refused(o: {
    cgroup: string;
    uid: string;
    runDir: string;
  }): Promise<{ code: number | null; stderr: string; warn: Record<string, unknown> | undefined }> {
    const l = startLauncher({ ...o, folder: runDirA });
    pids.push(l.pid);
    const code = await l.exited;
    return { code, stderr: l.stderr(), warn: logLines.find((x) => x.launcherPeerPid === l.pid && x.level === 40) };
  }

  await t.test("a launcher in another pod's cgroup is refused and logged", async (t) => {
    makePodFolder(podB);
    const r = await refused({ cgroup: cgB, uid: vmiA, runDir: rogueRunDir('rogue-b') });
    t.equal(r.code, 122, 'the launcher exits 122 (rejected)');
    t.match(r.stderr, /rejected us: pod-mismatch/);
    t.match(r.warn, { reject: 'pod-mismatch', peerPodUid: podB, expectedPodUid: podA }, 'warning names the peer pid, its pod and the expected pod');
    t.ok(linkA.connected, 'the real launcher stays connected');
  });

  await t.test('a launcher outside kubepods is refused and logged', async (t) => {
    const r = await refused({ cgroup: cgOutside, uid: vmiA, runDir: rogueRunDir('rogue-out') });
    t.equal(r.code, 122);
    t.match(r.stderr, /rejected us: pod-mismatch/);
    t.match(r.warn, { reject: 'pod-mismatch', peerPodUid: null, expectedPodUid: podA });
  });

  await t.test("a HELLO naming another VMI is refused, even from the pod's own cgroup", async (t) => {
    const r = await refused({ cgroup: cgA, uid: vmiB, runDir: rogueRunDir('rogue-vmi') });
    t.equal(r.code, 122);
    t.match(r.stderr, /rejected us: vmi-mismatch/);
    t.match(r.warn, { reject: 'vmi-mismatch', uid: vmiB, peerPodUid: podA, expectedPodUid: podA });
    t.notOk(
      hellos.some((h) => h.uid === vmiB),
      'onHello was never asked about it',
    );
  });

  await t.test('QEMU survives a server close; the launcher comes back with HELLO RUNNING', async (t) => {
    const gone = linkA.waitFor('disconnected', 5000);
    await server.close();
    await gone;
    t.notOk(existsSync(path.join(runDirA, 'launcher.sock')), 'the pod socket is gone while the server is closed');
    await sleep(700);
    t.ok(await isLiveProcessFor(qemuPid, vmiA), 'QEMU still runs');
    const back = linkA.waitFor('hello', 10000);
    await server.listen();
    const [hello] = await back;
    t.same(hello.state, { kind: 'running', qemuPid }, 'HELLO RUNNING with the same QEMU');
    t.same(hello.pod, { podUid: podA, vmiUid: vmiA }, 'through the pod socket again');
    t.equal(statSync(path.join(runDirA, 'launcher.sock')).mode & 0o777, 0o666, 'mode set again');
  });

  await t.test('QEMU quits; close() leaves nothing; sweep removes links of gone pods', async (t) => {
    const exited = linkA.waitFor('exited', 10000);
    await qmp(path.join(linksDir, podA, 'qmp.sock'), 'quit');
    const [status, pid] = await exited;
    t.same(status, { kind: 'exit', code: 0 });
    t.equal(pid, qemuPid);
    t.equal(await launcherA?.exited, 0, 'the launcher exits with QEMU status');

    // A file the daemon makes for QEMU becomes the pod user's.
    const iso = path.join(linksDir, podA, 'cloudinit.iso');
    writeFileSync(iso, 'x');
    await chownForPod(iso);
    t.match(statSync(path.join(runDirA, 'cloudinit.iso')), { uid: 107, gid: 107 });

    await sockets.close(podA);
    t.notOk(existsSync(path.join(runDirA, 'launcher.sock')), 'socket removed');
    t.throws(() => lstatSync(path.join(linksDir, podA)), { code: 'ENOENT' }, 'link removed');
    t.same(server.extraSockets(), []);
    t.same(sockets.pods(), []);

    // Links an earlier daemon left: one of a gone pod, one of a live pod; and a foreign file.
    const stale = randomUUID();
    symlinkSync(podRunVolumeDir(kubeletRoot, stale), path.join(linksDir, stale));
    symlinkSync(podRunVolumeDir(kubeletRoot, podB), path.join(linksDir, podB));
    writeFileSync(path.join(linksDir, 'README'), 'not ours');
    t.same(await sockets.sweep([podB]), [stale]);
    t.throws(() => lstatSync(path.join(linksDir, stale)), { code: 'ENOENT' });
    t.ok(lstatSync(path.join(linksDir, podB)).isSymbolicLink(), 'a live pod keeps its link');
    t.ok(existsSync(path.join(linksDir, 'README')), 'foreign files are left alone');
  });
});
