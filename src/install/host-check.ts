// What a host needs before vmlet can be installed on it: root, Node.js 20 or later, systemd as PID 1, and the Debian packages whose programs the daemon runs.
import fs from 'node:fs';
import path from 'node:path';
import { VmletError } from '../errors.js';

/** Program the daemon runs → the Debian package that ships it. */
export const REQUIRED_PROGRAMS: ReadonlyArray<{ program: string; pkg: string }> = [
  { program: 'qemu-system-x86_64', pkg: 'qemu-system-x86' },
  { program: 'qemu-img', pkg: 'qemu-utils' },
  { program: 'ip', pkg: 'iproute2' },
  { program: 'nft', pkg: 'nftables' },
  { program: 'systemctl', pkg: 'systemd' },
  { program: 'useradd', pkg: 'passwd' },
];

const SEARCH = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];

/** The first executable `program` on PATH (plus the sbin folders, which a non-login root shell may lack). */
export function findProgram(program: string, envPath = process.env.PATH ?? ''): string | undefined {
  for (const dir of [...envPath.split(':').filter((d) => d.startsWith('/')), ...SEARCH]) {
    const p = path.join(dir, program);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      if (fs.statSync(p).isFile()) return p;
    } catch {
      // not here
    }
  }
  return undefined;
}

export interface HostFacts {
  uid: number;
  nodeVersion: string;
  /** systemd is PID 1 (sd_booted: /run/systemd/system exists) */
  systemdBooted: boolean;
  /** programs from REQUIRED_PROGRAMS that were not found */
  missing: Array<{ program: string; pkg: string }>;
}

export function hostFacts(envPath?: string): HostFacts {
  return {
    uid: process.getuid?.() ?? -1,
    nodeVersion: process.versions.node,
    systemdBooted: fs.existsSync('/run/systemd/system'),
    missing: REQUIRED_PROGRAMS.filter((r) => findProgram(r.program, envPath) === undefined),
  };
}

/** Throws the first reason the host cannot take an install; each message says what to do. */
export function checkHost(f: HostFacts): void {
  if (f.uid !== 0) throw new VmletError('INSTALL_NOT_ROOT', 'vmlet install and uninstall change /opt, /etc and systemd: run them as root');
  const major = Number(f.nodeVersion.split('.')[0]);
  if (!(major >= 20)) throw new VmletError('INSTALL_NODE_UNSUITABLE', `vmlet needs Node.js 20 or later; this is ${f.nodeVersion}`);
  if (f.missing.length > 0) {
    const pkgs = [...new Set(f.missing.map((m) => m.pkg))];
    throw new VmletError(
      'INSTALL_MISSING_PACKAGES',
      `missing ${f.missing.map((m) => m.program).join(', ')}; install the Debian packages first: apt-get install -y ${pkgs.join(' ')}`,
      { details: { packages: pkgs } },
    );
  }
  if (!f.systemdBooted) {
    throw new VmletError('INSTALL_NO_SYSTEMD', 'systemd is not running as PID 1 here (no /run/systemd/system): vmlet install sets up a systemd service');
  }
}
