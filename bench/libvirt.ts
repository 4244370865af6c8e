// The libvirt baseline for benchmarks: installs Debian's libvirt when missing, runs a private libvirtd, times `virsh create` → running.
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import type { Accel } from '../src/api/vocabulary.js';

const run = promisify(execFile);

/** What the system libvirtd's QEMU driver needs here: QEMU as root, no virtlogd, no cgroups or security drivers. */
const QEMU_CONF = `# written by vmlet's benchmark (bench/libvirt.ts) for its private libvirtd
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
stdio_handler = "file"
`;

function ensureInstalled(): void {
  if (!fs.existsSync('/usr/sbin/libvirtd') || !fs.existsSync('/usr/bin/virsh')) {
    const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
    execFileSync('apt-get', ['update', '-qq'], { stdio: 'inherit', env });
    execFileSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', 'libvirt-daemon', 'libvirt-daemon-driver-qemu', 'libvirt-clients'], {
      stdio: 'inherit',
      env,
    });
  }
  // The QEMU driver looks up its build-time user and group before it reads qemu.conf.
  for (const [check, create] of [
    [
      ['group', 'kvm'],
      ['groupadd', '-r', 'kvm'],
    ],
    [
      ['group', 'libvirt-qemu'],
      ['groupadd', '-r', 'libvirt-qemu'],
    ],
    [
      ['passwd', 'libvirt-qemu'],
      ['useradd', '-r', '-g', 'kvm', '-d', '/var/lib/libvirt', '-s', '/usr/sbin/nologin', 'libvirt-qemu'],
    ],
  ] as const) {
    try {
      execFileSync('getent', [...check], { stdio: 'ignore' });
    } catch {
      execFileSync(create[0], create.slice(1), { stdio: 'ignore' });
    }
  }
  const conf = '/etc/libvirt/qemu.conf';
  const current = fs.existsSync(conf) ? fs.readFileSync(conf, 'utf8') : '';
  if (current !== QEMU_CONF) {
    if (current && !current.startsWith('# written by vmlet')) fs.copyFileSync(conf, `${conf}.vmlet-bench-orig`);
    fs.mkdirSync('/etc/libvirt', { recursive: true });
    fs.writeFileSync(conf, QEMU_CONF);
  }
}

function domainXml(name: string, accel: Accel): string {
  return `<domain type='${accel === 'kvm' ? 'kvm' : 'qemu'}'>
  <name>${name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator><serial type='pty'/></devices>
</domain>
`;
}

export interface Libvirt {
  uri: string;
  /** `virsh create` of the same small VM until `domstate` says running (or paused, with `paused`); ms. */
  start(name: string, opts?: { paused?: boolean }): Promise<number>;
  /** libvirtd's pid, for RSS and CPU time. */
  pid: number;
  destroy(name: string): Promise<void>;
  stop(): Promise<void>;
}

export async function startLibvirt(accel: Accel): Promise<Libvirt> {
  ensureInstalled();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-bench-libvirt-'));
  fs.writeFileSync(path.join(dir, 'libvirtd.conf'), `unix_sock_dir = "${dir}"\nlisten_tls = 0\nlisten_tcp = 0\nauth_unix_rw = "none"\nauth_unix_ro = "none"\n`);
  const daemon: ChildProcess = spawn('/usr/sbin/libvirtd', ['-f', path.join(dir, 'libvirtd.conf')], {
    stdio: ['ignore', 'ignore', fs.openSync(path.join(dir, 'libvirtd.log'), 'a')],
  });
  const uri = `qemu:///system?socket=${dir}/libvirt-sock`;
  const virsh = (...args: string[]): Promise<{ stdout: string }> => run('virsh', ['-q', '-c', uri, ...args]);
  const until = Date.now() + 30_000;
  for (;;) {
    try {
      await virsh('version');
      break;
    } catch (e) {
      if (Date.now() > until) throw new Error(`libvirtd did not come up; see ${dir}/libvirtd.log`, { cause: e });
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  return {
    uri,
    pid: daemon.pid!,
    async start(name, opts = {}) {
      const xml = path.join(dir, `${name}.xml`);
      fs.writeFileSync(xml, domainXml(name, accel));
      const t0 = performance.now();
      await virsh('create', xml, ...(opts.paused ? ['--paused'] : []));
      const want = opts.paused ? 'paused' : 'running';
      const until = Date.now() + 60_000;
      for (;;) {
        const st = (await virsh('domstate', name)).stdout.trim();
        if (st === want) return performance.now() - t0;
        if (Date.now() > until) throw new Error(`libvirt domain ${name} was not ${want} after 60 s (state: ${st}); see ${dir}/libvirtd.log`);
        await new Promise((r) => setTimeout(r, 5));
      }
    },
    async destroy(name) {
      await virsh('destroy', name).catch(() => undefined);
    },
    async stop() {
      const gone = new Promise((r) => daemon.once('exit', r));
      daemon.kill('SIGTERM');
      await gone;
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
