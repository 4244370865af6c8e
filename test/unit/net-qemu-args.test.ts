// The pure -netdev/-device arguments for a NIC on a tap, by fd or by name.
import t from 'tap';
import { qemuNicArgs } from '../../src/net/qemu-args.js';

t.test('tap by fd', async (t) => {
  t.same(qemuNicArgs({ index: 0, mac: '02:00:00:00:00:01', model: 'virtio', tap: { fds: [3] } }), [
    '-netdev',
    'tap,id=net0,fd=3',
    '-device',
    'virtio-net-pci,id=net0-nic,netdev=net0,mac=02:00:00:00:00:01',
  ]);
  t.same(
    qemuNicArgs({ index: 1, mac: '02:00:00:00:00:01', model: 'virtio', tap: { fds: [7, 8], vhostFds: [9, 10] }, vhost: true, romfile: '', bootIndex: 2 }),
    [
      '-netdev',
      'tap,id=net1,fds=7:8,vhostfds=9:10,vhost=on',
      '-device',
      'virtio-net-pci,id=net1-nic,netdev=net1,mac=02:00:00:00:00:01,mq=on,vectors=6,bootindex=2,romfile=',
    ],
  );
});

t.test('tap by name', async (t) => {
  t.same(qemuNicArgs({ index: 0, mac: '02:AA:00:00:00:01', model: 'e1000', tap: { ifname: 'tap0' } }), [
    '-netdev',
    'tap,id=net0,ifname=tap0,script=no,downscript=no',
    '-device',
    'e1000,id=net0-nic,netdev=net0,mac=02:aa:00:00:00:01',
  ]);
  t.same(
    qemuNicArgs({ index: 0, mac: '02:00:00:00:00:01', model: 'virtio', tap: { ifname: 'tap0' }, queues: 2, vhost: true, bus: 'pci,x', romfile: 'a,b' }),
    [
      '-netdev',
      'tap,id=net0,ifname=tap0,script=no,downscript=no,queues=2,vhost=on',
      '-device',
      'virtio-net-pci,id=net0-nic,netdev=net0,mac=02:00:00:00:00:01,mq=on,vectors=6,bus=pci,,x,romfile=a,,b',
    ],
    'commas in values are doubled',
  );
});

t.test('refused', async (t) => {
  const base = { index: 0, mac: '02:00:00:00:00:01', model: 'virtio' as const };
  t.throws(() => qemuNicArgs({ ...base, tap: { fds: [] } }), { code: 'NET_INVALID_FD' });
  t.throws(() => qemuNicArgs({ ...base, tap: { fds: [1] } }), { code: 'NET_INVALID_FD' }, 'stdio fds');
  t.throws(() => qemuNicArgs({ ...base, tap: { fds: [3, 4] }, queues: 1 }), { code: 'NET_INVALID_FD' });
  t.throws(() => qemuNicArgs({ ...base, tap: { fds: [3], vhostFds: [4, 5] } }), { code: 'NET_INVALID_FD' });
  t.throws(() => qemuNicArgs({ ...base, tap: { ifname: 'tap0,script=/x' } }), { code: 'NET_INVALID_NAME' });
  t.throws(() => qemuNicArgs({ ...base, model: 'e1000', tap: { fds: [3, 4] } }), { code: 'NET_INVALID_QUEUES' });
  t.throws(() => qemuNicArgs({ ...base, model: 'rtl8139', vhost: true, tap: { fds: [3] } }), { code: 'NET_INVALID_PLAN' });
  t.throws(() => qemuNicArgs({ ...base, mac: '01:00:00:00:00:01', tap: { fds: [3] } }), { code: 'NET_INVALID_MAC' });
  t.throws(() => qemuNicArgs({ ...base, tap: { ifname: 'tap0' }, bus: 'a\nb' }), { code: 'NET_INVALID_NAME' });
});
