import t from 'tap';
import type { VmController } from '../../src/controller/vm-controller.js';
import { LocalBackend } from '../../src/daemon/local-backend.js';
import type { NodeReconciler } from '../../src/daemon/node-reconciler.js';
import type { Source } from '../../src/source/source.js';

t.test('a node daemon in cluster mode refuses VM start/stop/restart with what to run instead, touching nothing', async (t) => {
  const touched: string[] = [];
  const store = new Proxy({} as Source, {
    get: (_o, prop) => () => {
      touched.push(String(prop));
      return Promise.resolve(undefined);
    },
  });
  const backend = new LocalBackend({ store, node: {} as NodeReconciler, controller: {} as VmController, vmActions: false });
  for (const action of ['start', 'stop', 'restart'] as const) {
    await t.rejects(backend.vmAction({ kind: 'VirtualMachine', namespace: 'apps', name: 'web' }, action), {
      code: 'API_SERVER_VERB',
      message: new RegExp(`vmlet --kubeconfig FILE -n apps ${action} web`),
    });
  }
  t.same(touched, [], 'no read or write reached the source');
});
