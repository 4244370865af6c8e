// vmlet as a systemd service under a real systemd (a Debian 12 guest, PID 1 systemd, under TCG): install, READY=1 and STATUS=, a VM that survives restarts, stops, a watchdog kill and an upgrade, journald fields, and an uninstall that leaves only config and state until --purge.
import t from 'tap';
import { bootSystemdGuest, systemdGuestSkipReason, type SystemdGuest } from '../support/systemd-guest.js';

const SRC = '/mnt/vmlet-src';
/** WatchdogSec= of systemd/vmlet.service, and what a restart under TCG-in-TCG may add to it. */
const WATCHDOG_S = 15;
const WATCHDOG_SLACK_S = 30;
/** VMs to re-adopt for the second READY figure (VMLET_SYSTEMD_READY_VMS; each is an idle firmware VM). */
const READY_VMS = Number(process.env.VMLET_SYSTEMD_READY_VMS ?? 3);
/** Paths that systemd, the journal and the package tools change by themselves while the guest runs. */
const OWN_CHURN = /^\/(var\/lib\/systemd|var\/lib\/dhcp|var\/lib\/apt|etc\/(passwd|group|shadow|gshadow|subuid|subgid)-?$|root\/files-)/;

const skip = await systemdGuestSkipReason();
// One guest boot for the whole file, under TCG: more than tap's per-file default.
t.setTimeout(1_800_000);

/** A VMI with no disk: its firmware finds nothing to boot and idles. */
function idleVmi(name: string): string {
  return [
    'apiVersion: vmlet.io/v1alpha1',
    'kind: VirtualMachineInstance',
    `metadata: {name: ${name}, namespace: default}`,
    'spec:',
    // nothing in the guest answers ACPI: stop at once instead of after the 30 s default
    '  terminationGracePeriodSeconds: 0',
    '  domain:',
    '    cpu: {cores: 1}',
    '    memory: {guest: 32Mi}',
    '    devices: {}',
    '',
  ].join('\n');
}

/** Files outside the pseudo filesystems, one per line, sorted. */
const LIST_FILES =
  'find / -xdev \\( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp -o -path /var/tmp -o -path /var/log -o -path /var/cache -o -path /mnt \\) -prune -o -print | sort';

