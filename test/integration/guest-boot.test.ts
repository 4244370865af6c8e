// Boots the test guest under QEMU and checks what other tests rely on: ready marker, serial shell, guest agent, ACPI power-off, DHCP, httpd, eatmem.
import net from 'node:net';
import t from 'tap';
import { READY_MARKER, bootTestGuest, guestImage, guestSkipReason, qgaCommand, qmpCommand } from '../support/guest.js';

const skip = guestSkipReason();
const READY_WITHIN_MS = 60_000;

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

async function httpGet(port: number, timeoutMs: number): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const res = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(5000) });
      return await res.text();
    } catch (e) {
      last = e;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  throw new Error(`no HTTP answer on port ${port}: ${String(last)}`);
}

t.test('guest image', { skip: skip ?? false }, async (t) => {
  const img = await guestImage();
  t.match(img.kernelVersion, /^\d+\.\d+/, 'kernel version recorded');
  t.ok(img.initrd.endsWith('initrd.img'), 'initrd path');
  t.ok(img.kernelPvh, 'a PVH vmlinux was unpacked (fast TCG boot)');
});

t.test('boots under QEMU: ready marker, serial shell, guest agent, ACPI power button', { skip: skip ?? false }, async (t) => {
  const g = await bootTestGuest({ teardown: (fn) => t.teardown(fn) });
  const ms = await g.waitReady(READY_WITHIN_MS);
  t.pass(`ready marker after ${(ms / 1000).toFixed(2)} s`);
  t.comment(`boot time (QEMU spawn -> ${READY_MARKER}): ${(ms / 1000).toFixed(2)} s, argv: ${g.argv.join(' ')}`);
  t.match(g.serialOutput(), new RegExp(`(^|\\n)${READY_MARKER}\\r?\\n`), 'the marker is a line of its own');

  g.writeSerial('echo vmlet-$((6*7))\n');
  await g.waitForSerial('vmlet-42', 20_000);
  t.pass('the serial shell evaluates typed commands');

  const ga = await g.shell('ls /dev/virtio-ports/ && pidof qemu-ga');
  t.equal(ga.status, 0, 'guest-agent port exists and qemu-ga runs');
  t.match(ga.output, /org\.qemu\.guest_agent\.0/);

  if (!g.paths.qga || !g.paths.qmp) throw new Error('sockets missing');
  t.same(await qgaCommand(g.paths.qga, 'guest-ping'), { return: {} }, 'guest-ping over the agent socket');
  const info = await qgaCommand(g.paths.qga, 'guest-info');
  t.type((info['return'] as { version?: unknown } | undefined)?.version, 'string', 'guest-info answers with a version');

  t.same(await qmpCommand(g.paths.qmp, 'system_powerdown'), { return: {} }, 'QMP system_powerdown accepted');
  const exit = await g.waitForExit(30_000);
  t.equal(exit.code, 0, 'QEMU exits by itself after the ACPI power button');
  t.match(g.serialOutput(), /vmlet-guest: poweroff/, 'through the orderly shutdown path');
});

t.test('virtio-net on user networking: DHCP lease, httpd, eatmem, guest-shutdown', { skip: skip ?? false }, async (t) => {
  const port = await freePort();
  const g = await bootTestGuest({
    memoryMiB: 192,
    net: { hostForwards: [{ hostPort: port, guestPort: 80 }] },
    teardown: (fn) => t.teardown(fn),
  });
  const ms = await g.waitReady(READY_WITHIN_MS);
  t.comment(`boot time with a NIC and DHCP: ${(ms / 1000).toFixed(2)} s`);
  t.match(g.serialOutput(), /vmlet-guest: eth0 10\.0\.2\.15\/24 router 10\.0\.2\.2 \(dhcp\)/, 'lease reported on the console before the marker');

  const addr = await g.shell('ip -4 addr show dev eth0; ip route; cat /etc/resolv.conf');
  t.equal(addr.status, 0, 'ip/cat ran in the serial shell');
  t.match(addr.output, /inet 10\.0\.2\.15\/24/, 'udhcpc configured eth0');
  t.match(addr.output, /default via 10\.0\.2\.2 dev eth0/, 'default route');
  t.match(addr.output, /nameserver 10\.0\.2\.3/, 'DNS from DHCP');

  t.match(await httpGet(port, 20_000), /VMLET-GUEST-HTTP-OK/, 'busybox httpd answers on port 80 through hostfwd');

  g.writeSerial('eatmem 32 2\n');
  await g.waitForSerial('eatmem: holding 32 MiB', 30_000);
  await g.waitForSerial('eatmem: released', 30_000);
  t.pass('eatmem allocates, holds and releases memory');

  if (!g.paths.qga) throw new Error('no agent socket');
  t.same(await qgaCommand(g.paths.qga, 'guest-shutdown'), {}, 'guest-shutdown sent');
  const exit = await g.waitForExit(30_000);
  t.equal(exit.code, 0, 'QEMU exits after the guest agent shut the guest down');
});
