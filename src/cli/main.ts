#!/usr/bin/env node
// The `vmlet` command: parses the command line, runs one verb against the daemon's unix socket or the Kubernetes API server (or starts the daemon), returns the exit code.
// First: the young generation's growth factor is set before any other module loads (loading them is a burst).
import './young-generation.js';
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import type { DaemonFlags } from '../daemon/config.js';
import { ApiClient } from './client.js';
import * as cmd from './commands.js';
import { image } from './image-verbs.js';
import { VmletError } from '../errors.js';
import type * as KubeVerbs from './kube-verbs.js';
import type { CliIo } from './io.js';

export type { CliIo } from './io.js';
export { keepYoungGenerationSmall } from './young-generation.js';

export const DEFAULT_SOCKET = '/run/vmlet/vmlet.sock';
export const EXIT_OK = 0;
export const EXIT_ERROR = 1;
export const EXIT_USAGE = 2;

export const USAGE = `Usage: vmlet [--socket PATH | --kubeconfig FILE] [-n NAMESPACE] VERB ...

  vmlet daemon [--config FILE] [--socket PATH] [--state-dir DIR] [--run-dir DIR] [--accel auto|kvm|tcg] [--log-format text|json|auto]
               [--mode standalone|kubernetes] [--kubeconfig FILE]   kubernetes: the node daemon of a cluster (a DaemonSet)
  vmlet controller [--kubeconfig FILE]   the cluster controller (a Deployment in vmlet's namespace; JSON logs)
  vmlet apply -f FILE                 VM and/or VMI, YAML or JSON, several documents per file (-f - = stdin)
  vmlet get vmis|vmi|vms|vm [NAME] [-o wide|json|yaml|name] [-A]
  vmlet describe vmi|vm NAME          status, conditions, last QEMU error and events, for a person to read
  vmlet delete vmi|vm NAME [--wait]
  vmlet start|stop|restart NAME       VirtualMachine
  vmlet pause|unpause|softreboot|reset NAME   VirtualMachineInstance (node-local: not with a cluster)
  vmlet console NAME                  interactive; Ctrl+] detaches (node-local)
  vmlet qmp NAME 'JSON'               raw QMP through the daemon's connection; prints the reply as JSON (node-local)
  vmlet events [NAME] [--watch] [-o json|yaml] [-A]
  vmlet version [-o json|yaml]        the CLI's version and the daemon's (QEMU, KVM, accelerator) or the API server's
  vmlet image import FILE [--name NAME[:TAG]]   a containerDisk image archive (docker/OCI) or a .qcow2/.img disk, into the node image store
  vmlet image ls [-o json|yaml] | vmlet image rm NAME|DIGEST ...   (node-local)
  vmlet install [--no-start]          as root on a systemd host: this built tree to /opt/vmlet/<version>, the unit, \`vmlet\` on the PATH
  vmlet uninstall [--stop-vms] [--purge]   removes what install did (config and state only with --purge); refuses while VMs run

Global options:
  --socket PATH        daemon socket (default ${DEFAULT_SOCKET}, or $VMLET_SOCKET)
  --kubeconfig FILE    talk to the Kubernetes API server of FILE's current context instead of a daemon
  -n, --namespace NS   namespace (default: the kubeconfig context's namespace with a cluster, else "default")
  -h, --help           this text

Target: --socket, else --kubeconfig (both: usage error), else $VMLET_SOCKET, else $KUBECONFIG, else ${DEFAULT_SOCKET}.
`;

const OPTIONS = {
  socket: { type: 'string' },
  namespace: { type: 'string', short: 'n' },
  help: { type: 'boolean', short: 'h' },
  file: { type: 'string', short: 'f' },
  output: { type: 'string', short: 'o' },
  'all-namespaces': { type: 'boolean', short: 'A' },
  wait: { type: 'boolean' },
  watch: { type: 'boolean', short: 'w' },
  config: { type: 'string' },
  'state-dir': { type: 'string' },
  'run-dir': { type: 'string' },
  accel: { type: 'string' },
  'log-format': { type: 'string' },
  kubeconfig: { type: 'string' },
  mode: { type: 'string' },
  name: { type: 'string' },
  'no-start': { type: 'boolean' },
  'stop-vms': { type: 'boolean' },
  purge: { type: 'boolean' },
} as const;

