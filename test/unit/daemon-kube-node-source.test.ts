import t from 'tap';
import { KubeNodeSource } from '../../src/daemon/kube-node-source.js';
import { VmletError } from '../../src/errors.js';
import type { KubeSource } from '../../src/source/kube-source.js';

const logger = { warn: () => undefined, info: () => undefined };

/** A KubeSource whose status writes do what `write` says. */
function sourceWith(write: () => Promise<unknown>): KubeSource {
  return { updateStatus: write } as unknown as KubeSource;
}

t.test('a status write that fails reaches its caller, and nothing else (no unhandled rejection)', async (t) => {
  const unhandled: unknown[] = [];
  const onUnhandled = (e: unknown): void => void unhandled.push(e);
  process.on('unhandledRejection', onUnhandled);
  t.teardown(() => void process.off('unhandledRejection', onUnhandled));
  const node = new KubeNodeSource({
    source: sourceWith(async () => {
      throw new VmletError('STORE_NOT_FOUND', 'the VMI is gone');
    }),
    node: 'n',
    labelSelector: 'x=y',
    logger,
  });
  await t.rejects(
    node.updateStatus('VirtualMachineInstance', 'ns', 'gone', (s) => s),
    { code: 'STORE_NOT_FOUND' },
  );
  await t.rejects(
    node.updateStatus('VirtualMachineInstance', 'ns', 'gone', (s) => s),
    { code: 'STORE_NOT_FOUND' },
    'the next write of the same VMI runs too',
  );
  await new Promise((r) => setTimeout(r, 20));
  t.same(unhandled, [], 'no unhandled rejection');
});

t.test('writes of one VMI go out in order; the caller is held at most holdMs while the API server is away', async (t) => {
  const order: string[] = [];
  let away = true;
  const node = new KubeNodeSource({
    source: sourceWith(async () => {
      if (away) throw new VmletError('KUBE_API_UNAVAILABLE', 'away');
      order.push('written');
      return { metadata: { name: 'a' } };
    }),
    node: 'n',
    labelSelector: 'x=y',
    logger,
    holdMs: 50,
  });
  const t0 = Date.now();
  await t.rejects(
    node.updateStatus('VirtualMachineInstance', 'ns', 'a', (s) => s),
    { code: 'KUBE_API_UNAVAILABLE' },
    'not cached: the caller hears why',
  );
  t.ok(Date.now() - t0 < 1000, 'held for holdMs, not for the outage');
  away = false;
  await new Promise((r) => setTimeout(r, 600));
  t.same(order, ['written'], 'the write went out once the server was back');
});
