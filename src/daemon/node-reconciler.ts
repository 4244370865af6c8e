// Runs the VMIs assigned to this node: one supervisor each, re-adoption after a restart, cleanup on delete.
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import type { VirtualMachineInstance, VirtualMachineInstanceStatus } from '../api/types.js';
import { isStoredVmi, VMI_FINALIZER, type StoredVmi } from '../controller/vm-controller.js';
import { VmletError } from '../errors.js';
import { isLiveProcessFor, processOrParentNames, readRunDir } from '../qemu/launch.js';
import type { HelloDecision, LauncherHello, LauncherServer } from '../qemu/launcher-server.js';
import type { QmpClient } from '../qmp/client.js';
import type { KubeObject, Source } from '../source/source.js';
import { Supervisor, type PreparedLaunch } from './supervisor.js';
import { withVmletDefaults } from './vmi-defaults.js';
import { startTraces } from './start-trace.js';
import { waitingForImages } from './image-wait.js';
import { storeCallbacks } from './supervisor-store.js';
import { launcherSandbox, type QemuUser } from './qemu-sandbox.js';
import type { PodLaunchers } from './supervisor-pod.js';
import type { PrepareContext, SupervisorDeps } from './supervisor-deps.js';

export type { PodLaunchers } from './supervisor-pod.js';
import { dedicatedCpuPinning, readCpuListFile, withDedicatedCpuCheck } from './vcpu-pinning.js';
import type { VmCgroups, VmStats } from './vm-cgroup.js';
import type { VmNetwork } from './vm-network.js';
import { DEFAULT_PROC_ROOT } from '../api/vocabulary.js';

/** What the node reconciler needs of a source: the VMIs, their status, watch, the finalizer, events. */
export type NodeSource = Pick<Source, 'get' | 'list' | 'update' | 'updateStatus' | 'watch' | 'recordEvent'>;

export interface NodeReconcilerOptions {
  /** Where VMIs come from and their status goes (the local store, or the API server in cluster mode). */
  store: NodeSource;
  nodeName: string;
  /** Parent of the per-VMI run directories (`<runDir>/vms/<uid>`). */
  runDir: string;
  /** Standalone: parent of the per-VMI scratch folders (emptyDisks, overlays), removed with the run dir. */
  scratchRoot?: string;
  launcherServer: LauncherServer;
  launcherBinary: string;
  launcherSocket: string;
  prepare(vmi: VirtualMachineInstance, runDir: string, ctx?: PrepareContext): Promise<PreparedLaunch>;
  logger: Logger;
  procRoot?: string;
  /** Per-VM cgroups (config `cgroupParent`); absent = none are made. */
  cgroups?: VmCgroups;
  /** Standalone: a launcher kept ready (launcher-spare.ts). */
  launcherSpare?: SupervisorDeps['launcherSpare'];
  /** The host's online CPUs, for `dedicatedCpuPlacement` (default /sys/devices/system/cpu/online). */
  cpuOnlinePath?: string;
  /** Standalone networking (sandboxes are made by `prepare`; released, adopted and reported here). */
  network?: VmNetwork;
  /** Kubernetes mode: QEMU runs in each VMI's launcher pod, whose launcher calls in over the pod's own socket. */
  pods?: PodLaunchers;
  /** The node image store's change feed: a VMI whose containerDisk image is missing waits for it. */
  onImagesChanged?: (listener: () => void) => () => void;
  /** Standalone: QEMU's unprivileged user (config qemuUser) and binary; absent: QEMU runs as root. */
  qemuSandbox?: { user: QemuUser; qemuBinary: string };
  /** The finalizer this daemon releases once a deleted VMI's QEMU and node state are gone (standalone: VMI_FINALIZER). */
  finalizer?: string;
}

const FINAL = new Set(['Succeeded', 'Failed']);
/** Empty stray VM cgroups younger than this are left alone (another daemon may be about to use them). */
const STRAY_CGROUP_MIN_AGE_MS = 30_000;

export class NodeReconciler {
  readonly supervisors = new Map<string, Supervisor>();
  /**
   * The VMIs whose QEMU may have run when the daemon started (by uid): `settled` (never rejects) once its reattach()
   * is over: QMP connected and query-status read (Running), or the VMI ended as gone or failed. READY=1 waits for these.
   */
  readonly readoptions = new Map<string, { name: string; settled: Promise<void> }>();
  private watch: { close(): void } | undefined;
  private readonly log: Logger;
  private readonly busy = new Map<string, Promise<void>>();
  private stopped = false;

