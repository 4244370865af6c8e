// Which VMs still have a live launcher on this host, read from the daemon's run folder and /proc alone, so it answers with the daemon stopped too.
import fs from 'node:fs';
import path from 'node:path';
import { isLiveProcessFor, readRunDir } from '../qemu/launch.js';

/** uids of the VMIs under `<runDir>/vms` whose launcher is alive. */
export async function liveVmUids(runDir: string, procRoot = '/proc'): Promise<string[]> {
  const vms = path.join(runDir, 'vms');
  let uids: string[];
  try {
    uids = fs.readdirSync(vms);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
  const live: string[] = [];
  for (const uid of uids.sort()) {
    let st;
    try {
      st = await readRunDir(path.join(vms, uid));
    } catch {
      continue;
    }
    // QEMU dies with its launcher (parent-death signal), so the launcher alone tells.
    if (st.launcherPid !== undefined && (await isLiveProcessFor(st.launcherPid, uid, procRoot, st.launcherStart).catch(() => false))) live.push(uid);
  }
  return live;
}
