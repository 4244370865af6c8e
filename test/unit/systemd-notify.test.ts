// Tests the systemd notifications against a real unix datagram socket: message texts, READY=1 held back until the re-adoptions settle (or the bound runs out), debounced STATUS=, and watchdog pings that stop while the event loop is blocked.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import t from 'tap';
import { apiAnswers, SystemdNotifier, type Readoption } from '../../src/daemon/systemd-notify.js';
import { describeCounts, VmCountWatch, type VmCounts } from '../../src/daemon/vm-counts.js';
import { LocalStore } from '../../src/source/local-store.js';
import { sdNotify, watchdogIntervalMs } from '../../src/sys/sd-notify.js';
import { notifyReceiver, type NotifyReceiver } from '../support/notify-receiver.js';
import { shortDir } from '../support/short-dir.js';
import { captureLogger, steppingClock, vmi } from '../support/store-helpers.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A receiver on a socket in a short temp dir (tap's testdir paths are too long for sockaddr_un). */
function receiver(t: { teardown(fn: () => void): void }): NotifyReceiver {
  const r = notifyReceiver(path.join(shortDir(t), 'notify.sock'));
  t.teardown(() => r.close());
  return r;
}

/** A re-adoption the test settles by hand. */
function readoption(name: string): Readoption & { settle(): void } {
  let settle = (): void => undefined;
  const settled = new Promise<void>((resolve) => (settle = resolve));
  return { name, settled, settle };
}

const silent = pino({ level: 'silent' });

t.test('sdNotify: false without NOTIFY_SOCKET; the exact text to a path or an abstract socket', async (t) => {
  t.equal(sdNotify('READY=1', {}), false, 'not run by systemd: nothing sent, no error');
  const r = receiver(t);
  t.equal(sdNotify('READY=1\nSTATUS=x', { NOTIFY_SOCKET: r.address }), true);
  const abs = notifyReceiver(`@vmlet-test-${process.pid}-${Date.now()}`);
  t.teardown(() => abs.close());
  t.equal(sdNotify('WATCHDOG=1', { NOTIFY_SOCKET: abs.address }), true);
  await r.waitLine('READY=1', 2_000, { past: true });
  await abs.waitLine('WATCHDOG=1', 2_000, { past: true });
  t.same(
    r.messages.map((m) => m.text),
    ['READY=1\nSTATUS=x'],
  );
  t.same(
    abs.messages.map((m) => m.text),
    ['WATCHDOG=1'],
  );
  t.throws(() => sdNotify('READY=1', { NOTIFY_SOCKET: path.join(shortDir(t), 'nobody-listens.sock') }), { code: 'SD_NOTIFY_FAILED' });
});

t.test('watchdogIntervalMs: half of WATCHDOG_USEC, only for the process WATCHDOG_PID names', async (t) => {
  t.equal(watchdogIntervalMs({}, 10), undefined);
  t.equal(watchdogIntervalMs({ WATCHDOG_USEC: '200000' }, 10), 100);
  t.equal(watchdogIntervalMs({ WATCHDOG_USEC: '30000000', WATCHDOG_PID: '10' }, 10), 15_000);
  t.equal(watchdogIntervalMs({ WATCHDOG_USEC: '200000', WATCHDOG_PID: '11' }, 10), undefined, "another process's watchdog");
  t.equal(watchdogIntervalMs({ WATCHDOG_USEC: '0' }, 10), undefined);
  t.equal(watchdogIntervalMs({ WATCHDOG_USEC: 'soon' }, 10), undefined);
  t.equal(watchdogIntervalMs({ WATCHDOG_USEC: '-5' }, 10), undefined);
});

