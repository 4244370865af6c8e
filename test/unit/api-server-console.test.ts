import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { ApiClient, paths } from '../../src/cli/client.js';
import { startFakeServer } from '../support/fake-backend.js';

const consolePath = (name: string, write: boolean): string =>
  `${paths.subresource('virtualmachineinstances', 'default', name, 'console')}${write ? '?write=true' : ''}`;

async function until(cond: () => boolean, what: string, ms = 2000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

t.test('console upgrade: replay, round trip, writer lock, detach', async (t) => {
  const s = await startFakeServer({ headersTimeoutMs: 200, requestTimeoutMs: 300, idleTimeoutMs: 300 });
  t.teardown(s.close);
  s.backend.seed('VirtualMachineInstance', 'default', { metadata: { name: 'a' } });
  const c = new ApiClient({ socketPath: s.socketPath });

  const w = await c.upgrade(consolePath('a', true), 'vmlet-console');
  t.equal(w.headers.upgrade, 'vmlet-console');
  t.equal(w.headers['vmlet-console-writable'], 'true');
  let out = w.head.toString('utf8');
  w.socket.on('data', (d: Buffer) => (out += d.toString('utf8')));
  await until(() => out.includes('[ring] boot log'), 'replay');
  w.socket.write('hello\r');
  await until(() => out.includes('HELLO'), 'echo');
  t.same(Buffer.concat(s.backend.consoleInput).toString(), 'hello\r');

  // A second writer is refused while the first holds the lock; a reader is fine and sees live output.
  await t.rejects(c.upgrade(consolePath('a', true), 'vmlet-console'), { code: 'CONSOLE_BUSY', httpStatus: 409 });
  const r = await c.upgrade(consolePath('a', false), 'vmlet-console');
  t.equal(r.headers['vmlet-console-writable'], 'false');
  let rout = r.head.toString('utf8');
  r.socket.on('data', (d: Buffer) => (rout += d.toString('utf8')));
  r.socket.write('ignored');
  s.backend.consoleOutput('login: ');
  await until(() => rout.includes('login: ') && out.includes('login: '), 'live output to both');
  t.notOk(Buffer.concat(s.backend.consoleInput).toString().includes('ignored'), 'read-only input dropped');

  // Longer than every server timeout: the upgraded connection stays.
  await sleep(800);
  t.notOk(w.socket.destroyed, 'console survives the timeouts');

  // The writer detaches; the lock is free again.
  const closed = new Promise((res) => w.socket.on('close', res));
  w.socket.end();
  await closed;
  await until(() => s.backend.consoleReaders === 1, 'attachment closed');
  const w2 = await c.upgrade(consolePath('a', true), 'vmlet-console');
  t.equal(w2.headers['vmlet-console-writable'], 'true');

  // The VM going away ends every console connection.
  const ends = [w2.socket, r.socket].map((sock) => new Promise((res) => sock.on('close', res)));
  s.backend.consoleHangup();
  await Promise.all(ends);
  t.pass('hangup closes the connections');
});

t.test('console refusals are Status responses', async (t) => {
  const s = await startFakeServer();
  t.teardown(s.close);
  const c = new ApiClient({ socketPath: s.socketPath });
  await t.rejects(c.upgrade(consolePath('missing', true), 'vmlet-console'), {
    code: 'NOT_FOUND',
    httpStatus: 404,
    message: 'virtualmachineinstances "missing" not found',
  });
  await t.rejects(c.upgrade(consolePath('..%2Fx', true), 'vmlet-console'), { code: 'INVALID_PATH', httpStatus: 400 });
  await t.rejects(c.upgrade(paths.object('virtualmachineinstances', 'default', 'a'), 'vmlet-console'), { code: 'BAD_REQUEST' });
  s.backend.seed('VirtualMachineInstance', 'default', { metadata: { name: 'a' } });
  await t.rejects(c.upgrade(consolePath('a', false), 'websocket'), { code: 'BAD_REQUEST' });
  // Early bytes sent together with the upgrade request reach the console.
  const sock = net.connect(s.socketPath);
  let text = '';
  sock.on('data', (d: Buffer) => (text += d.toString('utf8')));
  sock.write(`GET ${consolePath('a', true)} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: vmlet-console\r\n\r\nearly`);
  await until(() => text.includes('EARLY'), 'early bytes echoed');
  t.match(text, /^HTTP\/1\.1 101 Switching Protocols\r\n/);
  sock.destroy();
  t.equal((await c.request('GET', '/healthz')).status, 200);
});
