// Chaos: a client floods the console of a guest that never reads its serial port; the daemon passes the backpressure on to the client instead of buffering the flood, and stays bounded and responsive.
import { once } from 'node:events';
import fs from 'node:fs';
import tap from 'tap';
import YAML from 'yaml';
import { ApiClient } from '../../src/cli/client.js';
import { daemonSkipReason, sleep, startTestDaemon, waitFor } from '../support/daemon.js';

const skip = daemonSkipReason();
const MiB = 1024 * 1024;

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? 0);
}

tap.test('console input to a guest that does not read it is throttled, not buffered by the daemon', { skip }, async (t) => {
  const d = await startTestDaemon(t);
  // No kernel and no disk: the firmware idles and never reads the serial port, so QEMU stops taking input.
  const idle = {
    apiVersion: 'vmlet.io/v1alpha1',
    kind: 'VirtualMachineInstance',
    metadata: { name: 'idle', namespace: 'default' },
    spec: { domain: { memory: { guest: '64Mi' }, devices: { autoattachSerialConsole: true } } },
  };
  await d.apply(YAML.stringify(idle));
  await d.waitPhase('idle', 'Running', 60_000);
  const rss0 = rssKiB(d.pid);
  const client = new ApiClient({ socketPath: d.socket });
  const { socket, headers } = await client.upgrade(
    '/apis/subresources.vmlet.io/v1alpha1/namespaces/default/virtualmachineinstances/idle/console?write=true',
    'vmlet-console',
  );
  t.equal(headers['vmlet-console-writable'], 'true', 'attached for writing');
  socket.on('data', () => undefined);
  const chunk = Buffer.alloc(64 * 1024, 0x61);
  const budgetMs = 4_000;
  const cap = 512 * MiB;
  let sent = 0;
  const until = Date.now() + budgetMs;
  while (Date.now() < until && sent < cap) {
    sent += chunk.length;
    if (!socket.write(chunk)) await Promise.race([once(socket, 'drain'), sleep(Math.max(0, until - Date.now()))]);
  }
  const grewKiB = rssKiB(d.pid) - rss0;
  t.comment(`the client got ${(sent / MiB).toFixed(1)} MiB out in ${budgetMs} ms; daemon RSS grew ${grewKiB} KiB`);
  t.ok(sent < 32 * MiB, `the client is held back (${(sent / MiB).toFixed(1)} MiB accepted of a ${cap / MiB} MiB flood)`);
  t.ok(grewKiB < 32 * 1024, `the daemon's RSS stays bounded (+${grewKiB} KiB)`);
  socket.destroy();
  t.equal((await d.cli(['get', 'vmi', 'idle'])).code, 0, 'the daemon answers');
  t.equal((await d.vmi('idle'))?.status?.phase, 'Running', 'the VMI runs on');
  // The held-back client is not read, so its going away is seen by the daemon's poll (every second), not at once.
  const gone = Date.now();
  const second = await waitFor(
    'the writer lock to be free',
    () =>
      client
        .upgrade('/apis/subresources.vmlet.io/v1alpha1/namespaces/default/virtualmachineinstances/idle/console?write=true', 'vmlet-console')
        .catch(() => undefined),
    5_000,
    200,
  );
  t.equal(second.headers['vmlet-console-writable'], 'true', `the writer lock was released with the flooding client (${Date.now() - gone} ms after it went)`);
  second.socket.destroy();
});
