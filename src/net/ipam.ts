// Persistent address management for the host subnet: one address per uid, kept in a JSON file written atomically, never handed out twice.
import fs from 'node:fs/promises';
import path from 'node:path';
import { VmletError } from '../errors.js';
import { formatIPv4, hostRange, parseCidr, parseIPv4, contains } from './ipv4.js';
import type { Lease, LeaseInterface } from './types.js';

export const IPAM_FILE = 'net-leases.json';

interface IpamFile {
  version: 1;
  subnet: string;
  /** where the next search for a free address starts (round robin, so a released address is reused last) */
  next: string;
  leases: Record<string, Lease>;
}

export interface IpamOptions {
  /** directory holding the lease file (created if missing) */
  stateDir: string;
  subnet: string;
  fileName?: string;
  now?: () => Date;
}

/** Atomic replace: write a temp file, fsync it, rename over the target, fsync the directory. */
export async function writeFileAtomic(file: string, data: string): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}-${Math.random().toString(16).slice(2)}`;
  const fh = await fs.open(tmp, 'w', 0o600);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await fs.rename(tmp, file);
  } catch (e) {
    await fs.rm(tmp, { force: true });
    throw e;
  }
  const dir = await fs.open(path.dirname(file), 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}

function checkFile(v: unknown, file: string): IpamFile {
  const bad = (why: string): never => {
    throw new VmletError('IPAM_STATE_CORRUPT', `${file}: ${why}; move it away to start with no leases (running sandboxes are then removed by adopt)`);
  };
  if (typeof v !== 'object' || v === null) return bad('not a JSON object');
  const o = v as Partial<IpamFile>;
  if (o.version !== 1) return bad(`unknown version ${JSON.stringify(o.version)}`);
  if (typeof o.subnet !== 'string' || typeof o.next !== 'string' || typeof o.leases !== 'object' || o.leases === null)
    return bad('missing subnet, next or leases');
  const seen = new Map<string, string>();
  for (const [uid, l] of Object.entries(o.leases)) {
    if (typeof l !== 'object' || l === null || l.uid !== uid || typeof l.address !== 'string') bad(`lease ${uid} is malformed`);
    const prev = seen.get(l.address);
    if (prev !== undefined) bad(`address ${l.address} is leased to both ${prev} and ${uid}`);
    seen.set(l.address, uid);
  }
  return o as IpamFile;
}

/**
 * The lease table. `open` loads it (or starts empty); every change is written before the call
 * resolves, and changes are serialised, so concurrent callers never see or write a torn state.
 */
export class Ipam {
  readonly file: string;
  readonly subnet: string;
  private state: IpamFile;
  private queue: Promise<unknown> = Promise.resolve();
  private readonly now: () => Date;
  /** Lease-file writes so far (each fsyncs the file and its folder). */
  writes = 0;

  private constructor(file: string, subnet: string, state: IpamFile, now: () => Date) {
    this.file = file;
    this.subnet = subnet;
    this.state = state;
    this.now = now;
  }

  static async open(opts: IpamOptions): Promise<Ipam> {
    const subnet = parseCidr(opts.subnet);
    const [first] = hostRange(subnet);
    await fs.mkdir(opts.stateDir, { recursive: true, mode: 0o700 });
    const file = path.join(opts.stateDir, opts.fileName ?? IPAM_FILE);
    let state: IpamFile;
    let text: string | null = null;
    try {
      text = await fs.readFile(file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new VmletError('IPAM_STATE_CORRUPT', `cannot read ${file}`, { cause: e });
    }
    if (text === null) {
      state = { version: 1, subnet: opts.subnet, next: formatIPv4(first + 1), leases: {} };
    } else {
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch (e) {
        throw new VmletError('IPAM_STATE_CORRUPT', `${file} is not JSON`, { cause: e });
      }
      state = checkFile(parsed, file);
      if (state.subnet !== opts.subnet) {
        if (Object.keys(state.leases).length > 0) {
          throw new VmletError(
            'IPAM_SUBNET_CHANGED',
            `${file} holds leases in ${state.subnet} but the subnet is now ${opts.subnet}; delete those VMs first, or set the subnet back`,
          );
        }
        state = { version: 1, subnet: opts.subnet, next: formatIPv4(first + 1), leases: {} };
      }
    }
    return new Ipam(file, opts.subnet, state, opts.now ?? (() => new Date()));
  }

  /** The lease of `uid`, if any (a copy). */
  get(uid: string): Lease | undefined {
    const l = this.state.leases[uid];
    return l ? structuredClone(l) : undefined;
  }

  list(): Lease[] {
    return Object.values(this.state.leases).map((l) => structuredClone(l));
  }

  /** The lease holding `address`, if any. */
  byAddress(address: string): Lease | undefined {
    return this.list().find((l) => l.address === address);
  }

  /**
   * Gives `uid` an address (its existing one when it has a lease). The gateway (first host address),
   * network and broadcast addresses are never given; IPAM_EXHAUSTED when all are taken.
   */
  allocate(uid: string, info: Omit<Lease, 'uid' | 'address' | 'allocatedAt'> = {}): Promise<Lease> {
    return this.change(() => {
      const have = this.state.leases[uid];
      if (have) return structuredClone(have);
      const cidr = parseCidr(this.subnet);
      const [first, last] = hostRange(cidr);
      const lo = first + 1; // first is the gateway
      const used = new Set(Object.values(this.state.leases).map((l) => l.address));
      let start = contains(cidr, parseIPv4(this.state.next)) ? parseIPv4(this.state.next) : lo;
      if (start < lo || start > last) start = lo;
      const size = last - lo + 1;
      for (let i = 0; i < size; i++) {
        const a = lo + ((start - lo + i) % size);
        const text = formatIPv4(a);
        if (used.has(text)) continue;
        const lease: Lease = { ...structuredClone(info), uid, address: text, allocatedAt: this.now().toISOString() };
        this.state.leases[uid] = lease;
        this.state.next = formatIPv4(a + 1 > last ? lo : a + 1);
        return structuredClone(lease);
      }
      throw new VmletError('IPAM_EXHAUSTED', `no free address left in ${this.subnet} (${used.size} leases); use a larger subnet`);
    });
  }

  /** Replaces the non-address fields of a lease. IPAM_NO_LEASE when `uid` has none. */
  update(uid: string, patch: Partial<Omit<Lease, 'uid' | 'address' | 'allocatedAt'>>): Promise<Lease> {
    return this.change(() => {
      const have = this.state.leases[uid];
      if (!have) throw new VmletError('IPAM_NO_LEASE', `no lease for uid ${uid}`);
      const next: Lease = { ...have, ...structuredClone(patch), uid, address: have.address, allocatedAt: have.allocatedAt };
      this.state.leases[uid] = next;
      return structuredClone(next);
    });
  }

  /**
   * Replaces the interface `name` of `uid`'s lease with `fn(it)`, read and written in one step of the queue (no
   * other change can fall between). `fn` returning undefined changes nothing and writes nothing. Resolves whether
   * it wrote; false also when the lease or interface is gone.
   */
  patchInterface(uid: string, name: string, fn: (li: LeaseInterface) => LeaseInterface | undefined): Promise<boolean> {
    return this.changeIf(() => {
      const lease = this.state.leases[uid];
      const i = lease?.interfaces?.findIndex((li) => li.name === name) ?? -1;
      if (!lease?.interfaces || i < 0) return { result: false, write: false };
      const next = fn(structuredClone(lease.interfaces[i]!));
      if (next === undefined) return { result: false, write: false };
      lease.interfaces[i] = next;
      return { result: true, write: true };
    });
  }

  /** Frees the address of `uid`; true if there was a lease (no write when there was none). */
  release(uid: string): Promise<boolean> {
    return this.changeIf(() => {
      if (!this.state.leases[uid]) return { result: false, write: false };
      delete this.state.leases[uid];
      return { result: true, write: true };
    });
  }

  /** Applies `fn` to a copy of the state and writes it; the in-memory state changes only if the write succeeded. */
  private change<T>(fn: () => T): Promise<T> {
    return this.changeIf(() => ({ result: fn(), write: true }));
  }

  /** Like change, but nothing is changed or written when `fn` says `write: false`. */
  private changeIf<T>(fn: () => { result: T; write: boolean }): Promise<T> {
    const run = async (): Promise<T> => {
      const before = structuredClone(this.state);
      let out: { result: T; write: boolean };
      try {
        out = fn();
      } catch (e) {
        this.state = before;
        throw e;
      }
      if (!out.write) {
        this.state = before;
        return out.result;
      }
      try {
        this.writes++;
        await writeFileAtomic(this.file, `${JSON.stringify(this.state, null, 2)}\n`);
      } catch (e) {
        this.state = before;
        throw new VmletError('IPAM_WRITE_FAILED', `cannot write ${this.file}`, { cause: e });
      }
      return out.result;
    };
    const p = this.queue.then(run, run);
    this.queue = p.catch(() => undefined);
    return p;
  }
}
