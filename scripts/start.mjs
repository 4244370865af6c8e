#!/usr/bin/env node
// `npm start`: runs the daemon in standalone mode in the foreground, applies the example VM, and says in a few lines whether it came up (where to reach it) or why not.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const socket = process.env.VMLET_SOCKET ?? '/run/vmlet/vmlet.sock';
const cli = path.join(root, 'dist', 'cli', 'main.js');
// The example config with this checkout's test guest folder filled in (its hostPaths.allow names it).
const guestDir = path.join(root, '.cache', 'guest');
const config = path.join(root, '.cache', 'vmlet.start.yaml');
fs.mkdirSync(path.dirname(config), { recursive: true });
fs.writeFileSync(config, fs.readFileSync(path.join(root, 'examples', 'vmlet.yaml'), 'utf8').replaceAll('@GUEST_DIR@', guestDir));
const VM = 'testguest';
const NAMESPACE = 'default';
/** How long to wait for the example VM to run before saying it did not. */
const DEADLINE_MS = 120_000;
/** After Running, how long to wait for its address to show. */
const IP_GRACE_MS = 10_000;
/** A progress line at least this often while nothing changes. */
const PROGRESS_EVERY_MS = 15_000;

const { ApiClient, paths } = await import(path.join(root, 'dist', 'cli', 'client.js'));
const { accelVerdict, daemonVersionOf } = await import(path.join(root, 'dist', 'cli', 'output.js'));