t.test("no pings for another process's watchdog, nor without NOTIFY_SOCKET", async (t) => {
  const r = receiver(t);
  const other = new SystemdNotifier({ logger: silent, env: { NOTIFY_SOCKET: r.address, WATCHDOG_USEC: '20000', WATCHDOG_PID: '1' }, pid: 4242 });
  other.startWatchdog();
  const none = new SystemdNotifier({ logger: silent, env: { WATCHDOG_USEC: '20000' } });
  none.startWatchdog();
  t.equal(none.enabled, false);
  const mine = new SystemdNotifier({ logger: silent, env: { NOTIFY_SOCKET: r.address, WATCHDOG_USEC: '20000', WATCHDOG_PID: '4242' }, pid: 4242 });
  await sleep(150);
  t.same(r.messages, [], 'nothing sent');
  mine.startWatchdog();
  t.teardown(() => mine.close());
  await sleep(150);
  t.ok(r.withLine('WATCHDOG=1').length >= 3, `its own watchdog pings (${r.withLine('WATCHDOG=1').length} in 150 ms at 10 ms)`);
});

t.test('watchdog: WATCHDOG_USEC=200000 pings every ~100 ms, none while the event loop is blocked, and never keeps the process alive', async (t) => {
  const r = receiver(t);
  const mod = JSON.stringify(path.join(root, 'src', 'daemon', 'systemd-notify.ts'));
  // Pings for 600 ms, blocks its event loop for 700 ms, pings for 500 ms more, then lets the process end by itself.
  const script = `
    import { pino } from 'pino';
    import { SystemdNotifier } from ${mod};
    const n = new SystemdNotifier({ logger: pino() });
    n.startWatchdog();
    const keep = setTimeout(() => {}, 1800);
    setTimeout(() => {
      const t0 = Date.now();
      console.log(JSON.stringify({ blockStart: t0 }));
      while (Date.now() - t0 < 700) {}
      console.log(JSON.stringify({ blockEnd: Date.now() }));
    }, 600);
    void keep;`;
  const started = Date.now();
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    cwd: root,
    env: { ...process.env, NOTIFY_SOCKET: r.address, WATCHDOG_USEC: '200000', WATCHDOG_PID: '' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr.on('data', (b: Buffer) => (err += b.toString()));
  // A ref'd ping timer would keep the child alive for ever.
  const kill = setTimeout(() => child.kill('SIGKILL'), 5_000);
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  clearTimeout(kill);
  const ended = Date.now();
  t.equal(code, 0, `the child ran (${err.trim()})`);
  const lines = out
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { msg?: string; everyMs?: number; blockStart?: number; blockEnd?: number });
  const blockStart = lines.find((l) => l.blockStart !== undefined)!.blockStart!;
  const blockEnd = lines.find((l) => l.blockEnd !== undefined)!.blockEnd!;
  t.same(
    lines.filter((l) => l.msg === 'systemd watchdog: pinging').map((l) => l.everyMs),
    [100],
    'the interval is logged once',
  );
  t.ok(ended - started < 4_000, `the unref'd ping timer did not keep the child alive (${ended - started} ms)`);
  await sleep(30);
  const pings = r.withLine('WATCHDOG=1').map((m) => m.at);
  t.ok(
    r.messages.every((m) => m.text === 'WATCHDOG=1'),
    'only pings',
  );
  const before = pings.filter((p) => p < blockStart);
  const during = pings.filter((p) => p > blockStart + 50 && p < blockEnd);
  const after = pings.filter((p) => p >= blockEnd);
  const gaps = before.slice(1).map((p, i) => p - before[i]!);
  const sorted = [...gaps].sort((a, b) => a - b);
  const median = sorted[Math.floor(sorted.length / 2)] ?? 0;
  t.comment(`pings: ${before.length} before the block (gaps ${gaps.join(', ')} ms), ${during.length} during it, ${after.length} after`);
  t.ok(before.length >= 4, `pings while the loop runs (${before.length})`);
  t.ok(median >= 80 && median <= 130, `about every 100 ms (median gap ${median} ms)`);
  t.same(during, [], 'no ping while the event loop is blocked');
  const acrossBlock = (after[0] ?? Infinity) - (before.at(-1) ?? 0);
  t.ok(acrossBlock >= 650, `the gap across the block is the block (${acrossBlock} ms)`);
  t.ok(after.length >= 3, `pings again once the loop runs (${after.length})`);
});

