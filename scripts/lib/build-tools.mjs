// Runs the host tools of the guest builders with argument arrays (never a shell): the sbin folders on PATH, a check that a tool is there, failures as each builder's own error codes, and long runs logged line by line.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

/** PATH with the sbin folders after it (mount, chroot, mke2fs and debootstrap live there; npm may run us without them). */
export function toolPath() {
  return `${process.env.PATH ?? '/usr/bin:/bin'}:/usr/sbin:/sbin`;
}

/** The environment tools run with: C locale, no debconf questions, toolPath(). */
export const TOOL_ENV = { ...process.env, LC_ALL: 'C', DEBIAN_FRONTEND: 'noninteractive', PATH: toolPath() };

/**
 * Whether an executable `bin` is in one of the folders of `searchPath`.
 * @param {string} bin
 * @param {string} [searchPath] a PATH string; default toolPath()
 */
export function have(bin, searchPath = toolPath()) {
  return searchPath.split(':').some((d) => {
    try {
      fs.accessSync(path.join(d, bin), fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

/**
 * A `run(cmd, args, opts)` that runs a tool with execFileSync and returns its stdout; a tool that is not
 * installed throws `missing`, a failed one `failed` (quoting the last lines of stderr). `opts` go to
 * execFileSync, but for `okCodes`: exit codes that are not failures (e2fsck's 1 = "fixed").
 * @param {{
 *   missing: (message: string, cause: unknown) => Error,
 *   failed: (message: string, cause: unknown) => Error,
 *   env?: () => NodeJS.ProcessEnv,
 *   okCodes?: number[],
 * }} o `env`: asked at each run (default TOOL_ENV); `okCodes`: the default of each run's (none)
 */
export function toolRunner(o) {
  const env = o.env ?? (() => TOOL_ENV);
  return function run(cmd, args, opts = {}) {
    const { okCodes = o.okCodes ?? [], ...rest } = opts;
    try {
      return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 * 1024 * 1024, env: env(), ...rest });
    } catch (e) {
      const err = /** @type {{stdout?: string, stderr?: string|Buffer, status?: number|null, code?: string}} */ (e);
      if (err.code === 'ENOENT') throw o.missing(`${cmd} is not installed`, e);
      if (typeof err.status === 'number' && okCodes.includes(err.status)) return String(err.stdout ?? '');
      const stderr = String(err.stderr ?? '').trim().split('\n').slice(-5).join(' | ');
      throw o.failed(`${cmd} ${args.join(' ')} exited with ${err.status ?? '?'}${stderr ? `: ${stderr}` : ''}`, e);
    }
  };
}

/**
 * Runs `argv` with its output (stdout and stderr) appended to `logFile` and handed to `onLine` a line at a
 * time. Under `setpriv --pdeathsig KILL` when there is one: the tool dies with this process (a killed build
 * must not leave it working in a tree the next build removes). Resolves with how it ended; rejects with
 * `couldNotRun(cmd, cause)` when it cannot start (`cmd`: what was started, setpriv or argv[0]).
 * @param {string[]} argv
 * @param {{logFile: string, onLine: (line: string) => void, couldNotRun: (cmd: string, cause: unknown) => Error, env?: NodeJS.ProcessEnv}} o
 * @returns {Promise<{code: number | null, signal: NodeJS.Signals | null}>}
 */
export function runLogged(argv, o) {
  return new Promise((resolve, reject) => {
    const out = fs.openSync(o.logFile, 'a');
    const [cmd, ...rest] = have('setpriv') ? ['setpriv', '--pdeathsig', 'KILL', '--', ...argv] : argv;
    const child = spawn(cmd, rest, { stdio: ['ignore', 'pipe', 'pipe'], env: o.env ?? TOOL_ENV });
    let buf = '';
    const onLine = (line) => {
      fs.writeSync(out, `${line}\n`);
      o.onLine(line);
    };
    const feed = (chunk) => {
      buf += chunk.toString('utf8');
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        onLine(buf.slice(0, i));
        buf = buf.slice(i + 1);
      }
    };
    child.stdout.on('data', feed);
    child.stderr.on('data', feed);
    child.on('error', (e) => {
      fs.closeSync(out);
      reject(o.couldNotRun(cmd, e));
    });
    child.on('close', (code, signal) => {
      if (buf) onLine(buf);
      fs.closeSync(out);
      resolve({ code, signal });
    });
  });
}
