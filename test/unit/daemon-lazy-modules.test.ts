// Tests which npm packages each entry point loads at start-up, from the static imports of src/: the standalone daemon none of the cluster's, the cluster's node daemon all of them.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';

const src = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'src');

/** npm packages reached from `entry` through static, non-type imports (dynamic import() is not followed). */
function packagesOf(entry: string): Set<string> {
  const seen = new Set<string>();
  const packages = new Set<string>();
  const visit = (file: string): void => {
    if (seen.has(file)) return;
    seen.add(file);
    const text = fs.readFileSync(file, 'utf8');
    for (const m of text.matchAll(/^\s*(?:import|export)\s+(?!type\b)(?:[^'";]*?\sfrom\s+)?['"]([^'"]+)['"]/gm)) {
      const spec = m[1]!;
      if (spec.startsWith('.')) visit(path.resolve(path.dirname(file), spec.replace(/\.js$/, '.ts')));
      else if (!spec.startsWith('node:')) packages.add(spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0]!);
    }
  };
  visit(path.join(src, entry));
  return packages;
}

const CLUSTER_ONLY = ['@kubernetes/client-node', '@grpc/grpc-js', '@grpc/proto-loader', 'node-forge', 'pino-pretty'];

t.test('the standalone daemon process (cli/main.ts, then daemon/main.ts) loads no cluster package at start-up', async (t) => {
  const pkgs = new Set([...packagesOf('cli/main.ts'), ...packagesOf('daemon/main.ts')]);
  for (const p of CLUSTER_ONLY) t.notOk(pkgs.has(p), `it does not load ${p}`);
  for (const p of ['pino', 'ajv', 'koffi']) t.ok(pkgs.has(p), `the walk does see what it needs (${p})`);
});

t.test("the cluster's node daemon and the controller still load theirs", async (t) => {
  const node = packagesOf('daemon/kube-daemon.ts');
  for (const p of ['@kubernetes/client-node', '@grpc/grpc-js', '@grpc/proto-loader']) t.ok(node.has(p), `kube-daemon.ts loads ${p}`);
  const controller = packagesOf('controller/process.ts');
  for (const p of ['@kubernetes/client-node', 'node-forge']) t.ok(controller.has(p), `the controller loads ${p}`);
});
