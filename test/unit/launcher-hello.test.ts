// The HELLO checks against a fake /proc and run dir: the peer's uid on a socket without a pod, its claimed pid, and, standalone, the launcher recorded for the VMI (pid, launcher.pid's start time).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { checkHelloPeer, refuseUnrecorded } from '../../src/qemu/launcher-hello.js';
import { parseLauncherLine, type LauncherMessage } from '../../src/qemu/launcher-codec.js';

const UID = 'vmi-7e57';
// Above any pid_max, so nothing real answers for them.
const LAUNCHER = 0x7fff0101;
const OTHER = 0x7fff0202;
const START = 4242;

function fakeDir(t: { teardown(fn: () => unknown): void }, prefix: string): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

/** A /proc/PID with `stat` (start time in field 22), `status` (NSpid) and `cmdline`. */
function fakeProcess(proc: string, pid: number, o: { start: number; argv: string[]; nspid?: number[] }): void {
  const dir = path.join(proc, String(pid));
  fs.mkdirSync(dir, { recursive: true });
  const fields = ['S', ...Array.from({ length: 18 }, () => '0'), String(o.start), '0'];
  fs.writeFileSync(path.join(dir, 'stat'), `${pid} (${path.basename(o.argv[0] ?? 'x')}) ${fields.join(' ')}`);
  fs.writeFileSync(path.join(dir, 'status'), `Name:\tx\nNSpid:\t${(o.nspid ?? [pid]).join('\t')}\n`);
  fs.writeFileSync(path.join(dir, 'cmdline'), `${o.argv.join('\0')}\0`);
}

const hello = (line: string): Extract<LauncherMessage, { type: 'hello' }> => {
  const m = parseLauncherLine(line);
  if (m.type !== 'hello') throw new Error('not a HELLO');
  return m;
};

t.test('checkHelloPeer: version, peer uid (not on a pod socket), claimed pid', async (t) => {
  const proc = fakeDir(t, 'vmlet-hello-proc-');
  fakeProcess(proc, LAUNCHER, { start: START, argv: ['vmlet-launch', '--uid', UID] });
  fakeProcess(proc, OTHER, { start: START, argv: ['vmlet-launch', '--uid', UID], nspid: [OTHER, 1] });
  const o = { procRoot: proc, launcherUid: 0 };
  const root = { pid: LAUNCHER, uid: 0, gid: 0 };

  t.same(await checkHelloPeer(hello(`HELLO 1 ${UID} ${LAUNCHER} NEW`), root, undefined, o), { nested: false }, 'root, its own pid: passes');
  t.match(await checkHelloPeer(hello(`HELLO 2 ${UID} ${LAUNCHER} NEW`), root, undefined, o), { refusal: { code: 'version' } });

  const nobody = { pid: LAUNCHER, uid: 65534, gid: 65534 };
  t.match(
    await checkHelloPeer(hello(`HELLO 1 ${UID} ${LAUNCHER} RUNNING 7`), nobody, undefined, o),
    { refusal: { code: 'peer-uid', text: `the socket peer (pid ${LAUNCHER}) runs as uid 65534, not 0`, facts: { peerUid: 65534, expectedUid: 0, uid: UID } } },
    'another uid on the main socket is refused though it claims its true pid',
  );
  t.match(
    await checkHelloPeer(hello(`HELLO 1 ${UID} ${LAUNCHER} NEW`), root, undefined, { ...o, launcherUid: 1000 }),
    { refusal: { code: 'peer-uid' } },
    'the expected uid is the configured one',
  );
  t.match(await checkHelloPeer(hello(`HELLO 1 ${UID} 1 NEW`), root, undefined, o), { refusal: { code: 'pid-mismatch' } }, 'a claimed pid that is not the peer');
  t.same(
    await checkHelloPeer(hello(`HELLO 1 ${UID} 1 NEW`), { pid: OTHER, uid: 0, gid: 0 }, undefined, o),
    { nested: true },
    "in a nested pid namespace the claim is the peer's innermost pid",
  );

  // A pod's socket is for its uid-107 launcher: the pod's cgroup decides, not the uid.
  const pod = { podUid: '0f0e0d0c-1111-4222-8333-444455556666', vmiUid: UID };
  const podPeer = { pid: OTHER, uid: 107, gid: 107 };
  const r = await checkHelloPeer(hello(`HELLO 1 ${UID} 1 NEW`), podPeer, pod, o);
  t.match(r, { refusal: { code: 'pod-mismatch' } }, 'uid 107 passes the uid check on a pod socket; the missing pod cgroup refuses it');
  fs.writeFileSync(path.join(proc, String(OTHER), 'cgroup'), `0::/kubepods/besteffort/pod${pod.podUid}/c1\n`);
  t.same(await checkHelloPeer(hello(`HELLO 1 ${UID} 1 NEW`), podPeer, pod, o), { nested: true }, "the pod's own launcher passes");
});