type OptionName = keyof typeof OPTIONS;
const GLOBAL: OptionName[] = ['socket', 'kubeconfig', 'namespace', 'help'];

/** Verb → options it accepts besides the global ones. */
const VERBS: Record<string, OptionName[]> = {
  daemon: ['config', 'state-dir', 'run-dir', 'accel', 'log-format', 'mode'],
  controller: [],
  apply: ['file'],
  get: ['output', 'all-namespaces'],
  describe: [],
  delete: ['wait'],
  start: [],
  stop: [],
  restart: [],
  pause: [],
  unpause: [],
  softreboot: [],
  reset: [],
  console: [],
  qmp: [],
  events: ['watch', 'output', 'all-namespaces'],
  version: ['output'],
  image: ['name', 'output'],
  install: ['no-start'],
  uninstall: ['stop-vms', 'purge'],
  help: [],
};

/** Options of `vmlet daemon` as handed to runDaemon: only what was given, so the config file is not overridden by defaults. */
export type DaemonRunOptions = DaemonFlags;

interface DaemonModule {
  runDaemon(opts: DaemonRunOptions): Promise<void>;
}

interface ControllerModule {
  runControllerProcess(opts: { kubeconfig?: string }): Promise<void>;
}

export async function main(argv: string[], io: CliIo): Promise<number> {
  let values: Values;
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true }));
  } catch (e) {
    cmd.reportError(io, cmd.usageError((e as Error).message));
    return EXIT_USAGE;
  }
  const [verb, ...args] = positionals;
  if (values.help || verb === 'help') {
    io.stdout.write(USAGE);
    return EXIT_OK;
  }
  if (verb === undefined) {
    io.stderr.write(USAGE);
    return EXIT_USAGE;
  }
  const allowed = VERBS[verb];
  if (!allowed) {
    cmd.reportError(io, cmd.usageError(`unknown verb "${verb}" (see vmlet --help)`));
    return EXIT_USAGE;
  }
  for (const k of Object.keys(values) as OptionName[]) {
    if (!GLOBAL.includes(k) && !allowed.includes(k)) {
      cmd.reportError(io, cmd.usageError(`option --${k} does not apply to "${verb}"`));
      return EXIT_USAGE;
    }
  }
  try {
    if (verb === 'daemon' || verb === 'controller') return await server(verb, args, values, io.env);
    if (verb === 'install' || verb === 'uninstall') return await hostVerb(verb, args, values, io);
    const target = targetOf(values, io.env);
    const cluster = target.kind === 'cluster' ? await clusterOf(target, values, io) : undefined;
    const socketPath = target.kind === 'socket' ? target.socketPath : DEFAULT_SOCKET;
    const ctx: cmd.Ctx = cluster?.ctx ?? { client: new ApiClient({ socketPath }), namespace: values.namespace ?? 'default', io };
    // Only where the API server differs from a daemon: VM actions are API writes, node-local verbs are refused.
    const kube = cluster?.verbs;
    switch (verb) {
      case 'apply':
        if (args.length > 0) throw cmd.usageError('apply takes no positional arguments (use -f FILE)');
        return await cmd.apply(ctx, values.file);
      case 'get':
        return await cmd.get(ctx, args, { ...opt('output', values.output), allNamespaces: values['all-namespaces'] === true });
      case 'describe':
        return await cmd.describe(ctx, args);
      case 'version':
        if (cluster) return await cluster.verbs.version(ctx, args, opt('output', values.output), cluster.server);
        return await cmd.version(ctx, args, opt('output', values.output));
      case 'delete':
        return await cmd.del(ctx, args, { wait: values.wait === true });
      case 'start':
      case 'stop':
      case 'restart':
        return await (kube ? kube.vmAction(ctx, verb, args) : cmd.vmAction(ctx, verb, args));
      case 'pause':
      case 'unpause':
      case 'softreboot':
      case 'reset':
        return await (kube ? kube.nodeLocal(ctx, verb, args) : cmd.vmiAction(ctx, verb, args));
      case 'console':
        return await (kube ? kube.nodeLocal(ctx, verb, args) : cmd.consoleCmd(ctx, args));
      case 'qmp':
        return await (kube ? kube.nodeLocal(ctx, verb, args) : cmd.qmp(ctx, args));
      case 'image':
        if (kube) throw new VmletError('NODE_LOCAL_VERB', '"vmlet image" manages the image store of a standalone daemon; run it on that node with --socket');
        return await image(ctx, args, { ...opt('name', values.name), ...opt('output', values.output) });
      case 'events':
        return await cmd.events(ctx, args, { watch: values.watch === true, ...opt('output', values.output), allNamespaces: values['all-namespaces'] === true });
      default:
        throw cmd.usageError(`unknown verb "${verb}"`);
    }
  } catch (e) {
    cmd.reportError(io, e);
    return e instanceof Error && (e as { code?: unknown }).code === 'USAGE' ? EXIT_USAGE : EXIT_ERROR;
  }
}

