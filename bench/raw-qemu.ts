// The benchmarks' floor: QEMU started the plainest way (-S, QMP negotiated, `cont`, running seen), with the harness's own posix_spawn.
import fs from 'node:fs';
import { QmpClient } from '../src/qmp/client.js';
import { spawnProcess, type Spawned } from '../src/sys/spawn.js';
import type { Accel } from '../src/api/vocabulary.js';

const QEMU = '/usr/bin/qemu-system-x86_64';

/**
 * A 64 MiB, 1-vCPU QEMU with a serial port and QMP at `sock`, plus `extra` arguments, until it runs; ms from `t0`.
 * posix_spawn, as the daemon starts its launchers: child_process's fork copies the harness's page tables and waits
 * for the exec, 30–70 ms per QEMU on a loaded host, which in a burst held back every QEMU after the first.
 */
export async function startRawQemu(o: { sock: string; accel: Accel; extra?: string[]; t0?: number }): Promise<{ ms: number; qemu: Spawned }> {
  const t0 = o.t0 ?? performance.now();
  // prettier-ignore
  const args = [
    '-S', '-nodefaults', '-no-user-config', '-display', 'none',
    '-machine', `q35,accel=${o.accel}`, '-m', '64M', '-smp', '1',
    '-chardev', `socket,id=qmp,path=${o.sock},server=on,wait=off`, '-mon', 'chardev=qmp,mode=control',
    '-chardev', `socket,id=serial0,path=${o.sock}.serial,server=on,wait=off`, '-device', 'isa-serial,chardev=serial0',
    ...(o.extra ?? []),
  ];
  const qemu = spawnProcess({
    file: QEMU,
    argv: [QEMU, ...args],
    env: Object.entries(process.env).map(([k, v]) => `${k}=${v ?? ''}`),
    fds: [0, 1, 2].map((fd) => ({ op: 'open' as const, fd, path: '/dev/null', flags: fd === 0 ? fs.constants.O_RDONLY : fs.constants.O_WRONLY })),
  });
  try {
    const qmp = new QmpClient({ path: o.sock, connectTimeoutMs: 20_000 });
    await qmp.connect();
    await qmp.execute('cont');
    const st = await qmp.execute('query-status');
    const ms = performance.now() - t0;
    await qmp.close();
    if (!st.running) throw new Error('raw QEMU is not running after cont');
    return { ms, qemu };
  } catch (e) {
    await stopRawQemu(qemu);
    throw e;
  }
}

export async function stopRawQemu(qemu: Spawned): Promise<void> {
  try {
    process.kill(qemu.pid, 'SIGKILL');
  } catch {
    /* gone */
  }
  await qemu.exited;
}
