// Records DHCP leases in the lease file only when that is worth a write (a new client MAC, a release, a recorded expiry fallen too far behind) and at most once per MIN_WRITE_INTERVAL_MS per sandbox interface, so a guest that floods DHCP cannot make the daemon rewrite and fsync the file in a loop.
import type { DhcpEvent, NetLogger } from './dhcp-server.js';
import type { Ipam } from './ipam.js';
import type { LeaseInterface } from './types.js';

/** What the lease file holds of an interface's DHCP lease. */
export type DhcpRecord = NonNullable<LeaseInterface['dhcp']>;

/**
 * Writes of one interface are at least this far apart; what changes meanwhile waits and is written as one. Each
 * interface answers one client MAC (the server ignores others), so this is the per-MAC rate.
 */
export const MIN_WRITE_INTERVAL_MS = 5_000;
/**
 * A renewal is written once the recorded expiry is this share of the lease time behind the new one. Clients renew
 * at half the lease time (T1), so each of their renewals is written; one that renews faster gets one write per
 * quarter lease.
 */
export const RENEWAL_LAG_SHARE = 0.25;
const DECLINE_LOG_INTERVAL_MS = 60_000;
/** Past this many remembered interfaces, those whose lease is gone are forgotten. */
const PRUNE_ABOVE = 256;

/**
 * Why a write is due: another (or a first) client MAC, a release of a recorded lease, a renewal past the lag, or
 * the first lease this process sees on the interface (after a daemon restart: one write per interface confirms the file).
 */
export type WriteReason = 'new-client' | 'released' | 'renewal' | 'first-seen';

/** The record a lease event asks for. */
export function recordOf(e: Extract<DhcpEvent, { type: 'lease' }>): DhcpRecord {
  return { acquiredAt: e.at.toISOString(), expiresAt: new Date(e.at.getTime() + e.leaseSeconds * 1000).toISOString(), clientMac: e.clientMac };
}

/** Pure: why replacing `recorded` by `next` (undefined: a release) needs a write, or null. `seen`: this process already wrote the interface. */
export function writeReason(recorded: DhcpRecord | undefined, next: DhcpRecord | undefined, seen: boolean, leaseSeconds: number): WriteReason | null {
  if (next === undefined) return recorded === undefined ? null : 'released';
  if (recorded === undefined || recorded.clientMac !== next.clientMac) return 'new-client';
  if (!seen) return 'first-seen';
  const lagMs = Date.parse(next.expiresAt) - Date.parse(recorded.expiresAt);
  // An unreadable recorded expiry (NaN) is rewritten.
  return lagMs < leaseSeconds * 1000 * RENEWAL_LAG_SHARE ? null : 'renewal';
}

export interface LeaseRecorderOptions {
  /** The lease table; null before the network manager started (events are dropped then). */
  leases: () => Pick<Ipam, 'get' | 'patchInterface'> | null;
  log: NetLogger;
  minWriteIntervalMs?: number;
  now?: () => number;
}

interface Wanted {
  next: DhcpRecord | undefined;
  leaseSeconds: number;
}

function splitKey(key: string): { uid: string; name: string } {
  const slash = key.lastIndexOf('/');
  return { uid: key.slice(0, slash), name: key.slice(slash + 1) };
}

export class LeaseRecorder {
  /** DHCP events seen, lease-file writes made, events that needed none, and writes that waited for the interval. */
  readonly stats = { events: 0, writes: 0, skipped: 0, deferred: 0 };
  /** The state to write per interface key (`uid/iface`), not written yet. */
  readonly #wanted = new Map<string, Wanted>();
  /** When each interface was last written (or tried): the rate limit. */
  readonly #lastTry = new Map<string, number>();
  /** Interfaces this process has written. */
  readonly #seen = new Set<string>();
  /** Per interface: its write, waiting for the interval or running. */
  readonly #busy = new Map<string, Promise<void>>();
  /** Ends the wait of an interface's write at once (flush). */
  readonly #wake = new Map<string, () => void>();
  readonly #declineLogged = new Map<string, number>();
  #idle: Promise<void> | undefined;
  #flushing = 0;
  readonly #interval: number;
  readonly #now: () => number;

  constructor(private readonly opts: LeaseRecorderOptions) {
    this.#interval = opts.minWriteIntervalMs ?? MIN_WRITE_INTERVAL_MS;
    this.#now = opts.now ?? Date.now;
  }

