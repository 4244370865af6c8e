import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, truncateSync, writeFileSync, copyFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import t from 'tap';
import { validateVMI, type VirtualMachineInstance } from '../../src/api/index.js';
import { buildArgv, cmdlineHasVmiUid } from '../../src/qemu/argv.js';
import { probeQemu, resolveAccel } from '../../src/qemu/probe.js';
import { planVolumes } from '../../src/qemu/volumes.js';

const QEMU = process.env['VMLET_QEMU'] ?? '/usr/bin/qemu-system-x86_64';
const UID = '0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6';

/** A tiny QMP client: enough to negotiate, run a few commands and quit. */
class Qmp {
  private buf = '';
  private waiters: Array<(msg: Record<string, unknown>) => void> = [];
  private constructor(private readonly sock: Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      this.buf += d;
      let nl: number;
      while ((nl = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, nl).trim();
        this.buf = this.buf.slice(nl + 1);
        if (line === '') continue;
        const msg = JSON.parse(line) as Record<string, unknown>;
        if ('event' in msg) continue;
        this.waiters.shift()?.(msg);
      }
    });
  }
  static async open(path: string, timeoutMs = 20_000): Promise<Qmp> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const sock = await new Promise<Socket>((resolve, reject) => {
          const s = connect(path, () => resolve(s));
          s.once('error', reject);
        });
        const q = new Qmp(sock);
        await q.next(); // greeting
        await q.cmd('qmp_capabilities');
        return q;
      } catch (e) {
        if (Date.now() > deadline) throw e;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }
  private next(): Promise<Record<string, unknown>> {
    return new Promise((resolve) => this.waiters.push(resolve));
  }
  async cmd(execute: string, args?: Record<string, unknown>): Promise<unknown> {
    const p = this.next();
    this.sock.write(JSON.stringify(args === undefined ? { execute } : { execute, arguments: args }) + '\n');
    const msg = await p;
    if ('error' in msg) throw new Error(`${execute}: ${JSON.stringify(msg['error'])}`);
    return msg['return'];
  }
  close(): void {
    this.sock.destroy();
  }
}

/** The assertions runPaused uses (t.equal of any test). */
type Asserts = Pick<typeof t, 'equal'>;

interface Started {
  child: ChildProcess;
  stderr: () => string;
  exited: Promise<number | null>;
}

function start(argv: readonly string[]): Started {
  const [bin, ...args] = argv;
  const child = spawn(bin ?? QEMU, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, stderr: () => err, exited };
}

/** Starts QEMU with the argv, checks it is paused in prelaunch, runs `check`, quits. */
async function runPaused(t: Asserts, argv: readonly string[], runDir: string, check?: (qmp: Qmp) => Promise<void>): Promise<void> {
  const q = start(argv);
  const early = q.exited.then((code) => {
    throw new Error(`QEMU exited (${String(code)}) early: ${q.stderr()}`);
  });
  try {
    const qmp = await Promise.race([Qmp.open(join(runDir, 'qmp.sock')), early]);
    try {
      const status = (await qmp.cmd('query-status')) as { status: string; running: boolean };
      t.equal(status.status, 'prelaunch', 'paused before the guest runs (-S)');
      t.equal(status.running, false);
      if (check !== undefined) await check(qmp);
      await qmp.cmd('quit').catch(() => undefined);
    } finally {
      qmp.close();
    }
    const code = await Promise.race([q.exited, new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 15_000))]);
    t.equal(code, 0, `QEMU quit cleanly ${q.stderr()}`);
  } finally {
    if (q.child.exitCode === null && q.child.signalCode === null) q.child.kill('SIGKILL');
    early.catch(() => undefined);
  }
}

