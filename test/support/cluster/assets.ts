// Finds the test cluster's binaries through VMLET_K8S_ASSETS, decompresses them once into .cache/k8s/bin and checks them against SHA256SUMS.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { ClusterError } from './errors.js';

/** The names the multi-call `k8s` binary answers to (a link per name). */
export const K8S_COMMANDS = ['kube-apiserver', 'kube-controller-manager', 'kube-scheduler', 'kubelet', 'kube-proxy', 'kubectl'] as const;

export interface Assets {
  /** the folder VMLET_K8S_ASSETS names */
  source: string;
  /** decompressed, checked binaries and the links to `k8s` */
  binDir: string;
  /** kwok's stages file, when the assets have one */
  kwokStages: string | undefined;
  /** VERSIONS, e.g. { kubernetes: 'v1.34.4', etcd: 'v3.6.16', kwok: 'v0.8.0' } */
  versions: Record<string, string>;
}

/** Why the cluster's assets cannot be used, or null. */
export function assetsSkipReason(env: NodeJS.ProcessEnv = process.env): string | null {
  const dir = env.VMLET_K8S_ASSETS;
  if (!dir) return 'VMLET_K8S_ASSETS is not set (a folder with k8s.xz, etcd.xz, kwok.xz and SHA256SUMS; .ci/run sets it to ../shared/k8s when that exists)';
  if (!fs.existsSync(path.join(dir, 'SHA256SUMS'))) return `VMLET_K8S_ASSETS=${dir} has no SHA256SUMS`;
  for (const name of ['k8s', 'etcd']) {
    if (!fs.existsSync(path.join(dir, name)) && !fs.existsSync(path.join(dir, `${name}.xz`)))
      return `VMLET_K8S_ASSETS=${dir} has neither ${name} nor ${name}.xz`;
  }
  return null;
}

export function parseSums(text: string): Map<string, string> {
  const sums = new Map<string, string>();
  for (const line of text.split('\n')) {
    const m = /^([0-9a-f]{64})\s+\*?(\S+)\s*$/.exec(line.trim());
    if (m) sums.set(m[2]!, m[1]!);
  }
  return sums;
}

export function parseVersions(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^(\w[\w-]*)\s+(v\d\S*)/.exec(line.trim());
    if (m) out[m[1]!] = m[2]!;
  }
  return out;
}

/** Copies (or, for NAME.xz, decompresses) one asset to `dest` while hashing it; returns the sha256. */
function extract(src: string, dest: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    const out = fs.createWriteStream(dest, { mode: 0o755 });
    const input = src.endsWith('.xz') ? spawn('xz', ['-dc', src], { stdio: ['ignore', 'pipe', 'inherit'] }) : null;
    const stream = input ? input.stdout : fs.createReadStream(src);
    let failed = false;
    const fail = (e: unknown): void => {
      if (failed) return;
      failed = true;
      reject(new ClusterError('CLUSTER_ASSETS_UNREADABLE', `cannot extract ${src}`, { cause: e }));
    };
    input?.on('error', fail);
    input?.on('exit', (code) => {
      if (code !== 0) fail(new Error(`xz exited with ${code}`));
    });
    stream.on('error', fail);
    stream.on('data', (chunk: Buffer) => hash.update(chunk));
    stream.pipe(out);
    out.on('error', fail);
    out.on('finish', () => {
      if (!failed) resolve(hash.digest('hex'));
    });
  });
}

/** Makes sure `cacheDir/bin` holds checked copies of k8s, etcd and (when present) kwok, plus one link per k8s command. */
export async function ensureAssets(opts: { assetsDir: string; cacheDir: string; log?: (msg: string) => void }): Promise<Assets> {
  const { assetsDir, cacheDir } = opts;
  const sums = parseSums(fs.readFileSync(path.join(assetsDir, 'SHA256SUMS'), 'utf8'));
  const binDir = path.join(cacheDir, 'bin');
  fs.mkdirSync(binDir, { recursive: true });
  for (const name of ['k8s', 'etcd', 'kwok']) {
    const plain = path.join(assetsDir, name);
    const src = fs.existsSync(plain) ? plain : `${plain}.xz`;
    if (!fs.existsSync(src)) {
      if (name === 'kwok') continue;
      throw new ClusterError('CLUSTER_ASSETS_MISSING', `${assetsDir} has neither ${name} nor ${name}.xz`);
    }
    const want = sums.get(name);
    if (!want) throw new ClusterError('CLUSTER_ASSETS_MISSING', `${assetsDir}/SHA256SUMS has no line for ${name}`);
    const dest = path.join(binDir, name);
    const stamp = `${dest}.sha256`;
    const srcTime = fs.statSync(src).mtimeMs;
    if (fs.existsSync(dest) && fs.existsSync(stamp) && fs.readFileSync(stamp, 'utf8').trim() === want && fs.statSync(stamp).mtimeMs >= srcTime) continue;
    opts.log?.(`decompressing ${src}`);
    const tmp = `${dest}.tmp-${process.pid}`;
    const got = await extract(src, tmp);
    if (got !== want) {
      fs.rmSync(tmp, { force: true });
      throw new ClusterError('CLUSTER_ASSETS_CHECKSUM', `${src}: sha256 ${got}, SHA256SUMS says ${want}`);
    }
    fs.chmodSync(tmp, 0o755);
    fs.renameSync(tmp, dest);
    fs.writeFileSync(stamp, `${want}\n`);
  }
  for (const cmd of K8S_COMMANDS) {
    const link = path.join(binDir, cmd);
    if (!fs.existsSync(link)) fs.symlinkSync('k8s', link);
  }
  const stages = path.join(assetsDir, 'kwok-stages.yaml');
  const versionsFile = path.join(assetsDir, 'VERSIONS');
  return {
    source: assetsDir,
    binDir,
    kwokStages: fs.existsSync(stages) ? stages : undefined,
    versions: fs.existsSync(versionsFile) ? parseVersions(fs.readFileSync(versionsFile, 'utf8')) : {},
  };
}
