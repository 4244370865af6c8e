// Runs one benchmark by name: `npm run bench -- NAME [--json]`.
const benches: Record<string, () => Promise<{ run(opts: { json: boolean; args?: string[] }): Promise<void> }>> = {
  qmp: () => import('./qmp.js'),
  start: () => import('./start.js'),
  overhead: () => import('./overhead.js'),
  density: () => import('./density.js'),
  heap: () => import('./heap-account.js'),
  sandbox: () => import('./sandbox.js'),
  disk: () => import('./disk.js'),
  'k8s-start': () => import('./k8s-start.js'),
  'k8s-scale': () => import('./k8s-scale.js'),
};

const [name, ...rest] = process.argv.slice(2);
const loader = name ? benches[name] : undefined;
if (!loader) {
  console.error(`usage: npm run bench -- ${Object.keys(benches).join('|')} [--json]`);
  process.exit(2);
}
const mod = await loader();
await mod.run({ json: rest.includes('--json'), args: rest });
process.exit(0);
