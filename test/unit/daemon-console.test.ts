// Tests the serial console's memory of recent output (one ring buffer, allocated at the first byte) and the console against a fake chardev on a real unix socket.
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { ByteRing, SerialConsole } from '../../src/daemon/console.js';

const bytes = (s: string): Buffer => Buffer.from(s, 'latin1');

t.test('ByteRing allocates nothing until the first byte, then only what it holds (doubling)', async (t) => {
  const r = new ByteRing(64 * 1024);
  t.equal(r.allocated, 0);
  t.equal(r.contents().length, 0);
  r.push(Buffer.alloc(0));
  t.equal(r.allocated, 0, 'an empty chunk allocates nothing');
  r.push(bytes('a'));
  t.equal(r.allocated, 256);
  for (let i = 0; i < 300; i++) r.push(bytes('b'));
  t.equal(r.allocated, 512, 'grown by doubling');
  t.equal(r.length, 301);
  t.equal(r.contents().toString('latin1'), `a${'b'.repeat(300)}`);
});

t.test('ByteRing keeps exactly the last capacity bytes, oldest first, however the bytes arrive', async (t) => {
  const cap = 1000;
  const r = new ByteRing(cap);
  let all = '';
  // Chunks of every size, as a serial port and a busy guest deliver them; the ring wraps many times.
  for (let i = 0; i < 2000; i++) {
    const s = String.fromCharCode(65 + (i % 26)).repeat(1 + ((i * 7) % 37));
    r.push(bytes(s));
    all += s;
    if (i % 97 === 0) t.equal(r.contents().toString('latin1'), all.slice(-cap), `after chunk ${i}`);
  }
  t.equal(r.allocated, cap, 'never more than the capacity');
  t.equal(r.length, cap);
  t.equal(r.contents().toString('latin1'), all.slice(-cap));
  r.push(bytes('x'.repeat(5000)));
  t.equal(r.contents().toString('latin1'), 'x'.repeat(cap), 'a chunk larger than the ring leaves its tail');
  const c = r.contents();
  c.fill(0);
  t.equal(r.contents().toString('latin1'), 'x'.repeat(cap), 'contents() is a copy');
  const off = new ByteRing(0);
  off.push(bytes('abc'));
  t.equal(off.contents().length, 0, 'capacity 0 keeps nothing');
});

type Tap = Parameters<Parameters<typeof t.test>[0]>[0];

async function fakeChardev(t: Tap): Promise<{ dir: string; sockPath: string; peer: Promise<net.Socket> }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-console-'));
  const sockPath = path.join(dir, 'serial.sock');
  let resolvePeer!: (s: net.Socket) => void;
  const peer = new Promise<net.Socket>((r) => (resolvePeer = r));
  const server = net.createServer((s) => resolvePeer(s));
  await new Promise<void>((r) => server.listen(sockPath, r));
  t.teardown(async () => {
    (await peer.catch(() => undefined))?.destroy();
    await new Promise((r) => server.close(r));
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { dir, sockPath, peer };
}

t.test('the console keeps the last ringBytes of byte-at-a-time output, replays them to a reader and logs everything', async (t) => {
  const { dir, sockPath, peer } = await fakeChardev(t);
  const logFile = path.join(dir, 'console.log');
  const c = new SerialConsole({ socketPath: sockPath, logFile, ringBytes: 64 });
  t.teardown(() => c.close());
  await c.connect(2000);
  const qemu = await peer;
  const text = Array.from({ length: 40 }, (_, i) => `line ${i}\n`).join('');
  // Like QEMU's serial port: one byte per write.
  for (const ch of text) qemu.write(ch);
  await c.waitFor('line 39\n', 2000);
  t.equal(c.recent().toString(), text.slice(-64), 'the last 64 bytes, whole');
  const att = c.attach({ write: false });
  const it = att.output[Symbol.asyncIterator]();
  const first = await it.next();
  t.equal((first.value as Buffer).toString(), text.slice(-64), 'a new reader gets the recent output first');
  qemu.write('more\n');
  const next = await it.next();
  t.equal((next.value as Buffer).toString(), 'more\n', 'then what follows');
  att.close();
  c.close();
  await new Promise((r) => setTimeout(r, 50));
  t.equal(fs.readFileSync(logFile, 'utf8'), `${text}more\n`, 'the log has all of it');
});

t.test('a console without output holds no ring buffer', async (t) => {
  const { dir, sockPath, peer } = await fakeChardev(t);
  const c = new SerialConsole({ socketPath: sockPath, logFile: path.join(dir, 'console.log') });
  t.teardown(() => c.close());
  await c.connect(2000);
  await peer;
  t.equal(c.recent().length, 0);
  t.equal((c as unknown as { ring: ByteRing }).ring.allocated, 0, 'nothing allocated for a paused VM that printed nothing');
});