  constructor(private readonly opts: NodeReconcilerOptions) {
    this.log = opts.logger;
  }

  vmDir(uid: string): string {
    return path.join(this.opts.runDir, 'vms', uid);
  }

  /** The run dir and the scratch folder of a VMI whose QEMU is gone. */
  private async removeVmDirs(uid: string): Promise<void> {
    await fs.rm(this.vmDir(uid), { recursive: true, force: true });
    if (this.opts.scratchRoot !== undefined) await fs.rm(path.join(this.opts.scratchRoot, uid), { recursive: true, force: true });
  }

  /** Routes a launcher's HELLO to its VMI's supervisor; HELLOs for unknown VMIs are refused by the server. */
  onHello(h: LauncherHello): HelloDecision | Promise<HelloDecision> {
    const sup = this.supervisors.get(h.uid);
    if (!sup) return { action: 'reject', reason: 'no VMI with this uid runs on this node' };
    return sup.onHello(h);
  }

  /** Re-adopts live VMIs and removes what belongs to no VMI; then follows the store. */
  async start(): Promise<void> {
    if (this.opts.pods) return this.startPods(this.opts.pods);
    const listed = await this.opts.store.list('VirtualMachineInstance');
    const vmis = listed.filter(isStoredVmi);
    const mine = vmis.filter((v) => v.status?.nodeName === this.opts.nodeName);
    const known = new Set(mine.map((v) => v.metadata.uid));
    // A VMI without a spec is not run, but not taken for a stray either: its run dir and processes stay.
    for (const o of listed) if (!isStoredVmi(o)) known.add(o.metadata.uid);
    await this.removeStrays(known);
    const dirExists = await Promise.all(
      mine.map((vmi) =>
        fs.access(this.vmDir(vmi.metadata.uid!)).then(
          () => true,
          () => false,
        ),
      ),
    );
    const live = mine.filter((vmi, i) => !FINAL.has(vmi.status?.phase ?? '') && dirExists[i]);
    // Sandboxes of the VMIs being re-adopted stay (DHCP serves them again); every other one goes.
    if (this.opts.network) {
      try {
        const res = await this.opts.network.adopt(live.map((v) => v.metadata.uid!));
        if (res && res.missing.length > 0)
          this.log.warn({ uids: res.missing }, 'VMIs with a lease but no whole sandbox; they get a new one if they are launched again');
      } catch (e) {
        this.log.error({ err: e }, 'could not adopt the network sandboxes');
      }
    }
    for (const vmi of live) this.readopt(vmi, this.newSupervisor(vmi).reattach());
    this.follow();
  }

  /** Kubernetes mode: re-adopt what runs in this node's launcher pods (each launcher calls in again), then follow. */
  private async startPods(pods: PodLaunchers): Promise<void> {
    const listed = (await this.opts.store.list('VirtualMachineInstance')).filter(isStoredVmi);
    for (const obj of listed) {
      const vmi = this.defaulted(obj);
      if (!vmi) continue;
      const uid = vmi.metadata.uid!;
      const podUid = pods.podOf(uid);
      if (vmi.status?.nodeName !== this.opts.nodeName || FINAL.has(vmi.status?.phase ?? '') || vmi.status?.phase === 'Scheduled' || !podUid) continue;
      const runDir = await pods.open(podUid, uid);
      const sup = this.newSupervisor(vmi, { runDir, podUid });
      this.readopt(
        vmi,
        sup.reattach().then(() => this.adoptPodNetwork(vmi, sup, pods)),
      );
    }
    this.follow();
  }

  private readopt(vmi: StoredVmi, work: Promise<void>): void {
    const { uid, namespace, name } = vmi.metadata;
    const settled = work.then(
      () => undefined,
      () => undefined,
    );
    this.readoptions.set(uid!, { name: `${namespace}/${name}`, settled });
    this.track(uid!, work);
  }

  /** Re-reads one VMI and acts on it (Kubernetes mode: its pod just appeared). */
  async refresh(namespace: string, name: string): Promise<void> {
    const o = await this.opts.store.get('VirtualMachineInstance', namespace, name);
    if (o) this.reconcile(o);
  }

  private tryFollow(): void {
    try {
      this.follow();
    } catch (e) {
      this.log.error({ err: e }, 'cannot follow the VMIs any more');
    }
  }

