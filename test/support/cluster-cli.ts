// `npm run cluster -- up [--simulated-nodes N] | down | status | kubeconfig | load FILE | deploy|undeploy [--overlay NAME]`: the test cluster of test/support/cluster.ts, by hand.
import fs from 'node:fs';
import path from 'node:path';
import { isClusterError } from './cluster/errors.js';
import { Cluster, clusterSkipReason, DEFAULT_ROOT, downAt, REPO_ROOT } from './cluster.js';
import { deploy, undeploy } from './cluster/deploy.js';

const USAGE =
  'usage: npm run cluster -- up [--simulated-nodes N] | down | status | kubeconfig | load FILE | deploy [--overlay NAME] | undeploy [--overlay NAME]';

function assetsDir(): string | undefined {
  if (process.env.VMLET_K8S_ASSETS) return process.env.VMLET_K8S_ASSETS;
  const shared = path.resolve(REPO_ROOT, '..', 'shared', 'k8s');
  return fs.existsSync(shared) ? shared : undefined;
}

function attached(): Cluster {
  const c = Cluster.attach(DEFAULT_ROOT);
  if (!c) {
    process.stderr.write(`no cluster at ${DEFAULT_ROOT} (npm run cluster -- up)\n`);
    process.exit(1);
  }
  return c;
}

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  const log = (m: string): void => {
    process.stderr.write(`cluster: ${m}\n`);
  };
  switch (cmd) {
    case 'up': {
      const i = rest.indexOf('--simulated-nodes');
      const n = i >= 0 ? Number(rest[i + 1]) : 0;
      if (!Number.isInteger(n) || n < 0) {
        process.stderr.write(`--simulated-nodes wants a whole number\n${USAGE}\n`);
        return 2;
      }
      const dir = assetsDir();
      if (dir) process.env.VMLET_K8S_ASSETS = dir;
      const reason = clusterSkipReason();
      if (reason) {
        process.stderr.write(`cannot start the cluster: ${reason}\n`);
        return 1;
      }
      const c = await Cluster.up({ simulatedNodes: n, log });
      for (const s of c.status()) process.stdout.write(`${s.name.padEnd(24)} ${s.running ? `running, pid ${s.pid}` : 'not running'}\n`);
      process.stdout.write(`${c.kubeconfigPath}\n`);
      return 0;
    }
    case 'down': {
      const problems = await downAt(DEFAULT_ROOT, log);
      for (const p of problems) process.stderr.write(`left behind: ${p}\n`);
      return problems.length ? 1 : 0;
    }
    case 'status': {
      const c = Cluster.attach(DEFAULT_ROOT);
      if (!c) {
        process.stdout.write(`down (nothing at ${DEFAULT_ROOT})\n`);
        return 0;
      }
      for (const s of c.status()) process.stdout.write(`${s.name.padEnd(24)} ${s.running ? `running, pid ${s.pid}` : 'not running'}\n`);
      const ready = await c.readyNodes();
      process.stdout.write(`nodes Ready: ${ready.length ? ready.length : 'none (API server down?)'}\nkubeconfig: ${c.kubeconfigPath}\n`);
      return 0;
    }
    case 'kubeconfig':
      process.stdout.write(`${attached().kubeconfigPath}\n`);
      return 0;
    case 'load': {
      if (!rest[0]) {
        process.stderr.write(`${USAGE}\n`);
        return 2;
      }
      process.stdout.write(`${await attached().load(rest[0])}\n`);
      return 0;
    }
    case 'deploy':
    case 'undeploy': {
      const i = rest.indexOf('--overlay');
      const overlay = i >= 0 ? rest[i + 1] : 'test';
      if (!overlay || rest.length !== (i >= 0 ? 2 : 0)) {
        process.stderr.write(`${USAGE}\n`);
        return 2;
      }
      if (cmd === 'deploy') {
        const r = await deploy(attached(), { overlay, log });
        process.stdout.write(`vmlet deployed (${overlay}) in ${r.seconds.toFixed(1)} s\n`);
        return 0;
      }
      const left = await undeploy(attached(), { overlay, log });
      for (const p of left) process.stderr.write(`left behind: ${p}\n`);
      return left.length ? 1 : 0;
    }
    default:
      process.stderr.write(`${USAGE}\n`);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    process.stderr.write(`cluster: ${e instanceof Error ? e.message : String(e)}${isClusterError(e) ? ` (${e.code})` : ''}\n`);
    if (e instanceof Error && e.cause) process.stderr.write(`  cause: ${e.cause instanceof Error ? e.cause.message : String(e.cause)}\n`);
    process.exit(1);
  },
);
