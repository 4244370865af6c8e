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

/** Columns padded to the widest cell, three spaces apart, no trailing blanks. `minWidths` keeps streamed rows aligned. */
export function formatTable(header: Row, rows: Row[], minWidths: number[] = []): string {
  const widths = header.map((h, i) => Math.max(h.length, minWidths[i] ?? 0, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: Row): string =>
    r
      .map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i] ?? 0)))
      .join('   ')
      .trimEnd();
  return [header, ...rows].map(line).join('\n') + '\n';
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
  const c = arr(status.conditions).map(obj).find((x) => x.type === type);
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
  if (!opts.allNamespaces) return formatTable(header, rows.map((r) => r.row));
  return formatTable(['NAMESPACE', ...header], rows.map((r) => [r.ns, ...r.row]));
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
