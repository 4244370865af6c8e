// Tests the pod identity of a process from /proc/PID/cgroup (kubelet's cgroupfs and systemd drivers, v1 and v2), and LauncherServer's pod check on a pod's own socket with a fake procfs.
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync, statSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import t from 'tap';
import { checkPodPeer, podIdentityOfCgroupText, podIdentityOfPid, podUidOfCgroupPath, podUidOfCgroupText, podUidOfPid } from '../../src/qemu/pod-identity.js';
import { LauncherServer, type LauncherHello } from '../../src/qemu/launcher-server.js';

const POD = '8f1c2a4e-5b6d-4e7f-9a0b-1c2d3e4f5a6b';
const POD_SD = POD.replace(/-/g, '_');
const OTHER = '0a9b8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d';
const CID = 'c4b1e2f3a4d5c6b7a8f9e0d1c2b3a4f5e6d7c8b9a0f1e2d3c4b5a6f7e8d9c0b1';

// cgroup v1, cgroupfs driver, BestEffort pod (docker/containerd on an older node).
const V1_CGROUPFS_BESTEFFORT = `12:pids:/kubepods/besteffort/pod${POD}/${CID}
11:hugetlb:/kubepods/besteffort/pod${POD}/${CID}
10:net_cls,net_prio:/kubepods/besteffort/pod${POD}/${CID}
9:perf_event:/kubepods/besteffort/pod${POD}/${CID}
8:cpu,cpuacct:/kubepods/besteffort/pod${POD}/${CID}
7:memory:/kubepods/besteffort/pod${POD}/${CID}
6:devices:/kubepods/besteffort/pod${POD}/${CID}
5:freezer:/kubepods/besteffort/pod${POD}/${CID}
4:blkio:/kubepods/besteffort/pod${POD}/${CID}
3:rdma:/
2:cpuset:/kubepods/besteffort/pod${POD}/${CID}
1:name=systemd:/kubepods/besteffort/pod${POD}/${CID}
0::/
`;

// cgroup v2, cgroupfs driver, Guaranteed pod (no QoS folder).
const V2_CGROUPFS_GUARANTEED = `0::/kubepods/pod${POD}/${CID}\n`;
// cgroup v2, cgroupfs driver, Burstable, as seen from a cgroup namespace elsewhere ("/.." prefix) and a kind node prefix.
const V2_CGROUPFS_BURSTABLE_NESTED = `0::/../../kubelet/kubepods/burstable/pod${POD}/${CID}\n`;
// cgroup v2, systemd driver, Burstable, containerd.
const V2_SYSTEMD_BURSTABLE = `0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${POD_SD}.slice/cri-containerd-${CID}.scope\n`;
// cgroup v1, systemd driver, Guaranteed, CRI-O.
const V1_SYSTEMD_GUARANTEED = `11:memory:/kubepods.slice/kubepods-pod${POD_SD}.slice/crio-${CID}.scope
10:cpu,cpuacct:/kubepods.slice/kubepods-pod${POD_SD}.slice/crio-${CID}.scope
1:name=systemd:/kubepods.slice/kubepods-pod${POD_SD}.slice/crio-${CID}.scope
0::/
`;
// cgroup v2, systemd driver with a kubelet --cgroup-root slice prefix (kind), BestEffort.
const V2_SYSTEMD_PREFIXED = `0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod${POD_SD}.slice/cri-containerd-${CID}.scope\n`;
// Hybrid host like this test host, with a test-only parent (the integration test's layout).
const HYBRID_TEST_PARENT = `9:name=systemd:/
8:pids:/vmlet-h6-test/kubepods/besteffort/pod${POD}/c1
7:blkio:/
4:memory:/process_api/2ac8b1bfde9842eb6c6b2b725446470e
0::/
`;

t.test('each kubelet cgroup layout names the pod', async (t) => {
  const cases: Record<string, string> = {
    V1_CGROUPFS_BESTEFFORT,
    V2_CGROUPFS_GUARANTEED,
    V2_CGROUPFS_BURSTABLE_NESTED,
    V2_SYSTEMD_BURSTABLE,
    V1_SYSTEMD_GUARANTEED,
    V2_SYSTEMD_PREFIXED,
    HYBRID_TEST_PARENT,
  };
  for (const [name, text] of Object.entries(cases)) {
    t.same(podIdentityOfCgroupText(text), { ok: true, podUid: POD }, name);
    t.equal(podUidOfCgroupText(text), POD, `${name}: short form`);
  }
  t.equal(podUidOfCgroupPath(`/kubepods/burstable/pod${POD}`), POD, 'the pod cgroup itself (no container below)');
  t.equal(podUidOfCgroupPath(`/kubepods-besteffort-pod${POD_SD}.slice`), POD, 'systemd: _ becomes -');
});

