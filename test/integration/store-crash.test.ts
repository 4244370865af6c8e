import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { LocalStore } from '../../src/source/local-store.js';
import { captureLogger } from '../support/store-helpers.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const child = path.join(here, '../support/store-crash-child.ts');
const ROUNDS = 10;
// On a loaded machine spawning the child is slow: stop starting rounds after this long, once MIN_ROUNDS have run.
const BUDGET_MS = 15_000;
const MIN_ROUNDS = 4;
const NS = 'crash';

interface Op {
  op: string;
  name: string;
  rv?: number;
}

interface RoundLog {
  acked: Op[]; // in order
  inflight: Map<string, Op>; // worker → operation begun but not acknowledged when killed
}

/** Run the child until READY, let it write for `ms`, SIGKILL it, and parse what it acknowledged. */
async function runAndKill(dir: string, ms: number): Promise<RoundLog> {
  const proc = spawn(process.execPath, ['--import', 'tsx', child, dir, '4'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  proc.stdout.setEncoding('utf8').on('data', (d: string) => {
    out += d;
  });
  proc.stderr.setEncoding('utf8').on('data', (d: string) => {
    err += d;
  });
  const exited = new Promise<NodeJS.Signals | number | null>((resolve) => proc.on('exit', (code, signal) => resolve(signal ?? code)));
  const ready = await new Promise<boolean>((resolve) => {
    const check = (): void => {
      if (out.startsWith('READY\n')) resolve(true);
    };
    proc.stdout.on('data', check);
    void exited.then(() => resolve(false));
  });
  if (!ready) throw new Error(`child did not start: ${err}`);
  await new Promise((r) => setTimeout(r, ms));
  proc.kill('SIGKILL');
  const how = await exited;
  if (how !== 'SIGKILL') throw new Error(`child ended by ${String(how)} before the kill: ${err}`);
  const log: RoundLog = { acked: [], inflight: new Map() };
  const complete = out.slice(0, out.lastIndexOf('\n') + 1);
  for (const line of complete.split('\n')) {
    const [tag, worker, op, name, rv] = line.split(' ');
    if (worker === undefined || op === undefined || name === undefined) continue;
    if (tag === 'B') log.inflight.set(worker, { op, name });
    if (tag === 'A') {
      log.inflight.delete(worker);
      log.acked.push({ op, name, rv: Number(rv) });
    }
  }
  return log;
}

/** Every *.json under objects/ must parse; returns how many temp files a crash left. */
async function checkFiles(dir: string): Promise<{ files: number; temps: number; bad: string[] }> {
  const res = { files: 0, temps: 0, bad: [] as string[] };
  const walk = async (d: string): Promise<void> => {
    for (const ent of await readdir(d, { withFileTypes: true })) {
      const p = path.join(d, ent.name);
      if (ent.isDirectory()) await walk(p);
      else if (ent.name.startsWith('.tmp-')) res.temps++;
      else if (ent.name.endsWith('.json')) {
        res.files++;
        try {
          JSON.parse(await readFile(p, 'utf8'));
        } catch {
          res.bad.push(p);
        }
      }
    }
  };
  await walk(path.join(dir, 'objects'));
  return res;
}

t.test('kill -9 at random moments loses no acknowledged write and leaves no torn file', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'vmlet-store-crash-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const started = Date.now();
  // What the store held after the previous round: name → resourceVersion (absent = deleted / never created).
  let before = new Map<string, number>();
  let totalAcked = 0;
  let totalTemps = 0;
  let maxAckedRv = 0;

  let rounds = 0;
  for (let round = 0; round < ROUNDS; round++) {
    if (round >= MIN_ROUNDS && Date.now() - started > BUDGET_MS) break;
    rounds++;
    const log = await runAndKill(dir, 50 + Math.floor(Math.random() * 400));
    totalAcked += log.acked.length;
    const files = await checkFiles(dir);
    totalTemps += files.temps;
    t.same(files.bad, [], `round ${round}: every object file parses`);

    const lines = captureLogger();
    const s = await LocalStore.open({ dir, logger: lines.logger });
    const quarantined = lines.lines.filter((l) => String(l['msg']).includes('quarantined'));
    t.same(quarantined, [], `round ${round}: nothing quarantined`);
    const now = new Map((await s.list('VirtualMachineInstance', NS)).map((o) => [o.metadata.name, Number(o.metadata.resourceVersion)]));

    // The last acknowledged state of each name touched this round.
    const last = new Map<string, Op>();
    for (const a of log.acked) {
      maxAckedRv = Math.max(maxAckedRv, a.rv ?? 0);
      if (a.op !== 'event') last.set(a.name, a);
    }
    const inflightByName = new Map([...log.inflight.values()].map((o) => [o.name, o.op]));
    const problems: string[] = [];
    const names = new Set([...before.keys(), ...now.keys(), ...last.keys()]);
    for (const name of names) {
      const got = now.get(name);
      const pending = inflightByName.get(name);
      const ack = last.get(name);
      if (ack === undefined) {
        // Untouched (or only an unacknowledged operation): either as before, or changed by that one operation.
        if (pending === undefined || pending === 'event') {
          if (got !== before.get(name)) problems.push(`${name}: changed without an operation (${before.get(name)} → ${got})`);
        }
        continue;
      }
      if (ack.op === 'delete') {
        if (got !== undefined && pending !== 'create') problems.push(`${name}: deleted (ack rv ${ack.rv}) but present at ${got}`);
      } else if (got === undefined) {
        if (pending !== 'delete') problems.push(`${name}: acknowledged ${ack.op} at rv ${ack.rv} is missing`);
      } else if (got < (ack.rv ?? 0)) {
        problems.push(`${name}: acknowledged rv ${ack.rv}, found older ${got}`);
      }
    }
    t.same(problems, [], `round ${round}: ${log.acked.length} acknowledged writes all present`);
    t.ok(Number(s.resourceVersion) >= maxAckedRv, `round ${round}: resourceVersion never goes back (${s.resourceVersion} ≥ ${maxAckedRv})`);
    const after = await checkFiles(dir);
    t.equal(after.temps, 0, `round ${round}: temp files removed on open`);
    for (const ev of await s.listEvents(NS)) {
      t.ok(now.has(ev.involvedObject.name), `event ${ev.metadata.name} belongs to a live object`);
    }
    await s.close();
    before = now;
  }
  const elapsed = Date.now() - started;
  t.ok(totalAcked > rounds * 5, `writes were acknowledged (${totalAcked} in ${rounds} rounds, ${totalTemps} temp files left by kills, ${elapsed} ms)`);
  t.comment(`acknowledged ${totalAcked} writes over ${rounds} kills in ${elapsed} ms; ${totalTemps} leftover temp files cleaned`);
});