t.test('READY=1 waits for every re-adoption; meanwhile STATUS says how many', async (t) => {
  const r = receiver(t);
  const n = new SystemdNotifier({ logger: silent, env: { NOTIFY_SOCKET: r.address } });
  const a = readoption('default/a');
  const b = readoption('default/b');
  let answered = (): void => undefined;
  const api = new Promise<void>((resolve) => (answered = resolve));
  const ready = n.ready({
    apiAnswers: () => api,
    readoptions: new Map([
      ['ua', a],
      ['ub', b],
    ]),
    status: () => '2 VMs (2 running), serving on /run/vmlet/vmlet.sock',
  });
  await r.waitLine('STATUS=re-adopting 2 VMs', 2_000, { past: true });
  a.settle();
  answered();
  await sleep(150);
  t.same(r.withLine('READY=1'), [], 'no READY=1 while one VM is still being re-adopted');
  b.settle();
  const report = await ready;
  const msg = await r.waitLine('READY=1', 2_000, { past: true });
  t.equal(msg.text, 'READY=1\nSTATUS=2 VMs (2 running), serving on /run/vmlet/vmlet.sock');
  t.same(report.pending, []);
  t.equal(report.sent, true);
  t.same(
    r.messages.map((m) => m.text.split('\n')[0]),
    ['STATUS=re-adopting 2 VMs', 'READY=1'],
  );
});

t.test('READY=1 waits for the API to answer too, and goes without VMs at once', async (t) => {
  const r = receiver(t);
  const n = new SystemdNotifier({ logger: silent, env: { NOTIFY_SOCKET: r.address } });
  let answered = (): void => undefined;
  const ready = n.ready({ apiAnswers: () => new Promise<void>((resolve) => (answered = resolve)), readoptions: new Map(), status: () => 's' });
  await sleep(100);
  t.same(r.messages, [], 'nothing before the API answers (no re-adopting line without VMs)');
  answered();
  const report = await ready;
  await r.waitLine('READY=1', 2_000, { past: true });
  t.ok(report.ms < 1_000, `ready ${report.ms} ms after asked`);
});

t.test('past the bound READY=1 goes anyway, with a warning naming the VMs not re-adopted', async (t) => {
  const r = receiver(t);
  const log = captureLogger();
  const n = new SystemdNotifier({ logger: log.logger, env: { NOTIFY_SOCKET: r.address }, readoptBoundMs: 300 });
  const stuck = readoption('default/stuck');
  const fine = readoption('default/fine');
  fine.settle();
  const started = Date.now();
  const report = await n.ready({
    apiAnswers: () => Promise.reject(new Error('refused')),
    readoptions: new Map([
      ['u1', stuck],
      ['u2', fine],
    ]),
    status: () => 'serving',
  });
  const took = Date.now() - started;
  t.ok(took >= 290 && took < 1_500, `READY after the bound (${took} ms)`);
  t.same(report.pending, ['default/stuck']);
  await r.waitLine('READY=1', 2_000, { past: true });
  const warn = log.lines.find((l) => Array.isArray(l.vmis));
  t.same(warn?.vmis, ['default/stuck'], 'the warning names the VM');
  t.equal(warn?.level, 40);
  t.ok(
    log.lines.some((l) => String(l.msg).includes('does not answer')),
    'an API that does not answer is logged',
  );
});

t.test('a stop before READY cancels it: STOPPING=1 and no READY=1', async (t) => {
  const r = receiver(t);
  const n = new SystemdNotifier({ logger: silent, env: { NOTIFY_SOCKET: r.address } });
  const stuck = readoption('default/stuck');
  const ready = n.ready({ apiAnswers: () => Promise.resolve(), readoptions: new Map([['u', stuck]]), status: () => 's' });
  await r.waitLine('STATUS=re-adopting 1 VM', 2_000, { past: true });
  n.stopping();
  const report = await ready;
  t.equal(report.sent, false);
  await r.waitLine('STOPPING=1', 2_000, { past: true });
  stuck.settle();
  await sleep(50);
  t.same(r.withLine('READY=1'), []);
});

