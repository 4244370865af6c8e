// Skipping the rest of a running test with a stated reason: tap reports a skipped subtest named by the reason (its typed form takes a callback, never run).

/** What `skipWith` needs of a tap test. */
export interface Skippable {
  skip(name: string, cb: () => void): unknown;
}

export function skipWith(t: Skippable, reason: string): void {
  void t.skip(reason, () => undefined);
}
