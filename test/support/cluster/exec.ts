// Runs the test cluster's helper programs (openssl, ip, iptables, buildah, ctr, kubectl) with an argv, never a shell string, and turns failures into coded errors.
import { execFile, type ExecFileOptions } from 'node:child_process';
import { ClusterError } from './errors.js';

export interface RunResult {
  stdout: string;
  stderr: string;
  code: number;
}

export interface RunOptions {
  input?: string;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  timeoutMs?: number;
}

/** Runs `cmd args`; resolves with its output and exit code (never rejects on a non-zero exit). */
export function runStatus(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const o: ExecFileOptions = { maxBuffer: 64 * 1024 * 1024, timeout: opts.timeoutMs ?? 120_000, encoding: 'utf8' };
    o.env = opts.env ?? withSbin(process.env);
    if (opts.cwd) o.cwd = opts.cwd;
    const child = execFile(cmd, [...args], o, (err, stdout, stderr) => {
      const out = String(stdout);
      const errOut = String(stderr);
      if (err && typeof (err as NodeJS.ErrnoException).code === 'string') {
        reject(new ClusterError('CLUSTER_COMMAND_FAILED', `${cmd} could not run`, { cause: err }));
        return;
      }
      const code = err ? (typeof err.code === 'number' ? err.code : 128) : 0;
      resolve({ stdout: out, stderr: errOut, code });
    });
    if (opts.input !== undefined) child.stdin?.end(opts.input);
  });
}

/** Runs `cmd args` and returns its stdout; a non-zero exit is a CLUSTER_COMMAND_FAILED error quoting stderr. */
export async function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<string> {
  const r = await runStatus(cmd, args, opts);
  if (r.code !== 0) {
    const tail = (r.stderr.trim() || r.stdout.trim()).split('\n').slice(-5).join(' | ');
    throw new ClusterError('CLUSTER_COMMAND_FAILED', `${cmd} ${args.slice(0, 6).join(' ')} exited with ${r.code}: ${tail}`);
  }
  return r.stdout;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `check` every `intervalMs` until it returns a value other than undefined; CLUSTER_TIMEOUT after `timeoutMs`. */
export async function waitFor<T>(what: string, timeoutMs: number, check: () => Promise<T | undefined>, intervalMs = 250): Promise<T> {
  const end = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v !== undefined) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new ClusterError('CLUSTER_TIMEOUT', `${what}: not within ${Math.round(timeoutMs / 1000)} s`, { cause: last });
    await sleep(intervalMs);
  }
}

/** `env` with /usr/sbin and /sbin on PATH (ip, iptables, runc live there; npm may run us without them). */
export function withSbin(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const dirs = (env.PATH ?? '/usr/bin:/bin').split(':');
  for (const d of ['/usr/local/sbin', '/usr/sbin', '/sbin']) if (!dirs.includes(d)) dirs.push(d);
  return { ...env, PATH: dirs.join(':') };
}
