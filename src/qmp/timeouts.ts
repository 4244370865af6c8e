// Default per-command timeouts of the QMP client: short for queries, long for device operations and quit.

/** Reads and other commands that only look at state; QEMU answers these from its main loop at once. */
export const QUERY_TIMEOUT_MS = 5_000;
/** Run-state changes and small settings (cont, stop, set-action, balloon, getfd, migrate start). */
export const CONTROL_TIMEOUT_MS = 10_000;
/** Device and backend changes that may open files, wait for I/O to drain, or touch the network; and quit. */
export const DEVICE_TIMEOUT_MS = 30_000;
/** Anything not in the table (raw execute of other commands). */
export const DEFAULT_TIMEOUT_MS = 30_000;

const CONTROL = [
  'qmp_capabilities',
  'cont',
  'stop',
  'system_powerdown',
  'system_reset',
  'set-action',
  'balloon',
  'getfd',
  'closefd',
  'add-fd',
  'remove-fd',
  'migrate',
  'migrate_cancel',
  'migrate-set-capabilities',
  'migrate-set-parameters',
];
const DEVICE = [
  'quit',
  'device_add',
  'device_del',
  'blockdev-add',
  'blockdev-del',
  'netdev_add',
  'netdev_del',
  'chardev-add',
  'chardev-remove',
  'object-add',
  'object-del',
  'human-monitor-command',
];

const table = new Map<string, number>();
for (const c of CONTROL) table.set(c, CONTROL_TIMEOUT_MS);
for (const c of DEVICE) table.set(c, DEVICE_TIMEOUT_MS);

/** The default timeout of a command: the table above, then `query-*` / `qom-*` as queries, else DEFAULT_TIMEOUT_MS. */
export function defaultTimeoutFor(command: string): number {
  const t = table.get(command);
  if (t !== undefined) return t;
  if (command.startsWith('query-') || command.startsWith('qom-')) return QUERY_TIMEOUT_MS;
  return DEFAULT_TIMEOUT_MS;
}
