import { EventEmitter } from 'node:events';
import pino from 'pino';
import t from 'tap';
import { validateVMI, type VirtualMachineInstance, type VirtualMachineInstanceStatus } from '../../src/api/index.js';
import { VmletError } from '../../src/errors.js';
import { waitingForImages } from '../../src/daemon/image-wait.js';
import { volumeStatuses } from '../../src/daemon/volume-status.js';
import type { PreparedLaunch } from '../../src/daemon/supervisor-core.js';

const vmi = validateVMI({
  apiVersion: 'vmlet.io/v1alpha1',
  kind: 'VirtualMachineInstance',
  metadata: { name: 'w', namespace: 'default', uid: 'u1' },
  spec: {
    domain: {
      memory: { guest: '64Mi' },
      devices: { disks: [{ name: 'root' }, { name: 'data', disk: { bus: 'scsi' } }, { name: 'more' }, { name: 'iso', cdrom: {} }] },
    },
    volumes: [
      { name: 'root', containerDisk: { image: 'debian:12' } },
      { name: 'data', hostDisk: { path: '/srv/d.img', type: 'Disk' } },
      { name: 'more', emptyDisk: { capacity: '1Mi' } },
      { name: 'iso', hostDisk: { path: '/srv/x.iso', type: 'Disk' } },
    ],
  },
});

const PREPARED: PreparedLaunch = { argv: ['qemu'], fds: [], accel: 'tcg', softwareEmulation: true };

function harness(): {
  changes: EventEmitter;
  status: VirtualMachineInstanceStatus;
  opts: Parameters<typeof waitingForImages>[1];
} {
  const changes = new EventEmitter();
  const h = {
    changes,
    status: {} as VirtualMachineInstanceStatus,
    opts: {
      onImagesChanged: (fn: () => void) => {
        changes.on('change', fn);
        return () => changes.off('change', fn);
      },
      writeStatus: async (mutate: (s: VirtualMachineInstanceStatus) => VirtualMachineInstanceStatus) => {
        h.status = mutate(h.status);
      },
      logger: pino({ level: 'silent' }),
      now: () => '2026-12-01T00:00:00Z',
    },
  };
  return h;
}

t.test('a missing image waits with a condition, and prepares again after a change of the store', async (t) => {
  const h = harness();
  let calls = 0;
  let available = false;
  const prepare = waitingForImages(async () => {
    calls++;
    if (!available) throw new VmletError('IMAGE_NOT_FOUND', 'no image debian:12');
    return PREPARED;
  }, h.opts);
  const result = prepare(vmi, '/run/x', {});
  await new Promise((r) => setImmediate(r));
  t.equal(calls, 1);
  t.match(h.status.conditions, [{ type: 'ImageAvailable', status: 'False', reason: 'ImageNotFound', message: 'no image debian:12' }]);
  h.changes.emit('change');
  await new Promise((r) => setImmediate(r));
  t.equal(calls, 2, 'tried again after the store changed');
  t.equal(h.changes.listenerCount('change'), 1, 'one subscription at a time');
  available = true;
  h.changes.emit('change');
  t.equal(await result, PREPARED);
  t.equal(
    h.status.conditions?.some((c) => c.type === 'ImageAvailable'),
    false,
    'the condition is removed once prepared',
  );
  t.equal(h.changes.listenerCount('change'), 0, 'no subscription left');
});

t.test('other errors pass through at once; an abort ends the wait with the last error', async (t) => {
  const h = harness();
  const failing = waitingForImages(async () => {
    throw new VmletError('PREPARE_FAILED', 'boom');
  }, h.opts);
  await t.rejects(failing(vmi, '/run/x', {}), { code: 'PREPARE_FAILED' });
  t.same(h.status, {}, 'no condition for other errors');

  const stop = new AbortController();
  const waiting = waitingForImages(async () => {
    throw new VmletError('IMAGE_NOT_FOUND', 'gone');
  }, h.opts);
  const p = waiting(vmi, '/run/x', { signal: stop.signal });
  await new Promise((r) => setImmediate(r));
  stop.abort();
  await t.rejects(p, { code: 'IMAGE_NOT_FOUND' });
  t.equal(h.changes.listenerCount('change'), 0);
});

t.test('status.volumeStatus: targets as libvirt names them, format, size and image', async (t) => {
  const v = vmi as VirtualMachineInstance;
  const digest = `sha256:${'c'.repeat(64)}`;
  const out = volumeStatuses(v, {
    root: {
      file: { path: '/run/x/overlay-root.qcow2' },
      format: 'qcow2',
      readOnly: false,
      backing: { file: { fd: 3 }, format: 'raw' },
      imageDigest: digest,
      virtualSize: 100,
    },
    data: { file: { path: '/srv/d.img' }, format: 'qcow2', readOnly: false, virtualSize: 7 },
    more: { file: { path: '/run/x/disk-more.img' }, format: 'raw', readOnly: false, virtualSize: 1048576 },
    iso: { file: { path: '/srv/x.iso' }, format: 'raw', readOnly: true },
  });
  t.same(out, [
    { name: 'root', target: 'vda', format: 'raw', size: 100, containerDiskVolume: { image: 'debian:12', digest } },
    { name: 'data', target: 'sda', format: 'qcow2', size: 7 },
    { name: 'more', target: 'vdb', format: 'raw', size: 1048576 },
    { name: 'iso', target: 'sdb', format: 'raw' },
  ]);
});
