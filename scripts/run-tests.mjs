// Runs the suite in two tap passes: every file but the unit ones one at a time, then the unit files side by side (they
// neither boot guests nor share ports; a few use the kubectl the cluster tests unpack); ends with one tap-style summary
// line of both. Arguments go to a single tap run.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const tapBin = path.join(root, 'node_modules', '.bin', 'tap');

/** The test files under `dir`, sorted (tap's own include pattern is test/**\/*.test.ts). */
function testFiles(dir) {
  const out = [];
  for (const e of fs.readdirSync(path.join(root, dir), { withFileTypes: true })) {
    const rel = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...testFiles(rel));
    else if (e.name.endsWith('.test.ts')) out.push(rel);
  }
  return out.sort();
}

/** Runs tap with `args`, passing its output through; resolves to its exit code and its last `# { total: … }` counts. */
function tap(args) {
  return new Promise((resolve) => {
    const child = spawn(tapBin, args, { cwd: root, stdio: ['inherit', 'pipe', 'inherit'] });
    let tail = '';
    child.stdout.on('data', (chunk) => {
      process.stdout.write(chunk);
      tail = (tail + chunk.toString('utf8')).slice(-4096);
    });
    child.on('close', (code, signal) => {
      const line = tail
        .split('\n')
        .filter((l) => l.startsWith('# { total: '))
        .pop();
      const counts = {};
      for (const m of (line ?? '').matchAll(/(\w+): (\d+)/g)) counts[m[1]] = Number(m[2]);
      resolve({ code: code ?? (signal ? 1 : 0), counts, summarised: line !== undefined });
    });
  });
}

const userArgs = process.argv.slice(2);
// process.exitCode, never process.exit(): on a pipe (`npm test | tee`) stdout is written asynchronously, and exit()
// would cut off what is still queued, the summary line among it.
if (userArgs.length > 0) process.exitCode = (await tap(userArgs)).code;
else await all();

async function all() {
  const unit = testFiles('test/unit');
  const rest = testFiles('test').filter((f) => !f.startsWith(`test${path.sep}unit${path.sep}`));
  const jobs = String(Math.max(1, os.availableParallelism()));
  const passes = [await tap(rest), await tap(['--jobs', jobs, ...unit])];

  const total = {};
  for (const p of passes) for (const [k, v] of Object.entries(p.counts)) total[k] = (total[k] ?? 0) + v;
  // A pass that died before its summary counts as a failure.
  for (const p of passes) if (!p.summarised && p.code !== 0) total.fail = (total.fail ?? 0) + 1;
  const order = ['total', 'pass', 'fail', 'todo', 'skip'];
  const keys = [...order.filter((k) => k in total), ...Object.keys(total).filter((k) => !order.includes(k))];
  process.stdout.write(`\n# both passes (the rest one at a time, then unit with --jobs ${jobs})\n# { ${keys.map((k) => `${k}: ${total[k]}`).join(', ')} }\n`);
  process.exitCode = passes.some((p) => p.code !== 0) ? 1 : 0;
}