t.test('refuseUnrecorded: only the recorded launcher, by pid and by the start time in launcher.pid', async (t) => {
  const proc = fakeDir(t, 'vmlet-hello-proc-');
  const runDir = fakeDir(t, 'vmlet-hello-run-');
  fakeProcess(proc, LAUNCHER, { start: START, argv: ['vmlet-launch', '--uid', UID] });
  fakeProcess(proc, OTHER, { start: START + 1, argv: ['node', 'forge.js'] });
  const rec = { pid: LAUNCHER, uid: UID, runDir, procRoot: proc };
  const peer = (pid: number): { pid: number; uid: number; gid: number } => ({ pid, uid: 0, gid: 0 });

  t.equal(await refuseUnrecorded(peer(LAUNCHER), rec), undefined, 'the spawned pid, before launcher.pid exists');
  t.same(await refuseUnrecorded(peer(OTHER), rec), {
    action: 'reject',
    code: 'launcher-mismatch',
    reason: `pid ${OTHER} is not the launcher of VMI ${UID} (pid ${LAUNCHER})`,
  });
  t.match(
    await refuseUnrecorded(peer(LAUNCHER), { ...rec, pid: undefined }),
    { code: 'launcher-mismatch', reason: /no launcher is recorded/ },
    'nothing spawned or recorded',
  );

  fs.writeFileSync(path.join(runDir, 'launcher.pid'), `${LAUNCHER} ${START}\n`);
  t.equal(await refuseUnrecorded(peer(LAUNCHER), rec), undefined, 'pid and start time match');
  fs.writeFileSync(path.join(runDir, 'launcher.pid'), `${LAUNCHER} ${START + 99}\n`);
  t.match(await refuseUnrecorded(peer(LAUNCHER), rec), { code: 'launcher-mismatch', reason: /start time/ }, 'a recycled pid: another start time');
  fs.writeFileSync(path.join(runDir, 'launcher.pid'), `${OTHER} ${START + 1}\n`);
  t.match(await refuseUnrecorded(peer(LAUNCHER), rec), { code: 'launcher-mismatch', reason: /launcher.pid names pid/ }, 'the record names another pid');
  fs.writeFileSync(path.join(runDir, 'launcher.pid'), `${OTHER} ${START + 1}\n`);
  t.match(
    await refuseUnrecorded(peer(OTHER), { ...rec, pid: OTHER }),
    { code: 'launcher-mismatch' },
    'pid and start time match, but the command line is not a launcher of this VMI',
  );
  fs.rmSync(path.join(proc, String(LAUNCHER)), { recursive: true });
  fs.writeFileSync(path.join(runDir, 'launcher.pid'), `${LAUNCHER} ${START}\n`);
  t.match(await refuseUnrecorded(peer(LAUNCHER), rec), { code: 'launcher-mismatch' }, 'a peer whose /proc entry is gone is not taken on trust');
});
