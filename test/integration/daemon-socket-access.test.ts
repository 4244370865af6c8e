// Who may use the daemon's sockets, tried as other users: outside the socket group nobody connects (and a widened file mode is caught by SO_PEERCRED); the group may act and is logged by uid; a read-only socket serves a second group reads only.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tap from 'tap';
import { daemonSkipReason, manifestVMI, startTestDaemon } from '../support/daemon.js';

const skip = daemonSkipReason();
const NOBODY = 65534;
const USERS = 100; // group `users`: the main socket's group here
const NOGROUP = 65534; // group `nogroup`: the read-only socket's group here

interface Answer {
  status?: number;
  body?: string;
  error?: string;
}

// A client with nothing but Node's own http module, run as another uid/gid (no supplementary groups).
const CLIENT = `
const http = require('http');
const [sock, method, p] = process.argv.slice(1);
const headers = method === 'GET' && p.endsWith('/console') ? { Connection: 'Upgrade', Upgrade: 'vmlet-console' } : {};
const req = http.request({ socketPath: sock, method, path: p, headers }, (res) => {
  let d = '';
  res.on('data', (c) => (d += c));
  res.on('end', () => console.log(JSON.stringify({ status: res.statusCode, body: d })));
});
req.on('upgrade', (res, s) => { console.log(JSON.stringify({ status: res.statusCode })); s.destroy(); });
req.on('error', (e) => console.log(JSON.stringify({ error: e.code })));
req.end();
`;

function asUser(uid: number, gid: number, sock: string, method: string, urlPath: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, ['-e', CLIENT, sock, method, urlPath], { uid, gid, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    c.stdout.on('data', (b: Buffer) => (out += b.toString()));
    c.stderr.on('data', (b: Buffer) => (err += b.toString()));
    c.on('error', reject);
    c.on('close', () => {
      try {
        resolve(JSON.parse(out.trim().split('\n').at(-1) ?? '') as Answer);
      } catch {
        reject(new Error(`client printed ${JSON.stringify(out)} ${err}`));
      }
    });
  });
}

const VMIS = '/apis/vmlet.io/v1alpha1/namespaces/default/virtualmachineinstances';
const SUB = '/apis/subresources.vmlet.io/v1alpha1/namespaces/default/virtualmachineinstances';

tap.test('socket groups, SO_PEERCRED and the read-only socket', { skip }, async (t) => {
  // The read-only socket in a folder of its own; both folders must be traversable by others.
  const roDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-ro-'));
  t.teardown(() => fs.rmSync(roDir, { recursive: true, force: true }));
  fs.chmodSync(roDir, 0o711);
  const ro = path.join(roDir, 'ro.sock');
  const d = await startTestDaemon(t, { config: { socketGroup: 'users', readOnlySocket: ro, readOnlySocketGroup: 'nogroup' } });
  fs.chmodSync(d.root, 0o711);
  await d.apply(manifestVMI('acc'));
  await d.waitPhase('acc', 'Running', 60_000);

  const st = fs.statSync(d.socket);
  t.equal(st.mode & 0o777, 0o660, 'main socket 0660');
  t.equal(st.gid, USERS, 'owned by the socket group');
  t.equal(fs.statSync(ro).gid, NOGROUP, 'the read-only socket by its own group');

  t.same(await asUser(NOBODY, NOGROUP, d.socket, 'GET', VMIS), { error: 'EACCES' }, 'outside the group: the file mode keeps it out');
  fs.chmodSync(d.socket, 0o666);
  const widened = await asUser(NOBODY, NOGROUP, d.socket, 'GET', VMIS);
  t.equal(widened.status, 403, 'a widened mode is caught at accept');
  t.match(widened.body, /PEER_NOT_ALLOWED/);
  fs.chmodSync(d.socket, 0o660);

  t.equal((await asUser(NOBODY, USERS, d.socket, 'GET', VMIS)).status, 200, 'the group reads');
  t.equal((await asUser(NOBODY, USERS, d.socket, 'PUT', `${SUB}/acc/pause`)).status, 202, 'and acts');
  const logged = fs
    .readFileSync(d.logFile, 'utf8')
    .split('\n')
    .find((l) => l.includes('/acc/pause') && l.includes('"msg":"request"'));
  t.match(logged, new RegExp(`"peer":\\{"pid":\\d+,"uid":${NOBODY},"gid":${USERS}\\}`), 'the change is logged with the caller');

  t.equal((await asUser(NOBODY, NOGROUP, ro, 'GET', VMIS)).status, 200, 'the read-only group lists');
  t.equal((await asUser(NOBODY, NOGROUP, ro, 'GET', `${VMIS}/acc`)).status, 200, 'and gets');
  for (const [method, p] of [
    ['PUT', `${SUB}/acc/unpause`],
    ['DELETE', `${VMIS}/acc`],
    ['POST', `${SUB}/acc/qmp`],
    ['GET', `${SUB}/acc/console`],
  ] as const) {
    const r = await asUser(NOBODY, NOGROUP, ro, method, p);
    t.equal(r.status, 403, `read-only socket: ${method} ${p.split('/').slice(-2).join('/')} refused`);
  }
  t.same(await asUser(NOBODY, USERS, ro, 'GET', VMIS), { error: 'EACCES' }, 'the main group is not in the read-only group');
  const v = await d.vmi('acc');
  t.equal(v?.status?.phase, 'Running', 'the VMI is still there and running');
});
