// The vmlet verbs that talk to the daemon: apply, get, delete, VM/VMI actions, console, qmp and events.
import fs from 'node:fs/promises';
import YAML from 'yaml';
import { VmletError } from '../errors.js';
import { ApiError, paths, type ApiClient, type Plural } from './client.js';
import { runConsole } from './console.js';
import { readAll, type CliIo } from './io.js';
import {
  daemonVersionOf,
  describeVm,
  describeVmi,
  EVENT_HEADER,
  EVENT_MIN_WIDTHS,
  eventRow,
  formatTable,
  metaOf,
  versionText,
  vmiTable,
  vmTable,
  type DaemonVersion,
} from './output.js';
import { vmletVersion } from '../version.js';
import { KINDS, kindOfPlural, kindOfWord, type Kind } from '../api/vocabulary.js';

/** What the verbs need of a client: ApiClient (the daemon's socket) and KubeApiClient (the API server) both are one. */
export type CliClient = Pick<ApiClient, 'request' | 'call' | 'watch' | 'upgrade'>;

export interface Ctx {
  client: CliClient;
  namespace: string;
  io: CliIo;
}

const now = (ctx: Ctx): number => (ctx.io.now ?? Date.now)();

/** `virtualmachine` for `virtualmachines`: kubectl's singular in `TYPE.GROUP/NAME`. */
const SINGULAR = (plural: Plural): string => KINDS[kindOfPluralOrThrow(plural)].singular;

function kindOfPluralOrThrow(plural: Plural): Kind {
  const k = kindOfPlural(plural);
  if (k === undefined) throw new VmletError('USAGE', `unknown resource ${plural}`);
  return k;
}

/** The code to show for a failure: the daemon's own reason for an API error, the error's code, or INTERNAL. */
function codeOf(e: unknown): string {
  if (e instanceof ApiError) return e.reason;
  return e instanceof VmletError ? e.code : 'INTERNAL';
}

export function usageError(message: string): VmletError {
  return new VmletError('USAGE', message);
}

export function resourceOf(word: string | undefined): Plural {
  if (word === undefined) throw usageError('a resource type is needed: vmis, vmi, vms or vm');
  const k = kindOfWord(word);
  const p = k === undefined ? undefined : KINDS[k].plural;
  if (!p) throw usageError(`unknown resource type "${word}" (use vmis, vmi, vms or vm)`);
  return p;
}

function isNotFound(e: unknown): boolean {
  return e instanceof ApiError && e.httpStatus === 404;
}

function print(ctx: Ctx, output: string | undefined, body: unknown): boolean {
  if (output === 'json') ctx.io.stdout.write(`${JSON.stringify(body, null, 2)}\n`);
  else if (output === 'yaml') ctx.io.stdout.write(YAML.stringify(body));
  else return false;
  return true;
}

export async function get(ctx: Ctx, args: string[], opts: { output?: string; allNamespaces?: boolean }): Promise<number> {
  const [what, name, ...extra] = args;
  const plural = resourceOf(what);
  if (extra.length > 0) throw usageError('get takes at most one NAME');
  if (opts.output !== undefined && !['wide', 'json', 'yaml', 'name'].includes(opts.output))
    throw usageError(`unknown output format "${opts.output}" (use wide, json, yaml or name)`);
  if (name !== undefined && opts.allNamespaces) throw usageError('a NAME cannot be combined with --all-namespaces');
  const table = { wide: opts.output === 'wide', allNamespaces: opts.allNamespaces === true, now: now(ctx) };
  const render = plural === 'virtualmachineinstances' ? vmiTable : vmTable;
  if (name !== undefined) {
    const o = await ctx.client.call('GET', paths.object(plural, ctx.namespace, name));
    if (opts.output === 'name') ctx.io.stdout.write(`${SINGULAR(plural)}.vmlet.io/${metaOf(o).name}\n`);
    else if (!print(ctx, opts.output, o)) ctx.io.stdout.write(render([o], table));
    return 0;
  }
  const list = await ctx.client.call('GET', paths.list(plural, opts.allNamespaces ? undefined : ctx.namespace));
  const items = Array.isArray((list as { items?: unknown }).items) ? (list as { items: unknown[] }).items : [];
  if (print(ctx, opts.output, list)) return 0;
  if (items.length === 0) {
    ctx.io.stderr.write(opts.allNamespaces ? 'No resources found\n' : `No resources found in ${ctx.namespace} namespace.\n`);
    return 0;
  }
  if (opts.output === 'name') for (const o of items) ctx.io.stdout.write(`${SINGULAR(plural)}.vmlet.io/${metaOf(o).name}\n`);
  else ctx.io.stdout.write(render(items, table));
  return 0;
}