  private follow(): void {
    const w = this.opts.store.watch('VirtualMachineInstance', undefined, undefined, { sendInitialEvents: true });
    this.watch = w;
    void (async () => {
      try {
        for await (const ev of w) {
          if (ev.type !== 'DELETED') this.reconcile(ev.object);
        }
      } catch (e) {
        if (!this.stopped) this.log.error({ err: e }, 'VMI watch failed; following again in 1 s');
      }
      // The source gave up (the API server away too long): follow again; the initial events re-deliver every VMI.
      if (!this.stopped && this.watch === w) setTimeout(() => void (!this.stopped && this.watch === w && this.tryFollow()), 1000).unref();
    })();
  }

  /** Run dirs and processes of VMIs that no longer exist: kill and remove, never adopt. */
  private async removeStrays(known: Set<string>): Promise<void> {
    const vmsDir = path.join(this.opts.runDir, 'vms');
    const entries = await fs.readdir(vmsDir).catch(() => [] as string[]);
    for (const uid of entries) {
      if (known.has(uid)) continue;
      const dir = path.join(vmsDir, uid);
      const rd = await readRunDir(dir).catch(() => undefined);
      for (const [pid, start] of [
        [rd?.qemuPid, rd?.qemuStart],
        [rd?.launcherPid, rd?.launcherStart],
      ] as const) {
        if (pid && (await isLiveProcessFor(pid, uid, this.opts.procRoot, start))) {
          this.log.warn({ uid, pid }, 'killing a process of a VMI that no longer exists');
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            /* gone */
          }
        }
      }
      await this.removeVmDirs(uid);
    }
    // Scratch folders outlive a reboot (the run dirs do not): those of VMIs that are gone go too.
    const scratch = this.opts.scratchRoot;
    if (scratch !== undefined) for (const uid of await fs.readdir(scratch).catch(() => [] as string[])) if (!known.has(uid)) await this.removeVmDirs(uid);
    await this.removeStrayCgroups(known);
  }

  /**
   * VM groups under the parent whose uid is no VMI of this node. A group that still holds
   * processes is emptied only when they are ours (their argv, or their parent's, names this daemon's run dir: the
   * launcher's --run-dir), so another daemon sharing the parent is left alone.
   */
  private async removeStrayCgroups(known: Set<string>): Promise<void> {
    const cgroups = this.opts.cgroups;
    if (!cgroups) return;
    const procRoot = this.opts.procRoot ?? DEFAULT_PROC_ROOT;
    for (const uid of await cgroups.listUids()) {
      if (known.has(uid)) continue;
      const m = cgroups.manager(uid);
      try {
        const pids = await m.procs().catch(() => [] as number[]);
        let foreign = false;
        for (const pid of pids) {
          const cmdline = await fs.readFile(path.join(procRoot, String(pid), 'cmdline'), 'utf8').catch(() => '');
          if (cmdline !== '' && !(await processOrParentNames(pid, this.vmDir(uid), procRoot))) foreign = true;
        }
        if (foreign) {
          this.log.warn({ uid, cgroup: m.group, pids }, 'a VM cgroup of no VMI here holds processes of another daemon; left alone');
          continue;
        }
        // An empty group made moments ago may be another daemon's (sharing the parent) between create and launcher start.
        const dir = m.paths().dirs[0];
        const mtime = dir === undefined ? 0 : ((await fs.stat(dir).catch(() => undefined))?.mtimeMs ?? 0);
        if (pids.length === 0 && Date.now() - mtime < STRAY_CGROUP_MIN_AGE_MS) {
          this.log.info({ uid, cgroup: m.group }, 'a fresh empty VM cgroup of no VMI here; left for the next start');
          continue;
        }
        this.log.info({ uid, cgroup: m.group }, 'removing the cgroup of a VMI that no longer exists');
        await cgroups.remove(uid, this.log);
      } catch (e) {
        this.log.warn({ err: e, uid, cgroup: m.group }, 'could not remove a stray VM cgroup');
      }
    }
  }

  /** Live CPU and memory statistics of a VMI's cgroup (status.vmlet.stats), or undefined. */
  async vmStats(uid: string): Promise<VmStats | undefined> {
    return this.opts.cgroups?.stats(uid);
  }

  private newSupervisor(vmi: VirtualMachineInstance, inPod?: { runDir: string; podUid: string }): Supervisor {
    const uid = vmi.metadata.uid!;
    const { namespace, name } = vmi.metadata;
    const store = this.opts.store;
    const pods = this.opts.pods;
    const podDeps =
      inPod && pods
        ? {
            pod: {},
            removeRunDir: () => pods.close(inPod.podUid),
            ...(pods.releaseNetwork ? { releaseNetwork: () => pods.releaseNetwork!(uid) } : {}),
          }
        : { removeRunDir: () => this.removeVmDirs(uid) };

    const images = this.opts.onImagesChanged;
    const cpus = { cgroups: this.opts.cgroups, onlineCpus: () => this.onlineCpus() };
    const prepare = withDedicatedCpuCheck(vmi, this.opts.prepare, cpus);
    const log = this.log.child({ vmi: { namespace, name, uid } });
    const callbacks = storeCallbacks(store, vmi, log);
    const runDir = inPod?.runDir ?? this.vmDir(uid);
    const qs = inPod ? undefined : this.opts.qemuSandbox;
    const scratchDir = this.opts.scratchRoot !== undefined ? path.join(this.opts.scratchRoot, uid) : undefined;
    const sup = new Supervisor({
      vmi,
      runDir,
      logger: log,
      ...(qs ? { launcherSandbox: launcherSandbox(vmi, qs.user, { runDir, qemuBinary: qs.qemuBinary, ...(scratchDir ? { scratchDir } : {}) }) } : {}),
      launcherServer: this.opts.launcherServer,
      launcherBinary: this.opts.launcherBinary,
      launcherSocket: this.opts.launcherSocket,
      prepare: images ? waitingForImages(prepare, { onImagesChanged: images, writeStatus: callbacks.writeStatus, logger: log }) : prepare,
      procRoot: this.opts.procRoot ?? DEFAULT_PROC_ROOT,
      ...(this.opts.cgroups ? { cgroups: this.opts.cgroups } : {}),
      ...(this.opts.launcherSpare && !inPod ? { launcherSpare: this.opts.launcherSpare } : {}),
      ...dedicatedCpuPinning(vmi, { ...cpus, procRoot: this.opts.procRoot ?? DEFAULT_PROC_ROOT, log }),
      ...this.networkFor(uid),
      ...podDeps,
      ...callbacks,
    });
    this.supervisors.set(uid, sup);
    return sup;
  }

  private networkFor(uid: string): Pick<SupervisorDeps, 'releaseNetwork' | 'guestInterfaces' | 'resumeGate'> {
    const network = this.opts.network;
    if (!network?.enabled) return {};
    return {
      releaseNetwork: () => network.teardown(uid),
      guestInterfaces: (g) => network.withGuestInfo(uid, g),
      resumeGate: () => network.resumeGate(uid),
    };
  }

  private async onlineCpus(): Promise<number[]> {
    return readCpuListFile(this.opts.cpuOnlinePath ?? '/sys/devices/system/cpu/online');
  }

  /** Serialises work per VMI so a start and a delete never interleave. */
  private track(uid: string, work: Promise<void>): void {
    const prev = this.busy.get(uid) ?? Promise.resolve();
    const next = prev.then(() => work).catch((e: unknown) => this.log.error({ err: e, uid }, 'VMI work failed'));
    this.busy.set(uid, next);
    void next.finally(() => {
      if (this.busy.get(uid) === next) this.busy.delete(uid);
    });
  }

  private reconcile(obj: KubeObject<'VirtualMachineInstance'>): void {
    if (!isStoredVmi(obj)) {
      this.log.warn({ vmi: { namespace: obj.metadata.namespace, name: obj.metadata.name } }, 'ignoring a VirtualMachineInstance without a spec');
      return;
    }
    const vmi = this.opts.pods ? this.defaulted(obj) : obj;
    if (!vmi) return;
    const uid = vmi.metadata.uid!;
    if (vmi.status?.nodeName !== this.opts.nodeName) return;
    const sup = this.supervisors.get(uid);
    if (vmi.metadata.deletionTimestamp) {
      if (this.busy.has(`delete:${uid}`)) return;
      const work = this.finalize(vmi, sup);
      this.busy.set(`delete:${uid}`, work);
      return;
    }
    if (!sup && vmi.status?.phase === 'Scheduled') {
      const pods = this.opts.pods;
      if (!pods) {
        if (!startTraces.begin(uid, vmi.metadata.name, 'supervisor.created')) startTraces.mark(uid, 'supervisor.created');
        const s = this.newSupervisor(vmi);
        this.track(uid, s.start());
        return;
      }
      // Kubernetes mode: once the launcher pod is known; until then it is looked at again every second.
      const podUid = pods.podOf(uid);
      if (!podUid) {
        const { namespace, name } = vmi.metadata;
        setTimeout(() => void (!this.stopped && !this.supervisors.has(uid) && this.refresh(namespace, name).catch(() => undefined)), 1000).unref();
        return;
      }
      if (this.busy.has(`open:${uid}`)) return;
      const opening = pods.open(podUid, uid).then((runDir) => {
        if (this.supervisors.has(uid)) return;
        const s = this.newSupervisor(vmi, { runDir, podUid });
        // A launcher that calls in with QEMU started (its daemon died before Running) is adopted by start().
        this.track(
          uid,
          s.start().then(() => this.adoptPodNetwork(vmi, s, pods)),
        );
      });
      this.busy.set(`open:${uid}`, opening);
      void opening
        .catch((e: unknown) => this.log.error({ err: e, uid }, "cannot listen for the launcher of the VMI's pod"))
        .finally(() => this.busy.delete(`open:${uid}`));
    }
  }

  /** A QEMU found running in its pod gets DHCP served again; status.interfaces is filled if its launch was never recorded. */
  private async adoptPodNetwork(vmi: StoredVmi, sup: Supervisor, pods: PodLaunchers): Promise<void> {
    if (!sup.adopted || sup.launcherPid === undefined || sup.exited || !pods.adoptNetwork) return;
    const interfaces = await pods.adoptNetwork(vmi, sup.launcherPid);
    if (interfaces.length === 0 || vmi.status?.interfaces?.length) return;
    const { namespace, name } = vmi.metadata;
    await this.opts.store.updateStatus<VirtualMachineInstanceStatus>('VirtualMachineInstance', namespace, name, (st) =>
      st?.interfaces?.length ? st : { ...st, interfaces },
    );
  }

  /** Kubernetes mode: the VMI with vmlet's defaults (vmi-defaults.ts); one that admission would refuse fails here. */
  private defaulted(obj: StoredVmi): StoredVmi | undefined {
    const r = withVmletDefaults(obj);
    if ('vmi' in r) return r.vmi;
    const { namespace, name } = obj.metadata;
    if (obj.status?.nodeName !== this.opts.nodeName || FINAL.has(obj.status?.phase ?? '') || obj.metadata.deletionTimestamp) return undefined;
    this.log.warn({ vmi: { namespace, name }, err: r.error }, 'VMI spec refused');
    const fail = (st: VirtualMachineInstanceStatus | undefined): VirtualMachineInstanceStatus => ({
      ...st,
      phase: 'Failed',
      reason: 'InvalidSpec',
      message: r.message,
    });
    void this.opts.store.updateStatus<VirtualMachineInstanceStatus>('VirtualMachineInstance', namespace, name, fail).catch(() => undefined);
    return undefined;
  }

  /** Deletion: stop QEMU within the grace period, remove its run dir, then let the object go. */
  private async finalize(vmi: StoredVmi, sup: Supervisor | undefined): Promise<void> {
    const uid = vmi.metadata.uid!;
    try {
      if (sup) {
        await sup.stop(vmi.spec.terminationGracePeriodSeconds ?? 30, 'deleted');
        await sup.cleanup();
        this.supervisors.delete(uid);
      } else if (this.opts.pods) {
        await this.opts.pods.releaseNetwork?.(uid);
        const podUid = this.opts.pods.podOf(uid);
        if (podUid) await this.opts.pods.close(podUid);
      } else {
        await this.removeVmDirs(uid);
        await this.opts.cgroups?.remove(uid, this.log);
        await this.opts.network?.teardown(uid);
      }
      const cur = await this.opts.store.get('VirtualMachineInstance', vmi.metadata.namespace, vmi.metadata.name);
      const mine = this.opts.finalizer ?? VMI_FINALIZER;
      if (cur && cur.metadata.uid === uid && cur.metadata.finalizers?.includes(mine)) {
        const finalizers = cur.metadata.finalizers.filter((f) => f !== mine);
        await this.opts.store.update({ ...cur, metadata: { ...cur.metadata, finalizers } });
      }
    } catch (e) {
      this.log.error({ err: e, uid }, 'VMI cleanup failed');
    } finally {
      this.busy.delete(`delete:${uid}`);
    }
  }

  /** For shutdown and tests: waits until no start or delete is in flight. */
  async idle(): Promise<void> {
    while (this.busy.size > 0) await Promise.all(this.busy.values());
  }

  stop(): void {
    this.stopped = true;
    this.watch?.close();
  }
}
