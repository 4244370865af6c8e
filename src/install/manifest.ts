// The install's record (`/opt/vmlet/install.json`): which versions sit beside each other, which is current, and what else the install created, so upgrades keep the config and uninstall removes exactly that.
import fs from 'node:fs';
import path from 'node:path';
import { VmletError } from '../errors.js';

export interface InstallManifest {
  format: 1;
  /** version folders under the prefix, oldest first */
  versions: string[];
  current: string;
  /** the Node.js binary the unit and the wrapper run */
  node: string;
  /** the install wrote the config (it is still kept on uninstall unless --purge) */
  createdConfig: boolean;
}

/**
 * The system user an install created for QEMU is recorded beside the config, not in the manifest: both
 * outlive an uninstall without --purge, and the purge that removes the config removes the user too.
 */
const CREATED_USER_FILE = 'created-user';

export function readCreatedUser(layout: { configDir: string }): string | undefined {
  try {
    const name = fs.readFileSync(path.join(layout.configDir, CREATED_USER_FILE), 'utf8').trim();
    return /^[a-z_][a-z0-9_-]{0,31}$/.test(name) ? name : undefined;
  } catch {
    return undefined;
  }
}

export function recordCreatedUser(layout: { configDir: string }, name: string): void {
  writeFileAtomic(path.join(layout.configDir, CREATED_USER_FILE), `${name}\n`, 0o644);
}

export function readManifest(file: string): InstallManifest | undefined {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  let m: Partial<InstallManifest>;
  try {
    m = JSON.parse(text) as Partial<InstallManifest>;
  } catch (cause) {
    throw new VmletError('INSTALL_MANIFEST_CORRUPT', `${file} is not JSON; move it away and install again`, { cause });
  }
  if (m.format !== 1 || !Array.isArray(m.versions) || typeof m.current !== 'string' || typeof m.node !== 'string') {
    throw new VmletError('INSTALL_MANIFEST_CORRUPT', `${file} is not an install record of this vmlet; move it away and install again`);
  }
  return { format: 1, versions: m.versions, current: m.current, node: m.node, createdConfig: m.createdConfig === true };
}

/** Written to a temporary file, fsynced and renamed: a crash leaves the old record or the new one. */
export function writeManifest(file: string, m: InstallManifest): void {
  writeFileAtomic(file, JSON.stringify(m, null, 2) + '\n', 0o644);
}

export function writeFileAtomic(file: string, text: string, mode: number): void {
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o755 });
  const tmp = `${file}.tmp-${process.pid}`;
  const fd = fs.openSync(tmp, 'w', mode);
  try {
    fs.writeSync(fd, text);
    fs.fchmodSync(fd, mode);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
}
