// Tells which Kubernetes pod a process belongs to, from the kubelet's cgroup names in /proc/PID/cgroup (cgroupfs and systemd drivers, cgroup v1 and v2).
import { readFile } from 'node:fs/promises';
import path from 'node:path';

/** What /proc/PID/cgroup says about a process's pod: its uid, or why it names none. */
export type PodIdentity = { ok: true; podUid: string } | { ok: false; reason: 'outside-kubepods' | 'conflict' | 'malformed' | 'unreadable'; detail: string };

// cgroupfs driver: …/kubepods[/besteffort|/burstable]/pod<uid>/<container id>; any prefix (kubelet --cgroup-root, a cgroup namespace's "/..").
const QOS_DIRS = new Set(['besteffort', 'burstable']);
const CGROUPFS_POD = /^pod([0-9a-f][0-9a-f-]{0,63})$/;
// systemd driver: …/kubepods-burstable-pod<uid with _ for ->.slice/cri-containerd-<id>.scope; slice names may carry a prefix (kubelet-kubepods-…).
const SYSTEMD_POD = /^(?:[a-z0-9_]+-)?kubepods(?:-besteffort|-burstable)?-pod([0-9a-f][0-9a-f_]{0,63})\.slice$/;
// A v1 line is "N:controllers:/path" (a named hierarchy is "name=…"), the v2 line "0::/path"; the path may hold colons.
const LINE = /^(\d+):([^:]*):(\/.*)$/;

/** The pod uid a cgroup path names, or undefined when it is not below a kubelet pod cgroup. */
export function podUidOfCgroupPath(cgroupPath: string): string | undefined {
  const segs = cgroupPath.split('/').filter((s) => s.length > 0);
  for (let i = 0; i < segs.length; i++) {
    const seg = segs[i] ?? '';
    const sd = SYSTEMD_POD.exec(seg);
    if (sd?.[1]) return sd[1].replace(/_/g, '-');
    if (seg !== 'kubepods') continue;
    let j = i + 1;
    if (QOS_DIRS.has(segs[j] ?? '')) j++;
    const fs = CGROUPFS_POD.exec(segs[j] ?? '');
    if (fs?.[1]) return fs[1];
  }
  return undefined;
}

/**
 * The pod of a process from the text of its /proc/PID/cgroup. Lines that name no pod (a v1 controller
 * kubelet does not manage, the unused v2 line of a hybrid host) are ignored; every line that names a pod
 * must name the same one, and any malformed line means no identity: a doubt is a refusal.
 */
export function podIdentityOfCgroupText(text: string): PodIdentity {
  const uids = new Set<string>();
  for (const line of text.split('\n')) {
    if (line.length === 0) continue;
    const m = LINE.exec(line);
    if (!m?.[3]) return { ok: false, reason: 'malformed', detail: `not a cgroup line: ${JSON.stringify(line.slice(0, 80))}` };
    const uid = podUidOfCgroupPath(m[3]);
    if (uid !== undefined) uids.add(uid);
  }
  const [first, ...rest] = uids;
  if (first === undefined) return { ok: false, reason: 'outside-kubepods', detail: 'no cgroup line names a pod' };
  if (rest.length > 0) return { ok: false, reason: 'conflict', detail: `cgroup lines name several pods: ${[...uids].join(', ')}` };
  return { ok: true, podUid: first };
}

/** Short form of podIdentityOfCgroupText: the pod uid, or undefined. */
export function podUidOfCgroupText(text: string): string | undefined {
  const id = podIdentityOfCgroupText(text);
  return id.ok ? id.podUid : undefined;
}

/** Reads PROCROOT/PID/cgroup; a process that is gone or unreadable has no identity (never throws). */
export async function podIdentityOfPid(pid: number, procRoot: string): Promise<PodIdentity> {
  const file = path.join(procRoot, String(pid), 'cgroup');
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    return { ok: false, reason: 'unreadable', detail: `cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? String(e)}` };
  }
  return podIdentityOfCgroupText(text);
}

/** The pod uid of process `pid` (read through `procRoot`), or undefined when it is in no pod (or not one pod). */
export async function podUidOfPid(pid: number, procRoot: string): Promise<string | undefined> {
  const id = await podIdentityOfPid(pid, procRoot);
  return id.ok ? id.podUid : undefined;
}

/** The listener a launcher connected through, for a pod's own socket: which pod and VMI may use it. */
export interface PodListener {
  podUid: string;
  vmiUid: string;
}

/** Why a HELLO on a pod's socket is refused: the REJECT code and text, and the facts for the warning. */
export interface PodRefusal {
  code: 'vmi-mismatch' | 'pod-mismatch';
  text: string;
  peerPodUid: string | undefined;
  expectedPodUid: string;
}

/** Checks a HELLO that arrived on a pod's socket: the VMI must be that pod's, and the peer must live in that pod's cgroup. */
export async function checkPodPeer(listener: PodListener, helloUid: string, peerPid: number, procRoot: string): Promise<PodRefusal | undefined> {
  const id = await podIdentityOfPid(peerPid, procRoot);
  const peerPodUid = id.ok ? id.podUid : undefined;
  const base = { peerPodUid, expectedPodUid: listener.podUid };
  if (helloUid !== listener.vmiUid) {
    return { ...base, code: 'vmi-mismatch', text: `this socket serves VMI ${listener.vmiUid}, not ${helloUid}` };
  }
  if (!id.ok) return { ...base, code: 'pod-mismatch', text: `peer pid ${peerPid} is in no pod (${id.reason}: ${id.detail}); expected pod ${listener.podUid}` };
  if (id.podUid !== listener.podUid) return { ...base, code: 'pod-mismatch', text: `peer pid ${peerPid} is in pod ${id.podUid}, not ${listener.podUid}` };
  return undefined;
}
