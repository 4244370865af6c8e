// `vmlet install` and `vmlet uninstall` on a bare-metal host: check the host, then hand over to src/install with the real systemctl and paths.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { checkHost, hostFacts } from '../install/host-check.js';
import { realHostOps } from '../install/host-ops.js';
import { install } from '../install/install.js';
import { installLayout } from '../install/layout.js';
import { uninstall } from '../install/uninstall.js';
import type { CliIo } from './io.js';

/** The tree this CLI runs from (dist/cli → two levels up): what `vmlet install` copies. */
const TREE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

export async function installVerb(io: CliIo, opts: { start: boolean }): Promise<number> {
  checkHost(hostFacts(io.env.PATH));
  await install({ layout: installLayout('/'), tree: TREE, node: process.execPath, start: opts.start, ops: realHostOps, log: (l) => io.stdout.write(`${l}\n`) });
  return 0;
}

export async function uninstallVerb(io: CliIo, opts: { stopVms: boolean; purge: boolean }): Promise<number> {
  checkHost({ ...hostFacts(io.env.PATH), missing: [] });
  await uninstall({ layout: installLayout('/'), stopVms: opts.stopVms, purge: opts.purge, ops: realHostOps, log: (l) => io.stdout.write(`${l}\n`) });
  return 0;
}