interface Manifest {
  plural: Plural;
  name: string;
  namespace: string;
  body: Record<string, unknown>;
}

/** Splits and reads kind/name/namespace of every document; any problem fails the whole file before a request is sent. */
export function parseManifests(text: string, source: string, defaultNamespace: string): Manifest[] {
  const docs = YAML.parseAllDocuments(text);
  const out: Manifest[] = [];
  docs.forEach((doc, i) => {
    const where = docs.length > 1 ? `${source}: document ${i + 1}` : source;
    const err = doc.errors[0];
    if (err) throw new VmletError('MANIFEST_PARSE', `${where}: ${err.message.split('\n')[0] ?? 'invalid YAML'}`);
    let value: unknown;
    try {
      value = doc.toJS({ maxAliasCount: 100 });
    } catch (e) {
      throw new VmletError('MANIFEST_PARSE', `${where}: ${(e as Error).message}`, { cause: e });
    }
    if (value === null || value === undefined) return;
    if (typeof value !== 'object' || Array.isArray(value)) throw new VmletError('MANIFEST_PARSE', `${where}: a manifest must be a mapping`);
    const body = value as Record<string, unknown>;
    const kind = typeof body.kind === 'string' && body.kind in KINDS ? (body.kind as Kind) : undefined;
    const plural = kind === undefined ? undefined : KINDS[kind].plural;
    if (!plural)
      throw new VmletError('UNSUPPORTED_KIND', `${where}: kind ${JSON.stringify(body.kind ?? null)} is not VirtualMachine or VirtualMachineInstance`);
    const md = body.metadata as { name?: unknown; namespace?: unknown } | undefined;
    if (typeof md?.name !== 'string' || md.name === '') throw new VmletError('INVALID_FIELD', `${where}: metadata.name is required`);
    const namespace = typeof md.namespace === 'string' && md.namespace !== '' ? md.namespace : defaultNamespace;
    out.push({ plural, name: md.name, namespace, body });
  });
  if (out.length === 0) throw new VmletError('MANIFEST_PARSE', `${source}: no objects to apply`);
  return out;
}

