// Which finalizers the controller releases from a deleted VMI with no launcher pod left: its own always, the node daemon's only when no daemon will.
import t from 'tap';
import { NODE_FINALIZER } from '../../src/controller/cluster-names.js';
import { finalizersToRelease } from '../../src/controller/launcher-controller.js';
import { VMI_FINALIZER } from '../../src/controller/vm-controller.js';

const nodes = new Set(['n1']);
const exists = (n: string): boolean => nodes.has(n);

t.test('the node daemon keeps its finalizer while its Node exists', async (t) => {
  t.same(finalizersToRelease([VMI_FINALIZER, NODE_FINALIZER], 'n1', exists), [VMI_FINALIZER]);
  t.same(finalizersToRelease([NODE_FINALIZER], 'n1', exists), [], 'nothing for the controller once its own is gone');
});

t.test("the controller releases the node's finalizer when no daemon ever will", async (t) => {
  t.same(finalizersToRelease([VMI_FINALIZER, NODE_FINALIZER], undefined, exists), [VMI_FINALIZER, NODE_FINALIZER], 'never placed (no status.nodeName)');
  t.same(finalizersToRelease([NODE_FINALIZER], 'gone', exists), [NODE_FINALIZER], 'its Node was deleted');
});

t.test("others' finalizers are never named", async (t) => {
  t.same(finalizersToRelease(['example.com/backup'], 'n1', exists), []);
  t.same(finalizersToRelease(['example.com/backup', VMI_FINALIZER], 'gone', exists), [VMI_FINALIZER]);
});