type Values = { [K in OptionName]?: (typeof OPTIONS)[K]['type'] extends 'string' ? string : boolean };

/** What a client verb talks to: a daemon's socket, or the API server of a kubeconfig (its files, and where they were named). */
export type Target = { kind: 'socket'; socketPath: string } | { kind: 'cluster'; files: string[]; from: '--kubeconfig' | 'KUBECONFIG' };

/** Flags before the environment, and vmlet's own variable before the generic KUBECONFIG, which is set for other tools too. */
export function targetOf(values: Pick<Values, 'socket' | 'kubeconfig'>, env: CliIo['env']): Target {
  if (values.socket !== undefined && values.kubeconfig !== undefined)
    throw cmd.usageError('--socket and --kubeconfig exclude each other: a daemon or a cluster');
  if (values.socket !== undefined) return { kind: 'socket', socketPath: values.socket };
  if (values.kubeconfig !== undefined) return { kind: 'cluster', files: [values.kubeconfig], from: '--kubeconfig' };
  if (env.VMLET_SOCKET) return { kind: 'socket', socketPath: env.VMLET_SOCKET };
  const files = (env.KUBECONFIG ?? '').split(path.delimiter).filter((f) => f !== '');
  if (files.length > 0) return { kind: 'cluster', files, from: 'KUBECONFIG' };
  return { kind: 'socket', socketPath: DEFAULT_SOCKET };
}

/** The client and the cluster's own verbs, for a client verb against the API server: the Kubernetes client loads only here. */
async function clusterOf(target: Target & { kind: 'cluster' }, values: Values, io: CliIo): Promise<{ ctx: cmd.Ctx; verbs: typeof KubeVerbs; server: string }> {
  const { KubeApiClient, loadKubeConfig } = await import('./kube-client.js');
  const verbs = await import('./kube-verbs.js');
  const client = new KubeApiClient(loadKubeConfig(target.files, target.from));
  return { ctx: { client, namespace: values.namespace ?? client.contextNamespace ?? 'default', io }, verbs, server: client.server };
}

