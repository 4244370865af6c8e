// Tests which npm packages each entry point loads at start-up, from the static imports of src/: the standalone daemon none of the cluster's (nor ajv), the cluster's node daemon all of them.
import { spawnSync } from 'node:child_process';
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
  // ajv compiles schemas only when the build-time validators are missing or stale (src/api/schema.ts requires it then).
  t.notOk(pkgs.has('ajv'), 'it does not load ajv');
  for (const p of ['pino', 'yaml', 'koffi']) t.ok(pkgs.has(p), `the walk does see what it needs (${p})`);
});

const dist = path.resolve(src, '..', 'dist');
const notBuilt = fs.existsSync(path.join(dist, 'api', 'crd-validators.cjs')) ? false : 'dist/api/crd-validators.cjs is not built (npm run build)';

t.test('the built daemon validates a VMI with the prebuilt validators and never loads ajv', { skip: notBuilt }, async (t) => {
  // The daemon's start-up modules, then the first request's validation, in a fresh process.
  const script = `
    import { createRequire } from 'node:module';
    await import(${JSON.stringify(path.join(dist, 'cli', 'main.js'))});
    await import(${JSON.stringify(path.join(dist, 'daemon', 'main.js'))});
    const { defaultSchemas, validateVMI } = await import(${JSON.stringify(path.join(dist, 'api', 'index.js'))});
    const vmi = { apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachineInstance', metadata: { name: 'a' },
      spec: { domain: { memory: { guest: '128Mi' }, devices: {} } } };
    const out = validateVMI(vmi);
    const loaded = Object.keys(createRequire(import.meta.url).cache).filter((f) => f.includes('/node_modules/ajv/'));
    console.log(JSON.stringify({ origin: defaultSchemas().origin, namespace: out.metadata.namespace, loaded }));`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
  t.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as { origin?: string; namespace?: string; loaded?: string[] };
  t.equal(out.origin, 'prebuilt', 'the generated validators are used (a stale build: run npm run build)');
  t.equal(out.namespace, 'default', 'with their defaults');
  t.same(out.loaded, [], 'no ajv module is loaded');
});

t.test("the cluster's node daemon and the controller still load theirs", async (t) => {
  const node = packagesOf('daemon/kube-daemon.ts');
  for (const p of ['@kubernetes/client-node', '@grpc/grpc-js', '@grpc/proto-loader']) t.ok(node.has(p), `kube-daemon.ts loads ${p}`);
  const controller = packagesOf('controller/process.ts');
  for (const p of ['@kubernetes/client-node', 'node-forge']) t.ok(controller.has(p), `the controller loads ${p}`);
});
