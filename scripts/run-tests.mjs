// Runs the suite in two lanes side by side: the cluster files one at a time and then the unit files (one tap job per
// core; a few use the kubectl the cluster tests unpack), beside every other file one at a time (they boot guests, and
// each file's daemons and networks are its own). Each lane's tap output is printed whole when the lane ends, so the two
// never interleave; the run ends with one tap-style summary line of both. Arguments go to a single tap run.
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

/** Parses tap's last `# { total: … }` line out of `text`. */
function countsOf(text) {
  const line = text
    .split('\n')
    .filter((l) => l.startsWith('# { total: '))
    .pop();
  const counts = {};
  for (const m of (line ?? '').matchAll(/(\w+): (\d+)/g)) counts[m[1]] = Number(m[2]);
  return { counts, summarised: line !== undefined };
}

/** Runs tap with `args`; with `live` its output passes through as it comes, else it is kept for the lane's end. */
function tap(args, live) {
  return new Promise((resolve) => {
    const child = spawn(tapBin, args, { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    const chunks = [];
    const keep = (chunk) => (live ? process.stdout.write(chunk) : chunks.push(chunk));
    child.stdout.on('data', keep);
    child.stderr.on('data', (chunk) => (live ? process.stderr.write(chunk) : chunks.push(chunk)));
    child.on('close', (code, signal) => {
      const output = Buffer.concat(chunks.map((c) => (Buffer.isBuffer(c) ? c : Buffer.from(c)))).toString('utf8');
      resolve({ code: code ?? (signal ? 1 : 0), output, ...countsOf(output) });
    });
  });
}

const userArgs = process.argv.slice(2);
// process.exitCode, never process.exit(): on a pipe (`npm test | tee`) stdout is written asynchronously, and exit()
// would cut off what is still queued, the summary line among it.
if (userArgs.length > 0) process.exitCode = (await tap(userArgs, true)).code;
else await all();

async function all() {
  const started = Date.now();
  const unit = testFiles('test/unit');
  const cluster = testFiles('test/cluster');
  const others = testFiles('test').filter((f) => !unit.includes(f) && !cluster.includes(f));
  const jobs = String(Math.max(1, os.availableParallelism()));

  /** Runs the passes of one lane in order; prints the lane's output once it is done. */
  async function lane(name, passes) {
    const results = [];
    for (const args of passes) results.push(await tap(args, false));
    const secs = Math.round((Date.now() - started) / 1000);
    process.stdout.write(`\n# lane ${name} (done after ${secs} s)\n`);
    for (const r of results) process.stdout.write(r.output);
    return results;
  }

  const lanes = await Promise.all([
    lane('cluster, then unit', [...(cluster.length > 0 ? [cluster] : []), ['--jobs', jobs, ...unit]]),
    lane('integration, chaos, systemd', [others]),
  ]);
  const passes = lanes.flat();

  const total = {};
  for (const p of passes) for (const [k, v] of Object.entries(p.counts)) total[k] = (total[k] ?? 0) + v;
  // A pass that died before its summary counts as a failure.
  for (const p of passes) if (!p.summarised && p.code !== 0) total.fail = (total.fail ?? 0) + 1;
  const order = ['total', 'pass', 'fail', 'todo', 'skip'];
  const keys = [...order.filter((k) => k in total), ...Object.keys(total).filter((k) => !order.includes(k))];
  const secs = Math.round((Date.now() - started) / 1000);
  process.stdout.write(`\n# all passes, two lanes side by side, ${secs} s\n# { ${keys.map((k) => `${k}: ${total[k]}`).join(', ')} }\n`);
  process.exitCode = passes.some((p) => p.code !== 0) ? 1 : 0;
}