/** `vmlet daemon` and `vmlet controller`: long-running processes; --kubeconfig is theirs, $KUBECONFIG is left to them. */
async function server(verb: 'daemon' | 'controller', args: string[], values: Values, env: CliIo['env']): Promise<number> {
  if (verb === 'daemon') return daemon(args, values, env);
  if (args.length > 0) throw cmd.usageError('controller takes no positional arguments');
  // A computed specifier, as for the daemon: the Kubernetes client loads only for this verb.
  const spec = '../controller/process.js';
  const mod = (await import(spec)) as ControllerModule;
  daemonStarted = true;
  await mod.runControllerProcess(values.kubeconfig !== undefined ? { kubeconfig: values.kubeconfig } : {});
  return EXIT_OK;
}

/** `vmlet install` and `uninstall`: host changes, not API calls; their module loads only for them. */
async function hostVerb(verb: 'install' | 'uninstall', args: string[], values: Values, io: CliIo): Promise<number> {
  if (args.length > 0) throw cmd.usageError(`${verb} takes no positional arguments`);
  const verbs = await import('./install-verbs.js');
  if (verb === 'install') return verbs.installVerb(io, { start: values['no-start'] !== true });
  return verbs.uninstallVerb(io, { stopVms: values['stop-vms'] === true, purge: values.purge === true });
}

function opt<K extends string, V>(key: K, value: V | undefined): { [P in K]?: V } {
  return (value === undefined ? {} : { [key]: value }) as { [P in K]?: V };
}

type DaemonValues = {
  socket?: string | boolean;
  config?: string | boolean;
  'state-dir'?: string | boolean;
  'run-dir'?: string | boolean;
  accel?: string | boolean;
  'log-format'?: string | boolean;
  mode?: string | boolean;
  kubeconfig?: string | boolean;
};

async function daemon(args: string[], values: DaemonValues, env: CliIo['env']): Promise<number> {
  if (args.length > 0) throw cmd.usageError('daemon takes no positional arguments');
  const accel = values.accel;
  if (accel !== undefined && accel !== 'auto' && accel !== 'kvm' && accel !== 'tcg') throw cmd.usageError('--accel must be auto, kvm or tcg');
  const logFormat = values['log-format'];
  if (logFormat !== undefined && logFormat !== 'auto' && logFormat !== 'json' && logFormat !== 'text')
    throw cmd.usageError('--log-format must be text, json or auto');
  const opts: DaemonRunOptions = {};
  const socket = typeof values.socket === 'string' ? values.socket : env.VMLET_SOCKET;
  if (socket !== undefined) opts.socket = socket;
  if (typeof values.config === 'string') opts.config = values.config;
  if (typeof values['state-dir'] === 'string') opts.stateDir = values['state-dir'];
  if (typeof values['run-dir'] === 'string') opts.runDir = values['run-dir'];
  if (accel !== undefined) opts.accel = accel;
  if (logFormat !== undefined) opts.logFormat = logFormat;
  const mode = values.mode;
  if (mode !== undefined && mode !== 'standalone' && mode !== 'kubernetes') throw cmd.usageError('--mode must be standalone or kubernetes');
  if (mode !== undefined) opts.mode = mode;
  if (typeof values.kubeconfig === 'string') opts.kubeconfig = values.kubeconfig;
  // A computed specifier: the daemon (and its dependencies) load only for this verb.
  const spec = '../daemon/main.js';
  const mod = (await import(spec)) as DaemonModule;
  daemonStarted = true;
  await mod.runDaemon(opts);
  return EXIT_OK;
}

/** Set once the daemon runs: its process must not be ended by the CLI's own exit. */
let daemonStarted = false;

function runDirectly(): boolean {
  const entry = process.argv[1];
  if (!entry) return false;
  try {
    return import.meta.url === pathToFileURL(fs.realpathSync(entry)).href;
  } catch {
    return false;
  }
}

if (runDirectly()) {
  const code = await main(process.argv.slice(2), { stdout: process.stdout, stderr: process.stderr, stdin: process.stdin, env: process.env });
  if (daemonStarted && code === EXIT_OK) process.exitCode = code;
  // Let piped output drain before exiting.
  else process.stdout.write('', () => process.stderr.write('', () => process.exit(code)));
}
