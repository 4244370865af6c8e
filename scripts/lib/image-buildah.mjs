// Runs the image builder's tools (mmdebstrap, buildah, npm) with argv arrays, and gives each build a private buildah storage (vfs in a temp folder) that leaves nothing in /var/lib/containers.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ImageBuildError } from './image-error.mjs';

/** `env` with the sbin folders on PATH (mmdebstrap, runc and iptables live there; npm may run us without them). */
function toolEnv() {
  const dirs = (process.env.PATH ?? '/usr/bin:/bin').split(':');
  for (const d of ['/usr/local/sbin', '/usr/sbin', '/sbin']) if (!dirs.includes(d)) dirs.push(d);
  return { ...process.env, PATH: dirs.join(':'), LC_ALL: 'C', DEBIAN_FRONTEND: 'noninteractive' };
}

/** Whether `bin` is on PATH (sbin folders included). */
export function have(bin) {
  return String(toolEnv().PATH)
    .split(':')
    .some((d) => {
      try {
        fs.accessSync(path.join(d, bin), fs.constants.X_OK);
        return true;
      } catch {
        return false;
      }
    });
}

/**
 * Runs `cmd args`; resolves with stdout, rejects with IMAGE_COMMAND_FAILED quoting the last lines of stderr.
 * @param {string} cmd
 * @param {string[]} args
 * @param {{ cwd?: string, timeoutMs?: number }} [opts]
 * @returns {Promise<string>}
 */
export async function run(cmd, args, opts = {}) {
  const r = await runStatus(cmd, args, opts);
  if (r.code === 0) return r.stdout;
  const tail = (r.stderr.trim() || r.stdout.trim()).split('\n').slice(-8).join(' | ');
  throw new ImageBuildError('IMAGE_COMMAND_FAILED', `${cmd} ${args.slice(0, 8).join(' ')} exited with ${r.code}: ${tail}`);
}

/**
 * Runs `cmd args`; resolves with its output and exit code, whatever the code; rejects (IMAGE_TOOL_MISSING) only when it cannot start.
 * @param {string} cmd
 * @param {string[]} args
 * @param {{ cwd?: string, timeoutMs?: number }} [opts]
 * @returns {Promise<{ code: number, stdout: string, stderr: string }>}
 */
export function runStatus(cmd, args, opts = {}) {
  return new Promise((resolve, reject) => {
    execFile(
      cmd,
      args,
      { cwd: opts.cwd, env: toolEnv(), maxBuffer: 256 * 1024 * 1024, timeout: opts.timeoutMs ?? 30 * 60 * 1000, encoding: 'utf8' },
      (err, stdout, stderr) => {
        const e = /** @type {(NodeJS.ErrnoException & { code?: unknown }) | null} */ (err);
        if (e?.code === 'ENOENT') return reject(new ImageBuildError('IMAGE_TOOL_MISSING', `${cmd} is not installed`, err));
        resolve({ code: e ? (typeof e.code === 'number' ? e.code : 128) : 0, stdout: String(stdout), stderr: String(stderr) });
      },
    );
  });
}

/**
 * A private buildah storage for one build: `b(...args)` runs buildah on it; `close()` removes it and the
 * host folders buildah makes whatever --root says (its blob-info cache in /var/lib/containers/cache),
 * when they were absent before.
 * @param {string} tmpDir
 */
export function buildahStore(tmpDir) {
  const hostDirs = ['/var/lib/containers', '/run/containers'].filter((d) => !fs.existsSync(d));
  const base = ['--root', path.join(tmpDir, 'storage'), '--runroot', path.join(tmpDir, 'run'), '--storage-driver', 'vfs'];
  return {
    /** @param {string[]} args */
    b: (...args) => run('buildah', [...base, ...args]),
    /** Runs a command in a working container, with no network (trap 6: buildah's netavark would add iptables chains). */
    runIn: (/** @type {string} */ cid, /** @type {string[]} */ argv) => run('buildah', [...base, 'run', '--network', 'none', cid, '--', ...argv]),
    /** `runIn` that resolves with the exit code and output instead of failing. */
    runInStatus: (/** @type {string} */ cid, /** @type {string[]} */ argv) => runStatus('buildah', [...base, 'run', '--network', 'none', cid, '--', ...argv]),
    close: () => {
      fs.rmSync(tmpDir, { recursive: true, force: true });
      for (const d of hostDirs) fs.rmSync(d, { recursive: true, force: true });
    },
  };
}

/** A fresh temp folder named after the build step and our pid (a dead build's ones are swept by `sweepTemp`). */
export function tempDir(step) {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), `vmlet-image-${step}-${process.pid}-`));
  fs.chmodSync(d, 0o755);
  return d;
}

/** Removes temp folders of builds that were killed before their `finally` ran. */
export function sweepTemp(pidAlive) {
  for (const n of fs.readdirSync(os.tmpdir())) {
    const m = /^vmlet-image-[a-z]+-(\d+)-/.exec(n);
    if (m && Number(m[1]) !== process.pid && !pidAlive(Number(m[1]))) fs.rmSync(path.join(os.tmpdir(), n), { recursive: true, force: true });
  }
}