  /** Takes one DHCP event (the server's onEvent). Cheap when nothing changes: one lookup, no write. */
  onEvent(e: DhcpEvent): void {
    this.stats.events++;
    const { uid, name } = splitKey(e.key);
    if (e.type === 'decline') {
      const last = this.#declineLogged.get(e.key) ?? -Infinity;
      if (this.#now() - last >= DECLINE_LOG_INTERVAL_MS) {
        this.#declineLogged.set(e.key, this.#now());
        this.opts.log.warn({ uid, iface: name, ip: e.ip }, 'guest declined its address (someone else uses it?)');
      }
      return;
    }
    const ipam = this.opts.leases();
    const li = ipam?.get(uid)?.interfaces?.find((i) => i.name === name);
    if (!li) return;
    const wanted: Wanted = e.type === 'lease' ? { next: recordOf(e), leaseSeconds: e.leaseSeconds } : { next: undefined, leaseSeconds: 0 };
    // A write already waiting takes this state instead, whatever it is: the last event wins.
    if (!this.#wanted.has(e.key) && writeReason(li.dhcp, wanted.next, this.#seen.has(e.key), wanted.leaseSeconds) === null) {
      this.stats.skipped++;
      return;
    }
    this.#wanted.set(e.key, wanted);
    this.schedule(e.key);
    if (this.#lastTry.size > PRUNE_ABOVE) this.prune();
  }

  /** Resolves once every write due so far (also those waiting for the interval) is done. */
  settled(): Promise<void> {
    if (this.#busy.size === 0) return Promise.resolve();
    this.#idle ??= (async () => {
      while (this.#busy.size > 0) await Promise.all(this.#busy.values());
      this.#idle = undefined;
    })();
    return this.#idle;
  }

  /** Writes what waits for the interval now, and resolves when every write is done. */
  async flush(): Promise<void> {
    this.#flushing++;
    try {
      for (const wake of [...this.#wake.values()]) wake();
      await this.settled();
    } finally {
      this.#flushing--;
    }
  }

  private schedule(key: string): void {
    // A waiting or running write takes the latest wanted state when it runs; after it, the rest is scheduled again.
    if (this.#busy.has(key)) return;
    const waitMs = (this.#lastTry.get(key) ?? -Infinity) + this.#interval - this.#now();
    const waited = waitMs > 0 && this.#flushing === 0 ? this.wait(key, waitMs) : Promise.resolve();
    const run = waited
      .then(() => this.write(key))
      .finally(() => {
        this.#busy.delete(key);
        if (this.#wanted.has(key)) this.schedule(key);
      });
    this.#busy.set(key, run);
  }

  private wait(key: string, ms: number): Promise<void> {
    this.stats.deferred++;
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.#wake.delete(key);
        resolve();
      };
      // Not unref'd: a daemon that stops waits for it (NetManager.close), at most one interval.
      const timer = setTimeout(done, ms);
      this.#wake.set(key, done);
    });
  }

  private async write(key: string): Promise<void> {
    const want = this.#wanted.get(key);
    const ipam = this.opts.leases();
    this.#wanted.delete(key);
    if (!want || !ipam) return;
    const { uid, name } = splitKey(key);
    let reason: WriteReason | null = null;
    this.#lastTry.set(key, this.#now());
    try {
      const wrote = await ipam.patchInterface(uid, name, (li) => {
        reason = writeReason(li.dhcp, want.next, this.#seen.has(key), want.leaseSeconds);
        if (reason === null) return undefined;
        // Seen from now on: the events that come while this write runs compare with it.
        this.#seen.add(key);
        const { dhcp: _old, ...rest } = li;
        return want.next ? { ...rest, dhcp: want.next } : rest;
      });
      if (!wrote) {
        this.stats.skipped++;
        return;
      }
      this.stats.writes++;
      this.opts.log.info({ uid, iface: name, reason, mac: want.next?.clientMac, expiresAt: want.next?.expiresAt }, 'dhcp lease recorded');
    } catch (err) {
      this.opts.log.warn({ uid, err }, 'cannot record the DHCP lease; trying again');
      // Retried after the interval unless a newer state is wanted by then.
      if (!this.#wanted.has(key)) this.#wanted.set(key, want);
    }
  }

  /** Forgets interfaces whose lease is gone (their VMIs were deleted). */
  private prune(): void {
    const ipam = this.opts.leases();
    if (!ipam) return;
    for (const key of [...this.#lastTry.keys(), ...this.#declineLogged.keys()]) {
      if (this.#busy.has(key) || ipam.get(splitKey(key).uid)) continue;
      this.#lastTry.delete(key);
      this.#seen.delete(key);
      this.#declineLogged.delete(key);
    }
  }
}