t.test('a container of another pod names that pod, not ours', async (t) => {
  t.same(podIdentityOfCgroupText(`0::/kubepods/besteffort/pod${OTHER}/${CID}\n`), { ok: true, podUid: OTHER });
  t.equal(podUidOfCgroupText(V2_SYSTEMD_BURSTABLE.replace(POD_SD, OTHER.replace(/-/g, '_'))), OTHER);
});

t.test('processes outside kubepods have no pod', async (t) => {
  const outside = [
    '0::/system.slice/containerd.service\n',
    '0::/user.slice/user-1000.slice/session-3.scope\n',
    '12:pids:/\n1:name=systemd:/init.scope\n0::/\n',
    `0::/kubepods/besteffort\n`, // the QoS folder itself
    `0::/kubepods.slice/kubepods-burstable.slice\n`,
    `0::/other/pod${POD}/x\n`, // a pod-like name not below kubepods
    `0::/kubepods/besteffort/notapod${POD}\n`,
    `0::/kubepods/besteffort/podXYZ/c\n`, // not a uid
    '',
  ];
  for (const text of outside) {
    const id = podIdentityOfCgroupText(text);
    t.same(id.ok ? id : { ok: false, reason: id.reason }, { ok: false, reason: 'outside-kubepods' }, JSON.stringify(text));
    t.equal(podUidOfCgroupText(text), undefined);
  }
});

t.test('lines naming different pods: no identity', async (t) => {
  const text = `8:pids:/kubepods/besteffort/pod${POD}/${CID}\n7:memory:/kubepods/besteffort/pod${OTHER}/${CID}\n0::/\n`;
  const id = podIdentityOfCgroupText(text);
  t.equal(id.ok, false);
  t.match(id, { reason: 'conflict' });
  t.match(id.ok ? '' : id.detail, POD);
  t.match(id.ok ? '' : id.detail, OTHER);
  t.equal(podUidOfCgroupText(text), undefined);
  // Same pod under both drivers' spellings is one pod.
  t.same(podIdentityOfCgroupText(`8:pids:/kubepods/besteffort/pod${POD}/c\n0::${V2_SYSTEMD_BURSTABLE.slice(3)}`), { ok: true, podUid: POD });
});

t.test('malformed text: no identity, even when another line names a pod', async (t) => {
  for (const text of [
    `garbage\n0::/kubepods/pod${POD}/c\n`,
    `0::kubepods/pod${POD}/c\n`, // relative path
    `x:pids:/kubepods/pod${POD}/c\n`,
    `8:pids\n`,
    '\u0000\u0001',
  ]) {
    const id = podIdentityOfCgroupText(text);
    t.match(id, { ok: false, reason: 'malformed' }, JSON.stringify(text));
  }
  t.same(podIdentityOfCgroupText(`0::/kubepods/pod${POD}/with:colon\n`), { ok: true, podUid: POD }, 'a colon in the path is not malformed');
});

/** A fake procfs: PID/cgroup per entry, and self → the real /proc/self (for the socket chmod). */
function fakeProc(t: { teardown(fn: () => void): void }, cgroups: Record<number, string>): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'vmlet-podid-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const proc = path.join(dir, 'proc');
  mkdirSync(proc);
  for (const [pid, text] of Object.entries(cgroups)) {
    mkdirSync(path.join(proc, pid));
    writeFileSync(path.join(proc, pid, 'cgroup'), text);
  }
  symlinkSync('/proc/self', path.join(proc, 'self'));
  return proc;
}

t.test('podUidOfPid reads PROCROOT/PID/cgroup; a missing process has none', async (t) => {
  const proc = fakeProc(t, { 42: V2_SYSTEMD_BURSTABLE, 43: '0::/system.slice/x.service\n' });
  t.equal(await podUidOfPid(42, proc), POD);
  t.equal(await podUidOfPid(43, proc), undefined);
  t.equal(await podUidOfPid(44, proc), undefined);
  t.match(await podIdentityOfPid(44, proc), { ok: false, reason: 'unreadable', detail: /ENOENT/ });
});

