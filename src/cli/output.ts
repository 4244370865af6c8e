// kubectl-like output for the CLI: ages, aligned tables, and the table columns of VMIs, VMs and events.

export type Row = string[];

/** kubectl's HumanDuration: 45s, 3m20s, 12m, 5h3m, 2d4h, 400d, 3y20d. */
export function humanAge(from: string | undefined, now: number): string {
  if (!from) return '<unknown>';
  const t = Date.parse(from);
  if (Number.isNaN(t)) return '<unknown>';
  const seconds = Math.floor((now - t) / 1000);
  if (seconds < -1) return '<invalid>';
  if (seconds < 0) return '0s';
  if (seconds < 120) return `${seconds}s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 10) return seconds % 60 === 0 ? `${minutes}m` : `${minutes}m${seconds % 60}s`;
  if (minutes < 180) return `${minutes}m`;
  const hours = Math.floor(minutes / 60);
  if (hours < 8) return minutes % 60 === 0 ? `${hours}h` : `${hours}h${minutes % 60}m`;
  if (hours < 48) return `${hours}h`;
  const days = Math.floor(hours / 24);
  if (hours < 24 * 8) return hours % 24 === 0 ? `${days}d` : `${days}d${hours % 24}h`;
  if (hours < 24 * 365 * 2) return `${days}d`;
  const years = Math.floor(days / 365);
  if (hours < 24 * 365 * 8) return days % 365 === 0 ? `${years}y` : `${years}y${days % 365}d`;
  return `${years}y`;
}

/** A span of time in humanAge's words (`20s`, `3m20s`). */
export function humanDuration(ms: number): string {
  return humanAge(new Date(0).toISOString(), ms);
}

/** Columns padded to the widest cell, three spaces apart, no trailing blanks. `minWidths` keeps streamed rows aligned. */
export function formatTable(header: Row, rows0: Row[], minWidths: number[] = []): string {
  // Cells come from objects others wrote (a guest agent's names, a user's messages): no terminal control reaches the screen.
  const rows = rows0.map((r) => r.map(printable));
  const widths = header.map((h, i) => Math.max(h.length, minWidths[i] ?? 0, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: Row): string =>
    r
      .map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i] ?? 0)))
      .join('   ')
      .trimEnd();
  return [header, ...rows].map(line).join('\n') + '\n';
}

/** C0 and C1 control characters and DEL shown as `?`, so a cell can never move the cursor or recolour the terminal. */
export function printable(text: string): string {
  return text.replace(/[\u0000-\u001f\u007f-\u009f]/g, '?');
}

type Obj = Record<string, unknown>;

function obj(v: unknown): Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Obj) : {};
}

function arr(v: unknown): unknown[] {
  return Array.isArray(v) ? v : [];
}

function str(v: unknown): string {
  if (typeof v === 'string' && v !== '') return v;
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  return '<none>';
}

function condition(status: Obj, type: string): string | undefined {
  const c = arr(status.conditions)
    .map(obj)
    .find((x) => x.type === type);
  return typeof c?.status === 'string' ? c.status : undefined;
}

export function metaOf(o: unknown): { name: string; namespace: string; created: string | undefined } {
  const m = obj(obj(o).metadata);
  return {
    name: typeof m.name === 'string' ? m.name : '',
    namespace: typeof m.namespace === 'string' ? m.namespace : '',
    created: typeof m.creationTimestamp === 'string' ? m.creationTimestamp : undefined,
  };
}

export interface TableOptions {
  wide: boolean;
  allNamespaces: boolean;
  now: number;
}

function withNamespace(opts: TableOptions, header: Row, rows: { ns: string; row: Row }[]): string {
  if (!opts.allNamespaces)
    return formatTable(
      header,
      rows.map((r) => r.row),
    );
  return formatTable(
    ['NAMESPACE', ...header],
    rows.map((r) => [r.ns, ...r.row]),
  );
}

export function vmiTable(items: unknown[], opts: TableOptions): string {
  const header = ['NAME', 'AGE', 'PHASE', 'IP', 'NODENAME', 'READY'];
  if (opts.wide) header.push('PAUSED', 'CPUS', 'MEMORY');
  const rows = items.map((o) => {
    const m = metaOf(o);
    const status = obj(obj(o).status);
    const domain = obj(obj(obj(o).spec).domain);
    const row = [
      m.name,
      humanAge(m.created, opts.now),
      str(status.phase),
      str(obj(arr(status.interfaces)[0]).ipAddress),
      str(status.nodeName),
      condition(status, 'Ready') === 'True' ? 'True' : 'False',
    ];
    if (opts.wide) {
      const cpu = obj(domain.cpu);
      const n = (k: string): number => (typeof cpu[k] === 'number' ? (cpu[k] as number) : 1);
      const cpus = Object.keys(cpu).some((k) => ['cores', 'sockets', 'threads'].includes(k)) ? String(n('cores') * n('sockets') * n('threads')) : '<none>';
      const memory = obj(domain.memory).guest ?? obj(obj(domain.resources).requests).memory;
      row.push(condition(status, 'Paused') === 'True' ? 'True' : 'False', cpus, str(memory));
    }
    return { ns: m.namespace, row };
  });
  return withNamespace(opts, header, rows);
}

export function vmTable(items: unknown[], opts: TableOptions): string {
  const header = ['NAME', 'AGE', 'STATUS', 'READY'];
  if (opts.wide) header.push('RUNSTRATEGY');
  const rows = items.map((o) => {
    const m = metaOf(o);
    const status = obj(obj(o).status);
    const spec = obj(obj(o).spec);
    const row = [m.name, humanAge(m.created, opts.now), str(status.printableStatus), status.ready === true ? 'True' : 'False'];
    if (opts.wide) {
      const rs = typeof spec.runStrategy === 'string' ? spec.runStrategy : typeof spec.running === 'boolean' ? (spec.running ? 'Always' : 'Halted') : undefined;
      row.push(str(rs));
    }
    return { ns: m.namespace, row };
  });
  return withNamespace(opts, header, rows);
}

export const EVENT_HEADER: Row = ['LAST SEEN', 'TYPE', 'REASON', 'OBJECT', 'MESSAGE'];
/** Minimum column widths for streamed events (rows printed one by one cannot be measured in advance). */
export const EVENT_MIN_WIDTHS = [9, 7, 16, 40];

export function eventRow(e: unknown, now: number): Row {
  const o = obj(e);
  const inv = obj(o.involvedObject);
  const when = [o.lastTimestamp, o.eventTime, obj(o.metadata).creationTimestamp].find((x) => typeof x === 'string') as string | undefined;
  const kind = typeof inv.kind === 'string' ? inv.kind.toLowerCase() : 'object';
  const message = typeof o.message === 'string' ? o.message.replace(/\s*\n\s*/g, ' ') : '';
  return [humanAge(when, now), str(o.type), str(o.reason), `${kind}/${str(inv.name)}`, message];
}

// ---------------------------------------------------------------------------------------------
// describe: kubectl-describe-like text for a person

/** `Label:   value` lines, the values aligned; a multi-line value continues on indented lines. */
function fieldLines(rows: Array<[string, string]>): string {
  const width = Math.max(...rows.map(([label]) => label.length + 1)) + 2;
  return (
    rows
      .map(([label, value]) => {
        const [first = '', ...rest] = value.split('\n').map(printable);
        return [`${`${label}:`.padEnd(width)}${first}`.trimEnd(), ...rest.map((l) => `${' '.repeat(width)}${l}`.trimEnd())].join('\n');
      })
      .join('\n') + '\n'
  );
}

/** A section: `Title:` then the body indented by two, or `Title:  <none>` when there is nothing. */
function section(title: string, body: string | undefined): string {
  if (body === undefined || body.trim() === '') return `${title}:  <none>\n`;
  return `${title}:\n${body
    .trimEnd()
    .split('\n')
    .map((l) => `  ${l}`.trimEnd())
    .join('\n')}\n`;
}

function oneLine(v: unknown): string {
  return typeof v === 'string' && v !== '' ? v.replace(/\s*\n\s*/g, ' ') : '';
}

/** The conditions as a TYPE/STATUS/REASON/MESSAGE table, or undefined when there are none. */
export function conditionsTable(conditions: unknown): string | undefined {
  const rows = arr(conditions)
    .map(obj)
    .map((c) => [str(c.type), str(c.status), typeof c.reason === 'string' ? c.reason : '', oneLine(c.message)]);
  return rows.length === 0 ? undefined : formatTable(['TYPE', 'STATUS', 'REASON', 'MESSAGE'], rows);
}

function eventWhen(e: Obj): string | undefined {
  return [e.lastTimestamp, e.eventTime, obj(e.metadata).creationTimestamp].find((x) => typeof x === 'string') as string | undefined;
}

/** kubectl describe's event age: `12s`, or `12s (x3 over 5m)` for a repeated event. */
function eventAge(e: Obj, now: number): string {
  const last = humanAge(eventWhen(e), now);
  const count = typeof e.count === 'number' ? e.count : 1;
  if (count <= 1) return last;
  const first = typeof e.firstTimestamp === 'string' ? humanAge(e.firstTimestamp, now) : undefined;
  return first === undefined ? `${last} (x${count})` : `${last} (x${count} over ${first})`;
}

/** Events, oldest first, as an AGE/TYPE/REASON[/OBJECT]/MESSAGE table; undefined when there are none. */
export function eventsTable(events: unknown[], now: number, withObject: boolean): string | undefined {
  if (events.length === 0) return undefined;
  const sorted = events.map(obj).sort((a, b) => (Date.parse(eventWhen(a) ?? '') || 0) - (Date.parse(eventWhen(b) ?? '') || 0));
  const rows = sorted.map((e) => {
    const inv = obj(e.involvedObject);
    const kind =
      inv.kind === 'VirtualMachineInstance' ? 'vmi' : inv.kind === 'VirtualMachine' ? 'vm' : typeof inv.kind === 'string' ? inv.kind.toLowerCase() : 'object';
    const row = [eventAge(e, now), str(e.type), str(e.reason)];
    if (withObject) row.push(`${kind}/${str(inv.name)}`);
    row.push(oneLine(e.message));
    return row;
  });
  return formatTable(withObject ? ['AGE', 'TYPE', 'REASON', 'OBJECT', 'MESSAGE'] : ['AGE', 'TYPE', 'REASON', 'MESSAGE'], rows);
}

function created(m: { created: string | undefined }, now: number): string {
  return m.created === undefined ? '<unknown>' : `${m.created} (${humanAge(m.created, now)} ago)`;
}

/** What `status.vmlet` says about the accelerator: `kvm`, `tcg (software emulation)`, or <none> before QEMU started. */
function acceleratorOf(status: Obj): string {
  const rt = obj(status.vmlet);
  if (typeof rt.accel !== 'string') return '<none>';
  return rt.softwareEmulation === true || rt.accel === 'tcg' ? `${rt.accel} (software emulation, slow)` : rt.accel;
}

/** status.message, which carries QEMU's last error lines when a VMI failed: labelled so, and kept on its own lines. */
function messageSection(status: Obj): string {
  const message = typeof status.message === 'string' ? status.message.trim() : '';
  if (message === '') return '';
  return section(status.phase === 'Failed' ? 'Last QEMU error' : 'Message', message);
}

/** `vmlet describe vmi NAME`. `events` are those of this VMI (any order). */
export function describeVmi(vmi: unknown, events: unknown[], now: number): string {
  const m = metaOf(vmi);
  const status = obj(obj(vmi).status);
  const ips = arr(status.interfaces)
    .map(obj)
    .map((i) => (typeof i.ipAddress === 'string' && i.ipAddress !== '' ? i.ipAddress : undefined))
    .filter((x): x is string => x !== undefined);
  return [
    fieldLines([
      ['Name', m.name],
      ['Namespace', m.namespace],
      ['Created', created(m, now)],
      ['Phase', str(status.phase)],
      ['Reason', str(status.reason)],
      ['Node', str(status.nodeName)],
      ['IP', ips.length > 0 ? ips.join(', ') : '<none>'],
      ['Accelerator', acceleratorOf(status)],
    ]),
    section('Conditions', conditionsTable(status.conditions)),
    messageSection(status),
    section('Events', eventsTable(events, now, false)),
  ].join('');
}

/** `vmlet describe vm NAME`. `vmi` is its current VMI, if any; `events` those of the VM and of its VMIs. */
export function describeVm(vm: unknown, vmi: unknown, events: unknown[], now: number): string {
  const m = metaOf(vm);
  const o = obj(vm);
  const spec = obj(o.spec);
  const status = obj(o.status);
  const rs = typeof spec.runStrategy === 'string' ? spec.runStrategy : typeof spec.running === 'boolean' ? (spec.running ? 'Always' : 'Halted') : undefined;
  const rows: Array<[string, string]> = [
    ['Name', m.name],
    ['Namespace', m.namespace],
    ['Created', created(m, now)],
    ['Run strategy', str(rs)],
    ['Status', str(status.printableStatus)],
    ['Ready', status.ready === true ? 'True' : 'False'],
  ];
  const sf = obj(status.startFailure);
  if (typeof sf.consecutiveFailCount === 'number' && sf.consecutiveFailCount > 0) {
    const retry = typeof sf.retryAfterTimestamp === 'string' ? Date.parse(sf.retryAfterTimestamp) : NaN;
    const when = Number.isNaN(retry) ? '' : retry > now ? `; next start in ${humanDuration(retry - now)}` : '; retrying now';
    rows.push(['Start failures', `${sf.consecutiveFailCount} in a row${when}`]);
  }
  const vmiStatus = obj(obj(vmi).status);
  if (vmi !== undefined) {
    const reason = typeof vmiStatus.reason === 'string' && vmiStatus.reason !== '' ? ` (${vmiStatus.reason})` : '';
    rows.push(['VMI', `${str(vmiStatus.phase)}${reason}`], ['Accelerator', acceleratorOf(vmiStatus)]);
  } else rows.push(['VMI', '<none>']);
  return [
    fieldLines(rows),
    section('Conditions', conditionsTable(status.conditions)),
    vmi === undefined ? '' : messageSection(vmiStatus),
    section('Events', eventsTable(events, now, true)),
  ].join('');
}

// ---------------------------------------------------------------------------------------------
// version

/** GET /version's body (src/daemon/api-server.ts VersionInfo), as far as it could be read. */
export interface DaemonVersion {
  vmlet: string;
  qemu: string;
  kvm: { usable: boolean; reason: string; durationMs?: number };
  accel: string;
  useEmulation: boolean;
}

/** Reads GET /version's body; missing fields become "unknown". */
export function daemonVersionOf(body: unknown): DaemonVersion {
  const b = obj(body);
  const kvm = obj(b.kvm);
  const out: DaemonVersion = {
    vmlet: typeof b.vmlet === 'string' ? b.vmlet : 'unknown',
    qemu: typeof b.qemu === 'string' ? b.qemu : 'unknown',
    kvm: { usable: kvm.usable === true, reason: typeof kvm.reason === 'string' ? kvm.reason : 'unknown' },
    accel: typeof b.accel === 'string' ? b.accel : 'unknown',
    useEmulation: b.useEmulation === true,
  };
  if (typeof kvm.durationMs === 'number') out.kvm.durationMs = kvm.durationMs;
  return out;
}

/** What VMs get with these settings: the same rule as the daemon's accelerator choice (src/qemu/probe.ts resolveAccel). */
export function accelVerdict(v: DaemonVersion): string {
  const settings = v.accel === 'auto' ? `auto, useEmulation ${v.useEmulation}` : v.accel;
  const tcg = 'VMs run with software emulation (TCG, slow)';
  let verdict: string;
  if (v.accel === 'tcg') verdict = tcg;
  else if (v.kvm.usable) verdict = 'VMs run with KVM';
  else if (v.accel === 'auto' && v.useEmulation) verdict = tcg;
  else if (v.accel === 'kvm' || v.accel === 'auto')
    verdict = 'VMs fail to start (KVM_UNAVAILABLE): fix KVM, or allow software emulation (useEmulation: true or --accel tcg)';
  else verdict = 'unknown';
  return `${settings} → ${verdict}`;
}

/** `vmlet version`'s text: the client line always, the daemon's lines when it answered. */
export function versionText(client: string, daemon: DaemonVersion | undefined): string {
  const rows: Array<[string, string]> = [['Client', `vmlet ${client}`]];
  if (daemon !== undefined) {
    const took = daemon.kvm.durationMs === undefined ? '' : ` (checked in ${daemon.kvm.durationMs} ms)`;
    rows.push(
      ['Daemon', `vmlet ${daemon.vmlet}`],
      ['QEMU', daemon.qemu],
      ['KVM', daemon.kvm.usable ? `usable${took}` : `not usable: ${daemon.kvm.reason}${took}`],
      ['Accelerator', accelVerdict(daemon)],
    );
  }
  return fieldLines(rows);
}
