// The guest-agent client against the real qemu-ga in the booted test guest, with QMP watching the shutdown.
import t from 'tap';
import { GuestAgentClient } from '../../src/qmp/guest-agent.js';
import { QmpClient } from '../../src/qmp/client.js';
import { isQmpError } from '../../src/qmp/errors.js';
import { bootTestGuest, guestSkipReason } from '../support/guest.js';

const skip = guestSkipReason();

t.test('guest agent in the test guest', { skip: skip ?? false }, async (t) => {
  const guest = await bootTestGuest({ net: true, teardown: (fn) => t.teardown(fn) });
  await guest.waitReady(60_000);
  const qmp = new QmpClient({ path: guest.paths.qmp! });
  await qmp.connect();
  t.teardown(() => qmp.close());
  const agent = new GuestAgentClient({ path: guest.paths.qga!, syncTimeoutMs: 5_000 });
  t.teardown(() => agent.close());

  // qemu-ga starts right after the virtio ports appear; give it a few tries.
  let up = false;
  for (let i = 0; i < 20 && !up; i++) {
    try {
      await agent.ping({ timeoutMs: 3_000 });
      up = true;
    } catch {
      await new Promise((r) => setTimeout(r, 500));
    }
  }
  t.ok(up, 'guest-ping answers');

  const info = await agent.info();
  t.match(info.version, /^\d+\.\d+/, 'guest-info reports the agent version');
  t.ok(
    info.supported_commands.some((c) => c.name === 'guest-shutdown' && c.enabled),
    'guest-shutdown is supported',
  );

  const os = await agent.osInfo();
  t.match(os['kernel-release'] ?? '', /^\d+\.\d+/, 'OS info has the kernel release');

  const host = await agent.hostName();
  t.equal(host, 'vmlet-guest', 'host name');

  // DHCP on eth0 runs in the background; wait until the address shows.
  let addrs: string[] = [];
  for (let i = 0; i < 20; i++) {
    const ifs = await agent.networkInterfaces();
    addrs = ifs.flatMap((i) => (i['ip-addresses'] ?? []).map((a) => `${i.name}:${a['ip-address']}`));
    if (addrs.some((a) => a.startsWith('eth0:10.0.2.'))) break;
    await new Promise((r) => setTimeout(r, 500));
  }
  t.ok(addrs.includes('lo:127.0.0.1'), 'loopback listed');
  t.ok(
    addrs.some((a) => a.startsWith('eth0:10.0.2.')),
    `eth0 has its DHCP address (${addrs.join(' ')})`,
  );

  const shutdown = new Promise<{ guest: boolean; reason: string }>((resolve) => qmp.on('SHUTDOWN', (d) => resolve(d)));
  await agent.shutdown('powerdown');
  const ev = await Promise.race([shutdown, new Promise<never>((_, rej) => setTimeout(() => rej(new Error('no SHUTDOWN within 30 s')), 30_000))]);
  t.equal(ev.reason, 'guest-shutdown', 'QEMU reports a guest-initiated shutdown');
  t.equal(ev.guest, true);
  const exit = await guest.waitForExit(15_000);
  t.equal(exit.code, 0, 'QEMU exits cleanly');
});

t.test('a guest without an agent gives a clean timeout', { skip: skip ?? false }, async (t) => {
  // The port exists but nothing in the guest listens: only sync can tell.
  const guest = await bootTestGuest({ teardown: (fn) => t.teardown(fn) });
  await guest.waitReady(60_000);
  // qemu-ga may still be starting: wait for it, then stop it.
  // Under load qemu-ga can take seconds to start and to die: wait for each, bounded.
  const r = await guest.shell(
    'i=0; while [ $i -lt 50 ] && ! pidof qemu-ga >/dev/null; do usleep 200000; i=$((i+1)); done; killall -9 qemu-ga; i=0; while [ $i -lt 30 ] && pidof qemu-ga >/dev/null; do usleep 100000; i=$((i+1)); done; pidof qemu-ga || echo agent-gone',
    30_000,
  );
  t.match(r.output, /agent-gone/, 'qemu-ga is stopped in the guest');
  const agent = new GuestAgentClient({ path: guest.paths.qga!, syncTimeoutMs: 1_000 });
  t.teardown(() => agent.close());
  const t0 = Date.now();
  const err = await agent.ping({ timeoutMs: 1_000 }).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(isQmpError(err) && err.code === 'QGA_TIMEOUT', `QGA_TIMEOUT (${String(err)})`);
  t.ok(Date.now() - t0 < 5_000, 'fails within the sync timeout, no hang');
});