t.test('checkPodPeer: the VMI must be the pod’s, the peer must be in the pod', async (t) => {
  const proc = fakeProc(t, { 10: V1_CGROUPFS_BESTEFFORT, 11: `0::/kubepods/pod${OTHER}/c\n`, 12: '0::/\n' });
  const l = { podUid: POD, vmiUid: 'vmi-a' };
  t.equal(await checkPodPeer(l, 'vmi-a', 10, proc), undefined, 'the real launcher passes');
  t.same(await checkPodPeer(l, 'vmi-b', 10, proc), {
    code: 'vmi-mismatch',
    text: 'this socket serves VMI vmi-a, not vmi-b',
    peerPodUid: POD,
    expectedPodUid: POD,
  });
  t.match(await checkPodPeer(l, 'vmi-a', 11, proc), {
    code: 'pod-mismatch',
    peerPodUid: OTHER,
    expectedPodUid: POD,
    text: `peer pid 11 is in pod ${OTHER}, not ${POD}`,
  });
  t.match(await checkPodPeer(l, 'vmi-a', 12, proc), { code: 'pod-mismatch', peerPodUid: undefined, text: /in no pod \(outside-kubepods/ });
  t.match(await checkPodPeer(l, 'vmi-a', 13, proc), { code: 'pod-mismatch', peerPodUid: undefined, text: /in no pod \(unreadable/ });
});

/** Sends one HELLO as ourselves and returns the server's first line. */
async function hello(socketPath: string, uid: string): Promise<string> {
  const sock = net.connect(socketPath);
  const reply = new Promise<string>((resolve) => {
    let got = '';
    sock.on('data', (c: Buffer) => {
      got += c.toString();
      if (got.includes('\n')) resolve(got);
    });
    sock.on('close', () => resolve(got));
    sock.on('error', () => resolve(got));
  });
  sock.write(`HELLO 1 ${uid} ${process.pid} RUNNING 4242\n`);
  const out = await reply;
  sock.destroy();
  return out;
}

t.test("LauncherServer on a pod's socket: pod and VMI checked before onHello, refusals logged", async (t) => {
  const me = process.pid; // SO_PEERCRED of our own connections
  const proc = fakeProc(t, {});
  mkdirSync(path.join(proc, String(me)));
  const setMyCgroup = (text: string): void => writeFileSync(path.join(proc, String(me), 'cgroup'), text);
  const dir = path.dirname(proc);
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n').filter(Boolean)) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  const hellos: LauncherHello[] = [];
  const server = new LauncherServer({
    socketPath: path.join(dir, 'main.sock'),
    procRoot: proc,
    logger: pino({ level: 'info' }, sink),
    onHello: (h) => {
      hellos.push(h);
      return { action: 'accept' };
    },
  });
  t.teardown(() => server.close());
  server.attach('vmi-a');
  server.attach('vmi-b');
  const podSock = path.join(dir, 'pod.sock');
  await server.listenExtra(podSock, { mode: 0o666, podUid: POD, vmiUid: 'vmi-a' });
  t.equal(statSync(podSock).mode & 0o777, 0o666, 'socket mode 0666 for uid 107');
  await t.rejects(server.listenExtra(podSock, { mode: 0o666, podUid: POD, vmiUid: 'vmi-a' }), { code: 'LAUNCHER_LISTEN_FAILED' }, 'twice');
  await t.rejects(server.listenExtra(path.join(dir, 'x.sock'), { podUid: POD }), { code: 'LAUNCHER_LISTEN_FAILED' }, 'pod without VMI');

  setMyCgroup(`0::/kubepods/besteffort/pod${OTHER}/c\n`);
  t.match(await hello(podSock, 'vmi-a'), new RegExp(`^REJECT pod-mismatch peer pid ${me} is in pod ${OTHER}, not ${POD}\\n$`));
  const warn = lines.find((l) => l.reject === 'pod-mismatch');
  t.match(
    warn,
    { level: 40, launcherPeerPid: me, peerPodUid: OTHER, expectedPodUid: POD, socket: podSock },
    'warning names peer pid, its pod and the expected one',
  );

  setMyCgroup('0::/system.slice/sshd.service\n');
  t.match(await hello(podSock, 'vmi-a'), /^REJECT pod-mismatch .*in no pod/);
  t.match(lines.filter((l) => l.reject === 'pod-mismatch').at(-1), { peerPodUid: null, expectedPodUid: POD }, 'outside kubepods is logged with no pod');

  setMyCgroup(V2_SYSTEMD_BURSTABLE);
  t.match(await hello(podSock, 'vmi-b'), /^REJECT vmi-mismatch this socket serves VMI vmi-a, not vmi-b\n$/, 'another VMI, even an attached one');
  t.equal(hellos.length, 0, 'onHello was never asked');

  t.equal(await hello(podSock, 'vmi-a'), 'OK\n', "the pod's own launcher is accepted");
  t.same(hellos[0]?.pod, { podUid: POD, vmiUid: 'vmi-a' }, 'onHello learns the pod listener');
  t.equal(await hello(path.join(dir, 'main.sock'), 'vmi-b'), '', 'main socket is not listening (listen() was not called)');

  // close() stops the pod socket too; listen() brings main and the pod socket back.
  await server.close();
  await server.listen();
  t.equal(await hello(podSock, 'vmi-a'), 'OK\n', 'pod socket is back after close + listen');
  t.equal(hellos.at(-1)?.pod?.podUid, POD);
  t.equal(await hello(path.join(dir, 'main.sock'), 'vmi-b'), 'OK\n', 'main socket serves without a pod check');
  t.equal(hellos.at(-1)?.pod, undefined, 'a HELLO on the main socket carries no pod');

  await server.closeExtra(podSock);
  t.throws(() => statSync(podSock), { code: 'ENOENT' }, 'closeExtra removes the socket file');
  t.same(server.extraSockets(), []);
});
