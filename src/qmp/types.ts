// QMP wire types for QEMU 7.2+: the greeting, the typed command map (arguments and return values) and the typed event map.

// Field names follow QEMU's QAPI schema (checked against `query-qmp-schema` of QEMU 7.2); open-ended unions are typed loosely.

export interface QemuVersionTriple {
  major: number;
  minor: number;
  micro: number;
}
export interface VersionInfo {
  qemu: QemuVersionTriple;
  package: string;
}

export interface QmpGreeting {
  QMP: { version: VersionInfo; capabilities: string[] };
}

export type RunState =
  | 'debug'
  | 'inmigrate'
  | 'internal-error'
  | 'io-error'
  | 'paused'
  | 'postmigrate'
  | 'prelaunch'
  | 'finish-migrate'
  | 'restore-vm'
  | 'running'
  | 'save-vm'
  | 'shutdown'
  | 'suspended'
  | 'watchdog'
  | 'guest-panicked'
  | 'colo';

export interface StatusInfo {
  running: boolean;
  singlestep?: boolean;
  status: RunState;
}

export type ShutdownCause =
  | 'none'
  | 'host-error'
  | 'host-qmp-quit'
  | 'host-qmp-system-reset'
  | 'host-signal'
  | 'host-ui'
  | 'guest-shutdown'
  | 'guest-reset'
  | 'guest-panic'
  | 'subsystem-reset'
  | 'snapshot-load';

export type RebootAction = 'reset' | 'shutdown';
export type ShutdownAction = 'poweroff' | 'pause';
export type PanicAction = 'pause' | 'shutdown' | 'exit-failure' | 'none';
export type WatchdogAction = 'reset' | 'shutdown' | 'poweroff' | 'pause' | 'debug' | 'none' | 'inject-nmi';
export type GuestPanicAction = 'pause' | 'poweroff' | 'run';

export interface SetActionArgs {
  reboot?: RebootAction;
  shutdown?: ShutdownAction;
  panic?: PanicAction;
  watchdog?: WatchdogAction;
}

export interface CpuInstanceProperties {
  'node-id'?: number;
  'socket-id'?: number;
  'die-id'?: number;
  'cluster-id'?: number;
  'core-id'?: number;
  'thread-id'?: number;
}
export interface CpuInfoFast {
  'cpu-index': number;
  'qom-path': string;
  /** Host thread id of the vCPU: what vCPU pinning needs. */
  'thread-id': number;
  props?: CpuInstanceProperties;
  target: string;
  [extra: string]: unknown;
}

/** One entry of query-qmp-schema (introspection); type names other than commands/events are masked by QEMU. */
export interface SchemaInfo {
  name: string;
  'meta-type': string;
  [field: string]: unknown;
}

export interface BlockDeviceInfo {
  file: string;
  'node-name'?: string;
  ro: boolean;
  drv: string;
  backing_file?: string;
  encrypted: boolean;
  [field: string]: unknown;
}
export interface BlockInfo {
  device: string;
  qdev?: string;
  type: string;
  removable: boolean;
  locked: boolean;
  inserted?: BlockDeviceInfo;
  tray_open?: boolean;
  'io-status'?: 'ok' | 'failed' | 'nospace';
  [field: string]: unknown;
}
export interface BlockDeviceStats {
  rd_bytes: number;
  wr_bytes: number;
  unmap_bytes: number;
  rd_operations: number;
  wr_operations: number;
  flush_operations: number;
  unmap_operations: number;
  rd_total_time_ns: number;
  wr_total_time_ns: number;
  flush_total_time_ns: number;
  failed_rd_operations: number;
  failed_wr_operations: number;
  failed_flush_operations: number;
  [field: string]: unknown;
}
export interface BlockStats {
  device?: string;
  qdev?: string;
  'node-name'?: string;
  stats: BlockDeviceStats;
  parent?: BlockStats;
  backing?: BlockStats;
  [field: string]: unknown;
}

/** blockdev-add takes a union keyed by `driver`; the driver-specific members are passed through. */
export interface BlockdevOptions {
  driver: string;
  'node-name'?: string;
  'read-only'?: boolean;
  'auto-read-only'?: boolean;
  discard?: 'ignore' | 'unmap';
  cache?: { direct?: boolean; 'no-flush'?: boolean };
  'detect-zeroes'?: 'off' | 'on' | 'unmap';
  [driverSpecific: string]: unknown;
}

export interface DeviceAddArgs {
  driver: string;
  id?: string;
  bus?: string;
  [property: string]: unknown;
}
export interface NetdevAddArgs {
  id: string;
  type: string;
  [option: string]: unknown;
}
export interface ObjectAddArgs {
  'qom-type': string;
  id: string;
  [property: string]: unknown;
}

/** A chardev backend: `{type: 'file', data: {out: '/dev/fdset/3'}}`, `{type: 'socket', data: {addr: ...}}`, ... */
export interface ChardevBackend {
  type: string;
  data: Record<string, unknown>;
}
export interface ChardevAddArgs {
  id: string;
  backend: ChardevBackend;
}
export interface ChardevReturn {
  pty?: string;
}

export interface AddFdArgs {
  'fdset-id'?: number;
  opaque?: string;
}
export interface AddfdInfo {
  'fdset-id': number;
  fd: number;
}

export interface BalloonInfo {
  actual: number;
}

export type MigrationStatus =
  | 'none'
  | 'setup'
  | 'cancelling'
  | 'cancelled'
  | 'active'
  | 'postcopy-active'
  | 'postcopy-paused'
  | 'postcopy-recover'
  | 'completed'
  | 'failed'
  | 'colo'
  | 'pre-switchover'
  | 'device'
  | 'wait-unplug';