t.test('STATUS= after READY: debounced, only when it changed, never before READY', async (t) => {
  const r = receiver(t);
  const n = new SystemdNotifier({ logger: silent, env: { NOTIFY_SOCKET: r.address }, statusDebounceMs: 100 });
  t.teardown(() => n.close());
  n.status('too early');
  await sleep(150);
  t.same(r.messages, [], 'a status before READY=1 is not sent');
  await n.ready({ apiAnswers: () => Promise.resolve(), readoptions: new Map(), status: () => '1 VM (0 running), serving on s' });
  await r.waitLine('READY=1', 2_000, { past: true });
  n.status('1 VM (0 running), serving on s');
  await sleep(150);
  t.equal(r.messages.length, 1, 'the same line is not sent again');
  for (let i = 1; i <= 20; i++) {
    n.status(`${i} VMs (0 running), serving on s`);
    await sleep(10);
  }
  await sleep(150);
  const statuses = r.messages.slice(1).map((m) => m.text);
  t.ok(statuses.length >= 1 && statuses.length <= 3, `20 changes in 200 ms: ${statuses.length} STATUS lines`);
  t.equal(statuses.at(-1), 'STATUS=20 VMs (0 running), serving on s', 'the last one wins');
});

t.test('VmCountWatch: VMIs that are not Succeeded/Failed, and how many are Running', async (t) => {
  const store = await LocalStore.open({ dir: t.testdir({}), logger: captureLogger().logger, now: steppingClock() });
  t.teardown(() => store.close());
  await store.create(vmi('old'));
  await store.updateStatus('VirtualMachineInstance', 'default', 'old', () => ({ phase: 'Succeeded' }));
  await store.create(vmi('a'));
  const seen: VmCounts[] = [];
  const w = new VmCountWatch({ store, onChange: (c) => seen.push(c), logger: silent });
  w.start();
  t.teardown(() => w.close());
  const until = async (want: string): Promise<void> => {
    for (let i = 0; i < 100 && describeCounts(w.counts()) !== want; i++) await sleep(10);
    t.equal(describeCounts(w.counts()), want);
  };
  await until('1 VM (0 running)');
  await store.create(vmi('b'));
  await store.updateStatus('VirtualMachineInstance', 'default', 'a', () => ({ phase: 'Running' }));
  await until('2 VMs (1 running)');
  await store.updateStatus('VirtualMachineInstance', 'default', 'b', () => ({ phase: 'Running' }));
  await until('2 VMs (2 running)');
  await store.updateStatus('VirtualMachineInstance', 'default', 'a', () => ({ phase: 'Failed' }));
  await store.delete('VirtualMachineInstance', 'default', 'old');
  await until('1 VM (1 running)');
  t.same(
    seen.map(describeCounts),
    ['1 VM (0 running)', '2 VMs (0 running)', '2 VMs (1 running)', '2 VMs (2 running)', '1 VM (1 running)'],
    'onChange only when the counts changed',
  );
});

t.test("apiAnswers closes its connection: a kept-alive one would count against root's maxConnectionsPerClient", async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-api-answers-'));
  const server = http.createServer((req, res) => {
    res.writeHead(req.url === '/healthz' ? 200 : 404);
    res.end('ok');
  });
  server.keepAliveTimeout = 60_000;
  const sock = path.join(dir, 'api.sock');
  await new Promise<void>((r) => server.listen(sock, r));
  t.teardown(() => {
    server.closeAllConnections();
    server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const open = (): Promise<number> => new Promise((r, j) => server.getConnections((e, n) => (e ? j(e) : r(n))));
  await apiAnswers(sock);
  const end = Date.now() + 1_000;
  while ((await open()) > 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
  t.equal(await open(), 0, 'no connection left open after the answer');
  server.removeAllListeners('request');
  server.on('request', (_req: http.IncomingMessage, res: http.ServerResponse) => {
    res.writeHead(503);
    res.end();
  });
  await t.rejects(apiAnswers(sock), { code: 'DAEMON_UNREACHABLE', message: /answered 503/ });
});
