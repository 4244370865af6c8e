// Socket access rules: group names resolved from the group file, a peer allowed as root or by its primary or supplementary group, and what a read-only socket serves.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { checkReadOnly, groupId, peerAllowed, processGroups } from '../../src/daemon/api-access.js';
import type { Route } from '../../src/daemon/api-router.js';

t.test('group names', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-grp-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'group');
  fs.writeFileSync(file, 'root:x:0:\nvmlet:x:992:alice,bob\nvmlet-ro:x:993:\n');
  t.equal(groupId('vmlet', file), 992);
  t.equal(groupId('vmlet-ro', file), 993, 'a name that another starts with is told apart');
  t.equal(groupId('1234', file), 1234, 'a number as it is');
  t.throws(() => groupId('nobody-here', file), { code: 'CONFIG_INVALID' });
});

t.test('who may connect', async (t) => {
  const groups = (pid: number): number[] => (pid === 7 ? [100, 992] : []);
  t.ok(peerAllowed({ pid: 1, uid: 0, gid: 0 }, undefined, groups), 'root, with no group configured');
  t.notOk(peerAllowed({ pid: 2, uid: 1000, gid: 992 }, undefined, groups), 'nobody else then');
  t.ok(peerAllowed({ pid: 2, uid: 1000, gid: 992 }, 992, groups), 'primary group');
  t.ok(peerAllowed({ pid: 7, uid: 1000, gid: 1000 }, 992, groups), 'supplementary group');
  t.notOk(peerAllowed({ pid: 8, uid: 1000, gid: 1000 }, 992, groups), 'neither');
  t.ok(
    processGroups(process.pid).every((g) => Number.isInteger(g)),
    "this process's groups read from /proc",
  );
  t.same(processGroups(999999999), [], 'a gone process has none');
});

t.test('what a read-only socket serves', async (t) => {
  const ref = { kind: 'VirtualMachineInstance' as const, namespace: 'default', name: 'a' };
  const reads: Route[] = [
    { type: 'object', ref },
    { type: 'list', kind: 'VirtualMachineInstance', namespace: undefined },
    { type: 'events', namespace: 'default' },
    { type: 'version' },
    { type: 'healthz' },
  ];
  for (const r of reads) t.doesNotThrow(() => checkReadOnly(r, 'GET'), `GET ${r.type}`);
  t.throws(() => checkReadOnly({ type: 'object', ref }, 'DELETE'), { code: 'READ_ONLY_SOCKET' });
  t.throws(() => checkReadOnly({ type: 'list', kind: 'VirtualMachine', namespace: 'default' }, 'POST'), { code: 'READ_ONLY_SOCKET' });
  t.throws(() => checkReadOnly({ type: 'vmiAction', ref, action: 'pause' }, 'PUT'), { code: 'READ_ONLY_SOCKET' });
  t.throws(() => checkReadOnly({ type: 'qmp', ref }, 'POST'), { code: 'READ_ONLY_SOCKET' });
  t.throws(() => checkReadOnly({ type: 'console', ref }, 'GET'), { code: 'READ_ONLY_SOCKET' }, 'not even a console read');
});
