// Tests that `vmlet daemon` keeps V8's young generation at its initial size unless the operator chose one (in a child process: V8 flags are per process).
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Runs keepYoungGenerationSmall in a fresh Node, then a burst of surviving allocations; the new space's size before and after the burst, in KiB. */
function newSpaceAfterBurst(nodeOptions: string): { applied: boolean; before: number; after: number } {
  const script = `
    import v8 from 'node:v8';
    import { keepYoungGenerationSmall } from ${JSON.stringify(path.join(root, 'src', 'cli', 'main.ts'))};
    const newSpace = () => v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space').space_size / 1024;
    const applied = keepYoungGenerationSmall(process.env);
    const before = newSpace();
    let keep = [];
    for (let i = 0; i < 4e6; i++) { keep.push({ i, s: 'x' + i }); if (keep.length > 100000) keep = []; }
    console.log(JSON.stringify({ applied, before, after: newSpace() }));`;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    cwd: root,
    encoding: 'utf8',
    env: { ...process.env, NODE_OPTIONS: nodeOptions },
  });
  if (r.status !== 0) throw new Error(`child failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as { applied: boolean; before: number; after: number };
}

t.test('the young generation does not grow through a burst of allocation', async (t) => {
  const r = newSpaceAfterBurst('');
  t.equal(r.applied, true);
  t.equal(r.after, r.before, `new space stays at ${r.before} KiB`);
});

t.test("an operator's --max-semi-space-size wins", async (t) => {
  const r = newSpaceAfterBurst('--max-semi-space-size=64');
  t.equal(r.applied, false, 'the flag is left alone');
  t.ok(r.after > r.before, `new space grew as V8 likes (${r.before} → ${r.after} KiB)`);
});
