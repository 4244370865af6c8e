// Counts the open API connections of each client uid (SO_PEERCRED) across the daemon's sockets, so that one client cannot hold every connection the server accepts.

export class ClientConnections {
  readonly #open = new Map<number, number>();

  /** `max`: connections per uid, 0 = no limit (limits.maxConnectionsPerClient). */
  constructor(readonly max: number) {}

  /** Counts one more connection of `uid` and returns true, or returns false (counting nothing) when it already holds `max`. */
  acquire(uid: number): boolean {
    const n = this.#open.get(uid) ?? 0;
    if (this.max > 0 && n >= this.max) return false;
    this.#open.set(uid, n + 1);
    return true;
  }

  /** One connection of `uid` closed (call once per successful acquire). */
  release(uid: number): void {
    const n = (this.#open.get(uid) ?? 0) - 1;
    if (n > 0) this.#open.set(uid, n);
    else this.#open.delete(uid);
  }

  /** Open connections of `uid`. */
  count(uid: number): number {
    return this.#open.get(uid) ?? 0;
  }
}