export interface MigrateArgs {
  uri: string;
  blk?: boolean;
  inc?: boolean;
  detach?: boolean;
  resume?: boolean;
}
export interface MigrationStats {
  transferred: number;
  remaining: number;
  total: number;
  duplicate: number;
  normal: number;
  'normal-bytes': number;
  'dirty-pages-rate': number;
  mbps: number;
  'dirty-sync-count': number;
  [field: string]: unknown;
}
export interface MigrationInfo {
  status?: MigrationStatus;
  ram?: MigrationStats;
  'total-time'?: number;
  'expected-downtime'?: number;
  downtime?: number;
  'setup-time'?: number;
  'error-desc'?: string;
  [field: string]: unknown;
}

export type Empty = Record<string, never>;

/** Commands with their argument and return types. `args: undefined` means the command takes none. */
export interface QmpCommandMap {
  qmp_capabilities: { args: { enable?: string[] }; ret: Empty };
  'query-status': { args: undefined; ret: StatusInfo };
  cont: { args: undefined; ret: Empty };
  stop: { args: undefined; ret: Empty };
  system_powerdown: { args: undefined; ret: Empty };
  system_reset: { args: undefined; ret: Empty };
  quit: { args: undefined; ret: Empty };
  'set-action': { args: SetActionArgs; ret: Empty };
  'query-version': { args: undefined; ret: VersionInfo };
  'query-cpus-fast': { args: undefined; ret: CpuInfoFast[] };
  'query-qmp-schema': { args: undefined; ret: SchemaInfo[] };
  'query-block': { args: undefined; ret: BlockInfo[] };
  'query-blockstats': { args: { 'query-nodes'?: boolean }; ret: BlockStats[] };
  'blockdev-add': { args: BlockdevOptions; ret: Empty };
  'blockdev-del': { args: { 'node-name': string }; ret: Empty };
  device_add: { args: DeviceAddArgs; ret: Empty };
  device_del: { args: { id: string }; ret: Empty };
  netdev_add: { args: NetdevAddArgs; ret: Empty };
  netdev_del: { args: { id: string }; ret: Empty };
  'chardev-add': { args: ChardevAddArgs; ret: ChardevReturn };
  'chardev-remove': { args: { id: string }; ret: Empty };
  'object-add': { args: ObjectAddArgs; ret: Empty };
  'object-del': { args: { id: string }; ret: Empty };
  /** Needs exactly one fd passed with the command (ExecuteOptions.fds). */
  getfd: { args: { fdname: string }; ret: Empty };
  closefd: { args: { fdname: string }; ret: Empty };
  /** Needs exactly one fd passed with the command (ExecuteOptions.fds). */
  'add-fd': { args: AddFdArgs; ret: AddfdInfo };
  'remove-fd': { args: { 'fdset-id': number; fd?: number }; ret: Empty };
  'query-balloon': { args: undefined; ret: BalloonInfo };
  balloon: { args: { value: number }; ret: Empty };
  migrate: { args: MigrateArgs; ret: Empty };
  'query-migrate': { args: undefined; ret: MigrationInfo };
  migrate_cancel: { args: undefined; ret: Empty };
  'qom-get': { args: { path: string; property: string }; ret: unknown };
  'human-monitor-command': { args: { 'command-line': string; 'cpu-index'?: number }; ret: string };
}

export type QmpCommandName = keyof QmpCommandMap;

export interface QmpTimestamp {
  seconds: number;
  microseconds: number;
}

export interface ShutdownEventData {
  guest: boolean;
  reason: ShutdownCause;
}
export interface GuestPanicInformation {
  type: string;
  [field: string]: unknown;
}

/** Events with their `data` types. Events without data have `Empty`. */
export interface QmpEventMap {
  SHUTDOWN: ShutdownEventData;
  POWERDOWN: Empty;
  STOP: Empty;
  RESUME: Empty;
  RESET: ShutdownEventData;
  SUSPEND: Empty;
  WAKEUP: Empty;
  GUEST_PANICKED: { action: GuestPanicAction; info?: GuestPanicInformation };
  GUEST_CRASHLOADED: { action: GuestPanicAction; info?: GuestPanicInformation };
  DEVICE_DELETED: { device?: string; path: string };
  DEVICE_UNPLUG_GUEST_ERROR: { device?: string; path: string };
  BLOCK_IO_ERROR: {
    device: string;
    'node-name'?: string;
    operation: 'read' | 'write';
    action: 'ignore' | 'report' | 'stop';
    nospace?: boolean;
    reason: string;
  };
  MIGRATION: { status: MigrationStatus };
  BALLOON_CHANGE: { actual: number };
  WATCHDOG: { action: WatchdogAction };
  RTC_CHANGE: { offset: number; 'qom-path': string };
  NIC_RX_FILTER_CHANGED: { name?: string; path: string };
  JOB_STATUS_CHANGE: { id: string; status: string };
}

export type QmpEventName = keyof QmpEventMap;

/** An event as it came off the wire. For unknown names `data` is whatever QEMU sent. */
export interface QmpEvent<N extends string = string> {
  event: N;
  data: N extends QmpEventName ? QmpEventMap[N] : Record<string, unknown>;
  timestamp: QmpTimestamp;
}

/** Union of all typed events, discriminated by `event`, for switch statements over events(). */
export type KnownQmpEvent = { [N in QmpEventName]: QmpEvent<N> }[QmpEventName];
