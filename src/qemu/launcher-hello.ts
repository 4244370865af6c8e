// Who may say HELLO on the launcher socket: the peer's uid and pid (SO_PEERCRED) against its claim and its socket, and, standalone, against the launcher recorded for its VMI.
import type { PeerCred } from '../sys/scm.js';
import { isLiveProcessFor, readRunDir } from './launch.js';
import { LAUNCHER_PROTOCOL_VERSION, type LauncherMessage, type LauncherState } from './launcher-codec.js';
import { nsPids } from './launcher-procfs.js';
import { checkPodPeer, type PodListener } from './pod-identity.js';

export interface LauncherHello {
  uid: string;
  /** The launcher's pid as it reported it (its own pid namespace). */
  launcherPid: number;
  /** Who is really on the socket (SO_PEERCRED, daemon's pid namespace). */
  peer: PeerCred;
  state: LauncherState;
  /** Set when the HELLO came through a pod's own socket (listenExtra with a pod): it passed the pod check. */
  pod?: PodListener;
}

/** The daemon's answer to a HELLO: argv + fds for a NEW launcher, acceptance otherwise, or a rejection. */
export type HelloDecision =
  /** `netns`: joined by the launcher just before it forks QEMU (a launcher started before its sandbox was made). */
  | { action: 'launch'; argv: readonly string[]; fds: readonly number[]; netns?: string }
  | { action: 'accept' }
  /** `code` (default `denied`): `launcher-mismatch` when the peer is not the launcher recorded for the VMI. */
  | { action: 'reject'; reason: string; code?: 'denied' | 'launcher-mismatch' };

/** The REJECT codes of docs/launcher-protocol.md. */
export type LauncherReject =
  | 'version'
  | 'bad-hello'
  | 'peer-uid'
  | 'unknown-uid'
  | 'pid-mismatch'
  | 'launcher-mismatch'
  | 'pod-mismatch'
  | 'vmi-mismatch'
  | 'duplicate'
  | 'denied'
  | 'no-argv'
  | 'internal';

/** A HELLO refused before its VMI is looked at: the REJECT code and text, and the facts for the warning. */
export interface HelloRefusal {
  code: LauncherReject;
  text: string;
  facts?: Record<string, unknown>;
}

export interface PeerCheck {
  procRoot: string;
  /** The uid a launcher on a socket without a pod must run as (the daemon's own). */
  launcherUid: number;
}

/**
 * Checks a HELLO against its socket peer, before the VMI is looked up: the protocol version; on a socket without a pod,
 * the peer's uid (the file mode is not relied on); the claimed pid (the peer's in our pid namespace, or its innermost
 * one in a pod's); on a pod's socket, the pod. `nested`: the peer sits in a nested pid namespace.
 */
export async function checkHelloPeer(
  msg: Extract<LauncherMessage, { type: 'hello' }>,
  peer: PeerCred,
  pod: PodListener | undefined,
  o: PeerCheck,
): Promise<{ refusal: HelloRefusal } | { nested: boolean }> {
  if (msg.version !== LAUNCHER_PROTOCOL_VERSION) {
    return { refusal: { code: 'version', text: `protocol ${msg.version} unsupported; this daemon speaks ${LAUNCHER_PROTOCOL_VERSION}` } };
  }
  if (!pod && peer.uid !== o.launcherUid) {
    const text = `the socket peer (pid ${peer.pid}) runs as uid ${peer.uid}, not ${o.launcherUid}`;
    return { refusal: { code: 'peer-uid', text, facts: { peerUid: peer.uid, expectedUid: o.launcherUid, uid: msg.uid } } };
  }
  const ns = nsPids(o.procRoot, peer.pid);
  const nested = ns.length > 1;
  if (msg.launcherPid !== peer.pid && !(nested && ns.at(-1) === msg.launcherPid)) {
    return { refusal: { code: 'pid-mismatch', text: `claimed pid ${msg.launcherPid} but the socket peer is pid ${peer.pid}` } };
  }
  if (pod) {
    // A pod's socket: only its own VMI, and only a process in its cgroup (a pod cannot pose as another).
    const r = await checkPodPeer(pod, msg.uid, peer.pid, o.procRoot);
    if (r) return { refusal: { code: r.code, text: r.text, facts: { peerPodUid: r.peerPodUid ?? null, expectedPodUid: r.expectedPodUid, uid: msg.uid } } };
  }
  return { nested };
}

export interface RecordedLauncher {
  /** The launcher's pid as the daemon knows it: spawned by it, or read from launcher.pid after a restart. */
  pid: number | undefined;
  uid: string;
  runDir: string;
  procRoot?: string | undefined;
}

/**
 * Standalone: refuses a HELLO whose peer is not the VMI's recorded launcher — another pid, or a recycled one (where
 * launcher.pid holds a start time, the peer must have started then and carry the VMI uid in its command line).
 */
export async function refuseUnrecorded(peer: PeerCred, rec: RecordedLauncher): Promise<HelloDecision | undefined> {
  const refuse = (reason: string): HelloDecision => ({ action: 'reject', code: 'launcher-mismatch', reason });
  if (rec.pid === undefined) return refuse(`no launcher is recorded for VMI ${rec.uid}; pid ${peer.pid} is not it`);
  if (peer.pid !== rec.pid) return refuse(`pid ${peer.pid} is not the launcher of VMI ${rec.uid} (pid ${rec.pid})`);
  // The launcher writes launcher.pid before it connects; without the file the spawned pid alone decides.
  const rd = await readRunDir(rec.runDir).catch(() => undefined);
  if (rd?.launcherPid === undefined) return undefined;
  if (rd.launcherPid !== peer.pid) return refuse(`launcher.pid names pid ${rd.launcherPid}, not ${peer.pid}`);
  if (rd.launcherStart === undefined) return undefined;
  const same = await isLiveProcessFor(peer.pid, rec.uid, rec.procRoot, rd.launcherStart).catch(() => false);
  return same ? undefined : refuse(`pid ${peer.pid} is not the process recorded in launcher.pid (start time ${rd.launcherStart})`);
}