export async function apply(ctx: Ctx, file: string | undefined): Promise<number> {
  if (file === undefined) throw usageError('apply needs -f FILE (or -f - for stdin)');
  let text: string;
  try {
    text = file === '-' ? await readAll(ctx.io.stdin) : await fs.readFile(file, 'utf8');
  } catch (e) {
    throw new VmletError('MANIFEST_READ', `cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, { cause: e });
  }
  const manifests = parseManifests(text, file === '-' ? 'stdin' : file, ctx.namespace);
  let failed = 0;
  for (const m of manifests) {
    const label = `${SINGULAR(m.plural)}.vmlet.io/${m.name}`;
    try {
      const verb = await applyOne(ctx, m);
      ctx.io.stdout.write(`${label} ${verb}\n`);
    } catch (e) {
      // The daemon refusing one document does not stop the others; losing the daemon does.
      if (!(e instanceof ApiError)) throw e;
      failed++;
      reportError(ctx.io, e);
    }
  }
  return failed > 0 ? 1 : 0;
}

async function applyOne(ctx: Ctx, m: Manifest): Promise<'created' | 'configured'> {
  const objectPath = paths.object(m.plural, m.namespace, m.name);
  let current: unknown;
  try {
    current = await ctx.client.call('GET', objectPath);
  } catch (e) {
    // A name that cannot be in a path (not a DNS label) cannot exist: creating it lets the daemon's validation
    // report it together with every other problem of the manifest.
    if (!isNotFound(e) && !(e instanceof ApiError && e.code === 'INVALID_PATH')) throw e;
  }
  if (current === undefined) {
    try {
      await ctx.client.call('POST', paths.list(m.plural, m.namespace), { body: m.body });
      return 'created';
    } catch (e) {
      // Someone created it between our GET and POST: replace it instead.
      if (!(e instanceof ApiError && e.httpStatus === 409 && /ALREADY_EXISTS$/.test(e.reason))) throw e;
      current = await ctx.client.call('GET', objectPath);
    }
  }
  // The read resourceVersion goes stale whenever a controller writes the status: read again and retry, unless the manifest pins one.
  for (let attempt = 1; ; attempt++) {
    try {
      await ctx.client.call('PUT', objectPath, { body: withResourceVersion(m.body, current) });
      return 'configured';
    } catch (e) {
      if (!isConflict(e) || attempt >= 5 || (m.body.metadata as { resourceVersion?: unknown } | undefined)?.resourceVersion !== undefined) throw e;
      current = await ctx.client.call('GET', objectPath);
    }
  }
}

export function isConflict(e: unknown): boolean {
  return e instanceof ApiError && e.httpStatus === 409 && /CONFLICT$/.test(e.reason);
}

/** The manifest with the resourceVersion just read (unless it has its own): the API server needs one to replace, and a change since is a conflict. */
function withResourceVersion(body: Record<string, unknown>, current: unknown): Record<string, unknown> {
  const md = (body.metadata ?? {}) as Record<string, unknown>;
  const rv = (current as { metadata?: { resourceVersion?: unknown } } | undefined)?.metadata?.resourceVersion;
  return typeof md.resourceVersion === 'string' || typeof rv !== 'string' ? body : { ...body, metadata: { ...md, resourceVersion: rv } };
}

export async function del(ctx: Ctx, args: string[], opts: { wait?: boolean }): Promise<number> {
  const [what, name, ...extra] = args;
  const plural = resourceOf(what);
  if (name === undefined || extra.length > 0) throw usageError('usage: vmlet delete vmi|vm NAME [--wait]');
  const objectPath = paths.object(plural, ctx.namespace, name);
  if (!opts.wait) {
    await ctx.client.call('DELETE', objectPath);
    ctx.io.stdout.write(`${SINGULAR(plural)}.vmlet.io "${name}" deleted\n`);
    return 0;
  }
  // Watch first, so that the disappearance cannot slip between the DELETE and the watch.
  const ac = new AbortController();
  try {
    const events = await ctx.client.watch(`${paths.list(plural, ctx.namespace)}?fieldSelector=${encodeURIComponent(`metadata.name=${name}`)}`, ac.signal);
    await ctx.client.call('DELETE', objectPath);
    ctx.io.stdout.write(`${SINGULAR(plural)}.vmlet.io "${name}" deleted\n`);
    await waitGone(ctx, objectPath, events, ac.signal);
  } finally {
    ac.abort();
  }
  return 0;
}

/** Until a DELETED event arrives, or a GET (every second, in case the watch missed it or ended) says 404. */
async function waitGone(ctx: Ctx, objectPath: string, events: AsyncIterable<unknown>, signal: AbortSignal): Promise<void> {
  const fromWatch = (async (): Promise<boolean> => {
    for await (const ev of events) {
      const e = ev as { type?: string; object?: { message?: string; reason?: string } };
      if (e.type === 'DELETED') return true;
      if (e.type === 'ERROR') throw new ApiError(e.object?.reason ?? 'WATCH_ERROR', e.object?.message ?? 'the watch failed', 200, e.object);
    }
    return false;
  })();
  const fromPoll = (async (): Promise<boolean> => {
    while (!signal.aborted) {
      try {
        await ctx.client.call('GET', objectPath);
      } catch (e) {
        if (isNotFound(e)) return true;
        throw e;
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
    return false;
  })();
  const watchEnded = fromWatch.then((gone) => (gone ? true : fromPoll));
  await Promise.race([watchEnded, fromPoll.then((gone) => (gone ? true : watchEnded))]);
}

export async function vmAction(ctx: Ctx, action: 'start' | 'stop' | 'restart', args: string[]): Promise<number> {
  const [name, ...extra] = args;
  if (name === undefined || extra.length > 0) throw usageError(`usage: vmlet ${action} NAME`);
  await ctx.client.call('PUT', paths.subresource('virtualmachines', ctx.namespace, name, action));
  ctx.io.stdout.write(`VM ${name} was scheduled to ${action}\n`);
  return 0;
}

export async function vmiAction(ctx: Ctx, action: 'pause' | 'unpause' | 'softreboot' | 'reset', args: string[]): Promise<number> {
  const [name, ...extra] = args;
  if (name === undefined || extra.length > 0) throw usageError(`usage: vmlet ${action} NAME`);
  await ctx.client.call('PUT', paths.subresource('virtualmachineinstances', ctx.namespace, name, action));
  ctx.io.stdout.write(`VMI ${name} was scheduled to ${action}\n`);
  return 0;
}

export async function qmp(ctx: Ctx, args: string[]): Promise<number> {
  const [name, json, ...extra] = args;
  if (name === undefined || json === undefined || extra.length > 0) throw usageError(`usage: vmlet qmp NAME '{"execute": "query-status"}'`);
  let command: unknown;
  try {
    command = JSON.parse(json) as unknown;
  } catch (e) {
    throw usageError(`the QMP command is not valid JSON: ${(e as Error).message}`);
  }
  const reply = await ctx.client.call('POST', paths.subresource('virtualmachineinstances', ctx.namespace, name, 'qmp'), { body: command });
  ctx.io.stdout.write(`${JSON.stringify(reply, null, 2)}\n`);
  return 0;
}

export async function consoleCmd(ctx: Ctx, args: string[]): Promise<number> {
  const [name, ...extra] = args;
  if (name === undefined || extra.length > 0) throw usageError('usage: vmlet console NAME');
  const { socket, head } = await ctx.client.upgrade(
    `${paths.subresource('virtualmachineinstances', ctx.namespace, name, 'console')}?write=true`,
    'vmlet-console',
  );
  ctx.io.stderr.write(`Successfully connected to ${name} console. The escape sequence is ^]\n`);
  return runConsole(socket, head, ctx.io);
}

export async function events(ctx: Ctx, args: string[], opts: { watch?: boolean; output?: string; allNamespaces?: boolean }): Promise<number> {
  const [name, ...extra] = args;
  if (extra.length > 0) throw usageError('usage: vmlet events [NAME] [--watch]');
  if (opts.output !== undefined && !['json', 'yaml'].includes(opts.output)) throw usageError(`unknown output format "${opts.output}" (use json or yaml)`);
  const ns = opts.allNamespaces ? undefined : ctx.namespace;
  const selector = name === undefined ? '' : `?fieldSelector=${encodeURIComponent(`involvedObject.name=${name}`)}`;
  const path = `${paths.events(ns)}${selector}`;
  if (!opts.watch) {
    const list = await ctx.client.call('GET', path);
    if (print(ctx, opts.output, list)) return 0;
    const items = Array.isArray((list as { items?: unknown }).items) ? (list as { items: unknown[] }).items : [];
    if (items.length === 0) {
      ctx.io.stderr.write(ns === undefined ? 'No events found\n' : `No events found in ${ns} namespace.\n`);
      return 0;
    }
    const sorted = [...items].sort((a, b) => eventTime(a) - eventTime(b));
    ctx.io.stdout.write(
      formatTable(
        EVENT_HEADER,
        sorted.map((e) => eventRow(e, now(ctx))),
      ),
    );
    return 0;
  }
  const ac = new AbortController();
  try {
    const stream = await ctx.client.watch(path, ac.signal);
    let headerDone = false;
    for await (const ev of stream) {
      const e = ev as { type?: string; object?: { message?: string; reason?: string } };
      if (e.type === 'ERROR') throw new ApiError(e.object?.reason ?? 'WATCH_ERROR', e.object?.message ?? 'the watch failed', 200, e.object);
      if (e.type !== 'ADDED' && e.type !== 'MODIFIED') continue;
      if (opts.output === 'json') ctx.io.stdout.write(`${JSON.stringify(e.object)}\n`);
      else if (opts.output === 'yaml') ctx.io.stdout.write(`---\n${YAML.stringify(e.object)}`);
      else {
        const table = formatTable(EVENT_HEADER, [eventRow(e.object, now(ctx))], EVENT_MIN_WIDTHS);
        ctx.io.stdout.write(headerDone ? table.slice(table.indexOf('\n') + 1) : table);
        headerDone = true;
      }
    }
  } finally {
    ac.abort();
  }
  return 0;
}

function eventTime(e: unknown): number {
  const o = e as { lastTimestamp?: unknown; eventTime?: unknown; metadata?: { creationTimestamp?: unknown } };
  const t = [o.lastTimestamp, o.eventTime, o.metadata?.creationTimestamp].find((x) => typeof x === 'string') as string | undefined;
  return t ? Date.parse(t) || 0 : 0;
}

/** One problem of a refused request: Status `details.causes[]` (or a local error's `details[]`). */
export interface Cause {
  field: string;
  code: string;
  message: string;
}

/** The per-field causes an error carries: from the daemon's Status (`details.causes`) or a local ValidationError's `details`. */
export function causesOf(e: unknown): Cause[] {
  const status = e instanceof ApiError ? (e.status as { details?: { causes?: unknown } } | undefined) : undefined;
  const list = status !== undefined ? status.details?.causes : e instanceof VmletError ? (e as { details?: unknown }).details : undefined;
  if (!Array.isArray(list)) return [];
  const fallback = codeOf(e);
  const out: Cause[] = [];
  for (const c of list as unknown[]) {
    if (typeof c !== 'object' || c === null) continue;
    const { field, code, reason, message } = c as { field?: unknown; code?: unknown; reason?: unknown; message?: unknown };
    out.push({
      field: typeof field === 'string' ? field : '',
      code: typeof code === 'string' && code !== '' ? code : typeof reason === 'string' && reason !== '' ? reason : fallback,
      message: typeof message === 'string' ? message : String(message),
    });
  }
  return out;
}

const oneLine = (s: string): string => s.replace(/\s*\n\s*/g, ' ');

/**
 * On stderr: `error: MESSAGE (CODE)`. A refusal with per-field causes prints what was refused
 * (`error: VirtualMachine "default/x" is invalid:`), then every cause on its own line: `error: FIELD: MESSAGE (CODE)`.
 */
export function reportError(io: CliIo, e: unknown): void {
  const code = codeOf(e);
  const message = e instanceof Error ? e.message : String(e);
  const causes = causesOf(e);
  if (causes.length === 0) {
    io.stderr.write(`error: ${oneLine(message)} (${code})\n`);
    return;
  }
  const invalid = message.indexOf(' is invalid: ');
  if (invalid > 0) io.stderr.write(`error: ${oneLine(message.slice(0, invalid))} is invalid:\n`);
  for (const c of causes) io.stderr.write(`error: ${c.field === '' ? '' : `${c.field}: `}${oneLine(c.message)} (${c.code})\n`);
}

/** `vmlet describe vmi|vm NAME`: the object, its events (and for a VM, its VMI), as text for a person. */
export async function describe(ctx: Ctx, args: string[]): Promise<number> {
  const [what, name, ...extra] = args;
  const plural = resourceOf(what);
  if (name === undefined || extra.length > 0) throw usageError('usage: vmlet describe vmi|vm NAME');
  const o = await ctx.client.call('GET', paths.object(plural, ctx.namespace, name));
  const list = await ctx.client.call('GET', `${paths.events(ctx.namespace)}?fieldSelector=${encodeURIComponent(`involvedObject.name=${name}`)}`);
  const all = Array.isArray((list as { items?: unknown }).items) ? (list as { items: unknown[] }).items : [];
  const involved = (e: unknown): { kind?: unknown; uid?: unknown } => (e as { involvedObject?: { kind?: unknown; uid?: unknown } }).involvedObject ?? {};
  if (plural === 'virtualmachineinstances') {
    // This VMI's own events: a VM's VMI of the same name that came before it had another uid.
    const uid = (o as { metadata?: { uid?: unknown } }).metadata?.uid;
    const mine = all.filter(
      (e) => involved(e).kind === 'VirtualMachineInstance' && (uid === undefined || involved(e).uid === undefined || involved(e).uid === uid),
    );
    ctx.io.stdout.write(describeVmi(o, mine, now(ctx)));
    return 0;
  }
  let vmi: unknown;
  try {
    vmi = await ctx.client.call('GET', paths.object('virtualmachineinstances', ctx.namespace, name));
  } catch (e) {
    if (!isNotFound(e)) throw e;
  }
  // The VM's events and those of every VMI it ran: why a VM is in CrashLoopBackOff is told by its VMIs.
  const ours = all.filter((e) => involved(e).kind === 'VirtualMachine' || involved(e).kind === 'VirtualMachineInstance');
  ctx.io.stdout.write(describeVm(o, vmi, ours, now(ctx)));
  return 0;
}

/** `vmlet version`: the CLI's version first (so it is there even when the daemon is not), then the daemon's. */
export async function version(ctx: Ctx, args: string[], opts: { output?: string }): Promise<number> {
  if (args.length > 0) throw usageError('version takes no arguments');
  if (opts.output !== undefined && !['json', 'yaml'].includes(opts.output)) throw usageError(`unknown output format "${opts.output}" (use json or yaml)`);
  const client = vmletVersion();
  let daemon: DaemonVersion | undefined;
  let failure: unknown;
  try {
    daemon = daemonVersionOf(await ctx.client.call('GET', '/version'));
  } catch (e) {
    failure = e;
  }
  if (!print(ctx, opts.output, { client: { vmlet: client }, ...(daemon === undefined ? {} : { daemon }) })) ctx.io.stdout.write(versionText(client, daemon));
  if (failure === undefined) return 0;
  const why = oneLine(failure instanceof Error ? failure.message : String(failure));
  const code = codeOf(failure);
  const what = failure instanceof ApiError ? 'the daemon did not report its version' : 'the daemon is not reachable';
  ctx.io.stderr.write(`error: ${what}: ${why} (${code})\n`);
  return 1;
}