if (!existsSync(QEMU)) {
  t.plan(0, `skip: no QEMU binary at ${QEMU}`);
} else {
  const caps = await probeQemu(QEMU);
  const { accel } = resolveAccel('auto', true, caps);
  const base = t.testdir({});
  let n = 0;

  /** Validates the spec, prepares the planned files (sparse images, stand-in cloud-init ISO, EFI vars) and returns argv. */
  function prepare(spec: Record<string, unknown>): { vmi: VirtualMachineInstance; argv: string[]; runDir: string } {
    const runDir = join(base, `vm${n++}`);
    mkdirSync(runDir, { recursive: true });
    const vmi = validateVMI({
      apiVersion: 'vmlet.io/v1alpha1',
      kind: 'VirtualMachineInstance',
      metadata: { name: 'itest', uid: UID },
      spec,
    });
    const ovmf = caps.ovmf;
    const plan = planVolumes(vmi, runDir, ovmf !== undefined ? { ovmf } : {});
    for (const f of plan.files) {
      if (f.kind === 'emptyDisk' || (f.kind === 'hostDisk' && f.create)) {
        writeFileSync(f.path, '');
        truncateSync(f.path, Number(f.sizeBytes));
      } else if (f.kind === 'hostDisk') {
        if (!existsSync(f.path)) {
          writeFileSync(f.path, '');
          truncateSync(f.path, 1 << 20);
        }
      } else if (f.kind === 'cloudInitIso') {
        writeFileSync(f.path, Buffer.alloc(1 << 16)); // content does not matter while paused
      } else if (f.kind === 'efiVars') {
        copyFileSync(f.template, f.path);
      } else {
        throw new Error(`no containerDisk in these specs, yet a ${f.kind} file`);
      }
    }
    const argv = buildArgv(vmi, {
      qemuBinary: QEMU,
      runDir,
      accel,
      machineTypes: caps.machineTypeNames,
      cpuModels: caps.cpuModels,
      sandbox: caps.seccomp,
      ...(ovmf !== undefined ? { ovmf } : {}),
    });
    return { vmi, argv, runDir };
  }

  t.test('minimal spec starts paused', async (t) => {
    const img = join(base, 'root.img');
    const { argv, runDir } = prepare({
      domain: { memory: { guest: '64Mi' }, devices: { disks: [{ name: 'root' }] } },
      volumes: [{ name: 'root', hostDisk: { path: img, type: 'DiskOrCreate', capacity: '16Mi' } }],
    });
    t.ok(cmdlineHasVmiUid(argv, UID));
    await runPaused(t, argv, runDir, async (qmp) => {
      const name = (await qmp.cmd('query-name')) as { name: string };
      t.equal(name.name, 'default_itest');
    });
  });

  t.test('a path with ",file.driver=" opens the literal file', async (t) => {
    const dir = join(base, 'evil');
    mkdirSync(dir);
    const evil = join(dir, 'a,file.driver=null-co,b.img');
    writeFileSync(evil, '');
    truncateSync(evil, 4 << 20);
    const { argv, runDir } = prepare({
      domain: { memory: { guest: '64Mi' }, firmware: { serial: 'x,uuid=00000000-0000-0000-0000-000000000000' }, devices: { disks: [{ name: 'root' }] } },
      volumes: [{ name: 'root', hostDisk: { path: evil, type: 'Disk' } }],
    });
    await runPaused(t, argv, runDir, async (qmp) => {
      const nodes = (await qmp.cmd('query-named-block-nodes')) as Array<{ 'node-name': string; drv: string; file: string }>;
      const file = nodes.find((x) => x['node-name'] === 'vol0-file');
      t.equal(file?.drv, 'file', 'protocol driver is file, not null-co');
      t.equal(file?.file, evil, 'QEMU opened the literal file name');
      t.notOk(
        nodes.some((x) => x.drv === 'null-co'),
        'no null-co node was injected',
      );
      const uuid = (await qmp.cmd('query-uuid')) as { UUID: string };
      t.not(uuid.UUID, '00000000-0000-0000-0000-000000000000', 'serial did not inject a uuid');
    });
  });

  t.test('disks on every bus, cdroms, boot order, serials', async (t) => {
    const { argv, runDir } = prepare({
      domain: {
        memory: { guest: '64Mi' },
        cpu: { sockets: 1, cores: 2, threads: 1 },
        devices: {
          disks: [
            { name: 'vda', disk: { bus: 'virtio' }, bootOrder: 2, serial: 'VDA1' },
            { name: 'sda', disk: { bus: 'sata' } },
            { name: 'sdb', disk: { bus: 'scsi', readonly: true }, serial: 'scsi.1' },
            { name: 'cd1', cdrom: { bus: 'sata' }, bootOrder: 1 },
            { name: 'cd2', cdrom: { bus: 'scsi' } },
            { name: 'vdb', disk: { bus: 'virtio', readonly: true } },
          ],
        },
      },
      volumes: [
        { name: 'vda', emptyDisk: { capacity: '8Mi' } },
        { name: 'sda', emptyDisk: { capacity: '8Mi' } },
        { name: 'sdb', hostDisk: { path: join(base, 'sdb.img'), type: 'Disk' } },
        { name: 'cd1', hostDisk: { path: join(base, 'cd1.iso'), type: 'Disk' } },
        { name: 'cd2', hostDisk: { path: join(base, 'cd2.iso'), type: 'Disk' } },
        { name: 'vdb', hostDisk: { path: join(base, 'vdb.img'), type: 'Disk' } },
      ],
    });
    await runPaused(t, argv, runDir, async (qmp) => {
      const blocks = (await qmp.cmd('query-block')) as Array<{ qdev: string; inserted?: { ro: boolean } }>;
      const byDev = new Map(blocks.map((b) => [b.qdev, b]));
      for (const id of ['ua-vda', 'ua-sda', 'ua-sdb', 'ua-cd1', 'ua-cd2', 'ua-vdb']) {
        const b = [...byDev.entries()].find(([k]) => k === id || k.startsWith(`/machine/peripheral/${id}/`) || k.includes(`/${id}/`));
        t.ok(b, `${id} attached`);
      }
      const ro = blocks.filter((b) => b.inserted?.ro === true).length;
      t.equal(ro, 4, 'sdb, cd1, cd2, vdb are read-only');
    });
  });

  t.test('EFI firmware', { skip: caps.ovmf === undefined ? 'no OVMF firmware installed (apt-get install ovmf)' : false }, async (t) => {
    const { argv, runDir } = prepare({
      domain: { memory: { guest: '128Mi' }, firmware: { bootloader: { efi: {} } } },
    });
    await runPaused(t, argv, runDir, async (qmp) => {
      const nodes = (await qmp.cmd('query-named-block-nodes')) as Array<{ 'node-name': string }>;
      t.ok(nodes.some((x) => x['node-name'] === 'pflash0'));
      t.ok(nodes.some((x) => x['node-name'] === 'pflash1'));
    });
  });

  t.test('cloud-init, emptyDisk, graphics, no serial, pc machine', async (t) => {
    const { argv, runDir } = prepare({
      domain: {
        machine: { type: 'pc' },
        memory: { guest: '64Mi' },
        devices: {
          autoattachSerialConsole: false,
          autoattachGraphicsDevice: true,
          disks: [{ name: 'scratch' }, { name: 'ci', cdrom: { bus: 'sata' } }],
        },
      },
      volumes: [
        { name: 'scratch', emptyDisk: { capacity: '8Mi' } },
        { name: 'ci', cloudInitNoCloud: { userData: '#cloud-config\n' } },
      ],
    });
    await runPaused(t, argv, runDir, async () => {
      t.ok(existsSync(join(runDir, 'vnc.sock')), 'VNC listens on a unix socket');
    });
  });

  t.test('kernel boot from a path with a comma', async (t) => {
    const kdir = join(base, 'k,dir');
    mkdirSync(kdir);
    const kernel = join(kdir, 'vmlinuz');
    writeFileSync(kernel, Buffer.alloc(1 << 16)); // QEMU loads it only at reset; any file will do while paused
    const { argv, runDir } = prepare({
      domain: {
        memory: { guest: '64Mi' },
        firmware: { kernelBoot: { kernelArgs: 'console=ttyS0,115200 quiet panic=-1', hostPath: { kernelPath: kernel } } },
      },
    });
    await runPaused(t, argv, runDir);
  });

  t.test('runDir with a comma', async (t) => {
    const spec = { domain: { memory: { guest: '64Mi' } } };
    const { vmi } = prepare(spec);
    const runDir = join(base, 'run,dir');
    mkdirSync(runDir);
    const argv = buildArgv(vmi, { qemuBinary: QEMU, runDir, accel, sandbox: caps.seccomp });
    await runPaused(t, argv, runDir, async () => {
      t.ok(existsSync(join(runDir, 'serial.sock')));
      t.ok(existsSync(join(runDir, 'qga.sock')));
    });
  });
}