const daemon = spawn(process.execPath, [cli, 'daemon', '--config', config, '--socket', socket], { stdio: 'inherit' });
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => daemon.kill(sig));
daemon.on('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));

/** Progress goes to stderr, marked, so it stands out among the daemon's logs on stdout. */
const say = (line) => process.stderr.write(`start: ${line}\n`);
/** The summary: a block of lines on stderr. */
const block = (...lines) => process.stderr.write(`${lines.join('\n')}\n`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const cliHint = `node ${path.relative(process.cwd(), cli) || cli}`;

async function waitForSocket(deadline) {
  while (Date.now() < deadline) {
    const ok = await new Promise((resolve) => {
      const s = net.connect(socket, () => { s.destroy(); resolve(true); });
      s.on('error', () => resolve(false));
    });
    if (ok) return true;
    await sleep(100);
  }
  return false;
}

const client = new ApiClient({ socketPath: socket });

/** The object, or undefined when it does not exist (or the daemon went away: the exit handler ends us then). */
async function get(plural) {
  try {
    return await client.call('GET', paths.object(plural, NAMESPACE, VM));
  } catch {
    return undefined;
  }
}

async function version() {
  try {
    return daemonVersionOf(await client.call('GET', '/version'));
  } catch {
    return undefined;
  }
}

/** The newest Warning event of the VM's VMIs: why it failed, when its VMI is already gone. */
async function lastWarning() {
  try {
    const list = await client.call('GET', `${paths.events(NAMESPACE)}?fieldSelector=${encodeURIComponent(`involvedObject.name=${VM}`)}`);
    const warnings = (list.items ?? []).filter((e) => e.type === 'Warning');
    const when = (e) => Date.parse(e.lastTimestamp ?? e.metadata?.creationTimestamp ?? '') || 0;
    return warnings.sort((a, b) => when(a) - when(b)).at(-1);
  } catch {
    return undefined;
  }
}

const condition = (vmi, type) => (vmi?.status?.conditions ?? []).find((c) => c.type === type);
const ipOf = (vmi) => (vmi?.status?.interfaces ?? []).map((i) => i.ipAddress).find((a) => typeof a === 'string' && a !== '');
const seconds = (ms) => `${(ms / 1000).toFixed(1)} s`;
const indent = (text) => String(text).trim().split('\n').map((l) => `    ${l}`);

/** Follows the example VM until its VMI runs, fails, or the deadline passes; prints progress on the way. */
async function follow(started) {
  let last = '';
  let lastPrinted = Date.now();
  let runningSince;
  for (;;) {
    const [vm, vmi] = [await get('virtualmachines'), await get('virtualmachineinstances')];
    const phase = vmi?.status?.phase || (vmi ? 'Pending' : 'no VMI yet');
    const printable = vm?.status?.printableStatus ?? 'unknown';
    const now = Date.now();
    if (printable === 'CrashLoopBackOff' || phase === 'Failed') return { outcome: 'failed', vm, vmi, phase, printable };
    if (phase === 'Running') {
      runningSince ??= now;
      if (ipOf(vmi) !== undefined || now - runningSince > IP_GRACE_MS) return { outcome: 'running', vm, vmi };
    }
    const state = `${phase} (VM ${printable})`;
    if (state !== last || now - lastPrinted >= PROGRESS_EVERY_MS) {
      say(`${VM}: ${state} after ${seconds(now - started)}`);
      last = state;
      lastPrinted = now;
    }
    if (now - started > DEADLINE_MS) return { outcome: 'timeout', vm, vmi, phase, printable };
    await sleep(500);
  }
}

async function report(started) {
  const r = await follow(started);
  const took = seconds(Date.now() - started);
  const v = await version();
  const describeHint = `  more:           ${cliHint} describe vm ${VM}`;
  if (r.outcome === 'running') {
    const ip = ipOf(r.vmi);
    const accel = r.vmi.status?.vmlet?.accel;
    const how = accel === 'tcg' || r.vmi.status?.vmlet?.softwareEmulation ? 'software emulation (TCG, slow)' : accel === 'kvm' ? 'KVM' : 'an unknown accelerator';
    block(
      '',
      `${VM} is Running after ${took}, with ${how}${ip ? `, at ${ip}` : ''}.`,
      ip ? `  its web server: curl http://${ip}/   (port 80 of its sandbox address goes to the guest)` : '  it has no IP address: is networking disabled in the config?',
      `  its console:    ${cliHint} console ${VM}   (Ctrl+] detaches)`,
      `  list VMs:       ${cliHint} get vmis`,
      describeHint,
      'Ctrl+C stops the daemon; VMs keep running and are re-adopted on the next start.',
      '',
    );
    return;
  }
  const lines = [''];
  const vmiState = r.vmi ? `its VMI is ${r.phase}${r.vmi.status?.reason ? ` (${r.vmi.status.reason})` : ''}, ` : '';
  if (r.outcome === 'timeout') lines.push(`${VM} is not Running after ${took}: ${vmiState}the VM is ${r.printable}.`);
  else lines.push(`${VM} did not start: ${vmiState}the VM is ${r.printable} (after ${took}).`);
  const message = r.vmi?.status?.message;
  if (message) lines.push('  QEMU / the daemon said:', ...indent(message));
  else {
    const w = await lastWarning();
    if (w) lines.push(`  last warning (${w.reason}):`, ...indent(w.message));
  }
  const emulation = condition(r.vmi, 'SoftwareEmulation');
  if (emulation?.status === 'True' && emulation.message) lines.push(`  SoftwareEmulation: ${emulation.message}`);
  if (v) {
    lines.push(`  KVM:            ${v.kvm.usable ? 'usable' : `not usable: ${v.kvm.reason}`}`, `  accelerator:    ${accelVerdict(v)}`, `  QEMU:           ${v.qemu}`);
  }
  lines.push(describeHint, `The daemon keeps running (Ctrl+C stops it); ${r.outcome === 'timeout' ? 'the VM may still come up' : 'the VM is retried with a back-off'}.`, '');
  block(...lines);
}

if (!(await waitForSocket(Date.now() + 30_000))) {
  console.error(`start: the daemon did not open ${socket} within 30 s`);
  daemon.kill('SIGTERM');
} else {
  // The example names the test guest by placeholder; fill in this checkout's cached image.
  const guest = guestDir;
  const text = fs.readFileSync(path.join(root, 'examples', 'vm-testguest.yaml'), 'utf8')
    .replaceAll('@GUEST_KERNEL@', path.join(guest, 'vmlinux'))
    .replaceAll('@GUEST_INITRD@', path.join(guest, 'initrd.img'));
  const started = Date.now();
  const r = spawnSync(process.execPath, [cli, '--socket', socket, 'apply', '-f', '-'], { input: text, stdio: ['pipe', 'inherit', 'inherit'] });
  if (r.status === 0) {
    say(`vmlet is running in standalone mode; waiting up to ${DEADLINE_MS / 1000} s for the example VM "${VM}" to run.`);
    await report(started);
  }
}