t.test('vmlet under a real systemd', { skip }, async (t) => {
  const guest: SystemdGuest = await bootSystemdGuest();
  t.teardown(() => guest.shutdown());
  t.comment(`guest booted in ${(guest.bootMs / 1000).toFixed(1)} s`);

  /** Runs a command and fails the test with its output when it exits non-zero. */
  const sh = async (cmd: string, timeoutMs = 300_000): Promise<string> => {
    const r = await guest.exec(cmd, { timeoutMs });
    if (r.code !== 0) throw new Error(`"${cmd}" exited ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
    return r.stdout;
  };
  const mainPid = async (): Promise<number> => Number((await sh('systemctl show -p MainPID --value vmlet')).trim());
  const qemuPids = async (): Promise<string> => (await guest.exec('pidof qemu-system-x86_64')).stdout.trim().split(/\s+/).sort().join(' ');
  /** Seconds `cmd` took inside the guest (its own clock, not the guest agent's round trips). */
  const timed = async (cmd: string): Promise<number> =>
    Number((await sh(`s=$(date +%s%N); ${cmd} >/dev/null; e=$(date +%s%N); echo $(( (e - s) / 1000000 ))`)).trim()) / 1000;
  const vmiPhase = async (name: string): Promise<string> => {
    const r = await guest.exec(`vmlet get vmi ${name} -o json`);
    if (r.code !== 0) return `error: ${r.stderr.trim()}`;
    return (JSON.parse(r.stdout) as { status?: { phase?: string } }).status?.phase ?? '';
  };
  const waitRunning = async (name: string, ms = 240_000): Promise<void> => {
    const end = Date.now() + ms;
    let phase = '';
    while (Date.now() < end) {
      phase = await vmiPhase(name);
      if (phase === 'Running') return;
      await new Promise((r) => setTimeout(r, 2000));
    }
    throw new Error(
      `VMI ${name} is ${phase}, not Running, after ${ms / 1000} s; ${await guest.exec('journalctl -u vmlet -n 40 -o cat').then((r) => r.stdout)}`,
    );
  };

  await t.test('the guest: systemd as PID 1, Node.js 20, the tree read-only, no KVM', async (t) => {
    t.equal((await sh('ps -p 1 -o comm=')).trim(), 'systemd');
    t.match(await sh('node --version'), /^v2\d\./);
    const w = await guest.exec(`touch ${SRC}/x`);
    t.match(w.stderr, /Read-only file system/);
    t.equal((await sh('test -e /dev/kvm && echo kvm || echo none')).trim(), 'none', 'nested VMs run under TCG');
    const failing = await guest.exec('echo out; echo err >&2; exit 3');
    t.same([failing.code, failing.stdout, failing.stderr], [3, 'out\n', 'err\n'], 'the control channel reports exit codes and both streams');
  });

  await sh(`${LIST_FILES} > /root/files-before`);

  await t.test('install on the fresh guest, then start: READY=1 before systemctl returns', async (t) => {
    t.equal((await guest.exec('test -e /etc/vmlet/vmlet.yaml')).code, 1, 'no config before the install');
    const out = await sh(`cd /tmp && node ${SRC}/dist/cli/main.js install --no-start`);
    t.match(out, /installed 0\.\d+\.\d+.*service left stopped/);
    t.match(await sh('readlink /opt/vmlet/current'), /^\d+\.\d+\.\d+.*-[0-9a-f]{8}$/m);
    t.match(await sh('cat /etc/vmlet/vmlet.yaml'), /^mode: standalone$/m, 'the default config was written');
    t.equal((await sh('command -v vmlet')).trim(), '/usr/local/bin/vmlet');
    t.equal((await sh('systemctl is-enabled vmlet')).trim(), 'enabled');
    t.match(await sh('getent passwd vmlet-qemu'), /^vmlet-qemu:/);
    // This guest has no KVM: software emulation must be chosen explicitly, as a user would.
    await sh("printf 'useEmulation: true\\n' >> /etc/vmlet/vmlet.yaml");
    await sh(`node ${SRC}/dist/cli/main.js install --no-start`);
    t.match(await sh('cat /etc/vmlet/vmlet.yaml'), /^useEmulation: true$/m, 'a second install keeps the edited config');

    const s = await timed('systemctl start vmlet');
    t.comment(`systemctl start → READY=1 with 0 VMs: ${s.toFixed(2)} s`);
    t.equal((await sh('systemctl is-active vmlet')).trim(), 'active', 'active as soon as start returns');
    const v = await sh('vmlet version');
    t.match(v, /Client\S*\s+vmlet \d/);
    t.match(v, /Daemon\S*\s+vmlet \d/, 'the CLI found the daemon on the default socket');
    t.match(await sh('systemctl show -p StatusText --value vmlet'), /0 VMs/);
    t.match(await sh('systemctl status vmlet --no-pager -l || true'), /Status: ".*VMs/, 'systemctl status shows the STATUS= text');
  });

  let qemu = '';
  await t.test('a VMI reaches Running', async (t) => {
    await sh(`cat > /tmp/idle.yaml <<'EOF'\n${idleVmi('idle')}EOF`);
    await sh('vmlet apply -f /tmp/idle.yaml');
    await waitRunning('idle');
    qemu = await qemuPids();
    t.match(qemu, /^\d+$/, 'one QEMU');
    t.match(await sh('systemctl show -p StatusText --value vmlet'), /1 VM/);
  });

  await t.test('restart, and stop then start: the same QEMU, re-adopted before READY', async (t) => {
    const before = await mainPid();
    const r = await timed('systemctl restart vmlet');
    t.comment(`systemctl restart with 1 VM: ${r.toFixed(2)} s`);
    t.not(await mainPid(), before, 'a new daemon');
    t.equal(await qemuPids(), qemu, 'the same QEMU after restart');
    t.equal(await vmiPhase('idle'), 'Running', 'Running as soon as restart returns');
    await sh('systemctl stop vmlet');
    t.equal(await qemuPids(), qemu, 'stopping the service leaves the VM running');
    const s = await timed('systemctl start vmlet');
    t.comment(`systemctl start → READY=1 with 1 VM: ${s.toFixed(2)} s`);
    t.equal(await qemuPids(), qemu, 'the same QEMU after stop and start');
    t.equal(await vmiPhase('idle'), 'Running');
  });

  await t.test('a frozen event loop: the watchdog restarts the daemon and the VM keeps running', async (t) => {
    const frozen = await mainPid();
    const restartsBefore = Number((await sh('systemctl show -p NRestarts --value vmlet')).trim());
    await sh(`kill -STOP ${frozen}`);
    const t0 = Date.now();
    const limit = (WATCHDOG_S + WATCHDOG_SLACK_S) * 1000;
    let now = frozen;
    while (Date.now() - t0 < limit) {
      await new Promise((r) => setTimeout(r, 1000));
      now = await mainPid();
      if (now !== frozen && now !== 0 && (await guest.exec('systemctl is-active vmlet')).stdout.trim() === 'active') break;
    }
    const took = (Date.now() - t0) / 1000;
    t.not(now, frozen, `restarted (after ${took.toFixed(1)} s)`);
    t.ok(took <= WATCHDOG_S + WATCHDOG_SLACK_S, `within WatchdogSec + slack (${took.toFixed(1)} s)`);
    t.comment(`SIGSTOP → a new daemon active: ${took.toFixed(1)} s (WatchdogSec=${WATCHDOG_S})`);
    t.equal(Number((await sh('systemctl show -p NRestarts --value vmlet')).trim()), restartsBefore + 1);
    t.match(await sh('journalctl -u vmlet -o cat --no-pager | grep -i watchdog || true'), /[Ww]atchdog timeout/, 'systemd logged the watchdog timeout');
    t.equal(await qemuPids(), qemu, 'the VM kept running');
    t.equal(await vmiPhase('idle'), 'Running');
  });

  await t.test(`READY=1 with ${READY_VMS + 1} VMs to re-adopt`, async (t) => {
    for (let i = 1; i <= READY_VMS; i++) await sh(`cat > /tmp/idle${i}.yaml <<'EOF'\n${idleVmi(`idle${i}`)}EOF\nvmlet apply -f /tmp/idle${i}.yaml`);
    for (let i = 1; i <= READY_VMS; i++) await waitRunning(`idle${i}`, 600_000);
    const pids = await qemuPids();
    await sh('systemctl stop vmlet');
    const s = await timed('systemctl start vmlet');
    t.comment(`systemctl start → READY=1 with ${READY_VMS + 1} VMs: ${s.toFixed(2)} s`);
    t.equal(await qemuPids(), pids, 'all QEMUs the same');
    const list = await sh('vmlet get vmis -o json');
    const phases = (JSON.parse(list) as { items: Array<{ status?: { phase?: string } }> }).items.map((i) => i.status?.phase);
    t.same(phases, Array<string>(READY_VMS + 1).fill('Running'), 'every VMI Running at READY');
    t.match(await sh('systemctl show -p StatusText --value vmlet'), new RegExp(`${READY_VMS + 1} VMs`));
    await sh(Array.from({ length: READY_VMS }, (_, i) => `vmlet delete vmi idle${i + 1}`).join(' && '));
  });

  await t.test('journald holds the daemon JSON lines with the VM name as a field', async (t) => {
    const lines = (await sh('journalctl -u vmlet -o cat --no-pager')).split('\n').filter((l) => l.startsWith('{'));
    const withVm = lines.map((l) => JSON.parse(l) as { vmi?: { name?: string }; msg?: string }).filter((e) => e.vmi?.name === 'idle');
    t.ok(withVm.length > 0, `${withVm.length} lines name the VMI "idle" in their vmi field`);
  });

  await t.test('upgrade to a second build: the link switches, the VM survives', async (t) => {
    const first = (await sh('readlink /opt/vmlet/current')).trim();
    // A second build of the same tree: its own version, node_modules shared read-only from the first.
    await sh(
      `rm -rf /tmp/tree2 && mkdir -p /tmp/tree2 && cd ${SRC} && cp -a package.json package-lock.json dist deploy docs systemd /tmp/tree2/ && ` +
        `mkdir -p /tmp/tree2/native /tmp/tree2/src/daemon && cp -a native/build /tmp/tree2/native/ && cp -a src/daemon/proto /tmp/tree2/src/daemon/ && ` +
        `ln -s ${SRC}/node_modules /tmp/tree2/node_modules && ` +
        `node -e 'const f="/tmp/tree2/package.json";const p=JSON.parse(require("fs").readFileSync(f));p.version+="-upgrade";require("fs").writeFileSync(f,JSON.stringify(p))'`,
    );
    const out = await sh('node /tmp/tree2/dist/cli/main.js install');
    t.match(out, /restarted/);
    const second = (await sh('readlink /opt/vmlet/current')).trim();
    t.not(second, first);
    t.match(second, /-upgrade-[0-9a-f]{8}$/);
    t.equal((await guest.exec(`test -d /opt/vmlet/${first}`)).code, 0, 'the first version stays beside it');
    t.equal(await qemuPids(), qemu, 'the same QEMU after the upgrade');
    t.equal(await vmiPhase('idle'), 'Running');
    t.match(await sh('vmlet version'), /Daemon\S*\s+vmlet \S*-upgrade/, 'the daemon reports the new version');
  });

  await t.test('uninstall: refused while the VM runs, then with --stop-vms everything but config and state goes', async (t) => {
    const refused = await guest.exec('vmlet uninstall');
    t.equal(refused.code, 1);
    t.match(refused.stderr, /INSTALL_VMS_RUNNING/);
    t.match(refused.stderr, /default\/idle/);
    t.equal((await guest.exec('test -d /opt/vmlet')).code, 0, 'nothing removed');
    await sh('vmlet uninstall --stop-vms');
    t.equal(await qemuPids(), '', 'no QEMU left');
    t.not((await guest.exec('systemctl cat vmlet')).code, 0, 'no unit');
    t.not((await guest.exec('ip link show vmlet0')).code, 0, 'no bridge');
    t.not((await guest.exec('nft list table ip vmlet')).code, 0, 'no nftables table');
    t.equal((await guest.exec('test -e /usr/local/bin/vmlet')).code, 1, 'no vmlet on the PATH');
    await sh(`${LIST_FILES} > /root/files-after`);
    const added = (await sh('comm -13 /root/files-before /root/files-after')).split('\n').filter((l) => l !== '' && !OWN_CHURN.test(l));
    t.same(
      added.filter((l) => !/^\/(etc\/vmlet|var\/lib\/vmlet)(\/|$)/.test(l)),
      [],
      'nothing of vmlet outside config and state',
    );
    t.ok(added.includes('/etc/vmlet/vmlet.yaml') && added.includes('/var/lib/vmlet'), 'config and state are kept');

    await sh(`node ${SRC}/dist/cli/main.js uninstall --purge`);
    await sh(`${LIST_FILES} > /root/files-purged`);
    const left = (await sh('comm -13 /root/files-before /root/files-purged')).split('\n').filter((l) => l !== '' && !OWN_CHURN.test(l));
    t.same(left, [], 'after --purge nothing is left');
    t.not((await guest.exec('getent passwd vmlet-qemu')).code, 0, 'the user the install created is gone');
  });
});
