import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { ApiClient } from '../../src/cli/client.js';
import { startFakeServer } from '../support/fake-backend.js';

const VMIS = '/apis/vmlet.io/v1alpha1/namespaces/default/virtualmachineinstances';

/** Writes `chunks` to a raw connection (ignoring write errors) and collects everything until the server closes. */
function raw(socketPath: string, chunks: (string | Buffer)[], delayMs = 0): Promise<{ text: string; ms: number }> {
  return new Promise((resolve) => {
    const start = Date.now();
    const s = net.connect(socketPath);
    const got: Buffer[] = [];
    s.on('data', (d: Buffer) => got.push(d));
    s.on('error', () => undefined);
    s.on('close', () => resolve({ text: Buffer.concat(got).toString('utf8'), ms: Date.now() - start }));
    void (async () => {
      for (const c of chunks) {
        if (s.destroyed) return;
        s.write(c);
        if (delayMs) await sleep(delayMs);
      }
    })();
  });
}

t.test('body limit', async (t) => {
  const s = await startFakeServer({ maxBodyBytes: 1024 * 1024 });
  t.teardown(s.close);
  const c = new ApiClient({ socketPath: s.socketPath });
  const big = Buffer.alloc(2 * 1024 * 1024, 0x20);

  t.test('declared Content-Length over the limit → 413 at once', async (t) => {
    const r = await raw(s.socketPath, [`POST ${VMIS} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${big.length}\r\n\r\n`, big]);
    t.match(r.text, /^HTTP\/1\.1 413 /);
    t.match(r.text, /"reason":"BODY_TOO_LARGE"/);
    t.match(r.text, /"kind":"Status"/);
  });

  t.test('chunked body growing over the limit → 413', async (t) => {
    const head = `POST ${VMIS} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n`;
    const chunk = Buffer.concat([Buffer.from(`${(256 * 1024).toString(16)}\r\n`), Buffer.alloc(256 * 1024, 0x20), Buffer.from('\r\n')]);
    const r = await raw(s.socketPath, [head, ...Array.from({ length: 8 }, () => chunk), '0\r\n\r\n']);
    t.match(r.text, /^HTTP\/1\.1 413 /);
  });

  t.test('via the client, then the server still serves', async (t) => {
    const r = await c.request('POST', VMIS, { body: big, contentType: 'application/json' }).catch((e: Error) => e);
    if (!(r instanceof Error)) t.equal(r.status, 413);
    else t.pass('connection closed while the client was still writing');
    t.equal((await c.request('GET', '/healthz')).status, 200);
    t.same(
      s.backend.calls.filter((x) => x.op === 'create'),
      [],
      'nothing reached the backend',
    );
  });
});

t.test('slow-loris headers are cut off in bounded time', async (t) => {
  const s = await startFakeServer({ headersTimeoutMs: 600, requestTimeoutMs: 1200 });
  t.teardown(s.close);
  const req = `GET ${VMIS} HTTP/1.1\r\nHost: x\r\nX-Slow: ${'a'.repeat(200)}\r\n\r\n`;
  const r = await raw(
    s.socketPath,
    [...req].map((ch) => ch),
    100,
  );
  t.ok(r.ms < 4000, `closed after ${r.ms} ms`);
  t.notMatch(r.text, /^HTTP\/1\.1 200/, 'never answered');
  t.match(r.text, /^(HTTP\/1\.1 408 |$)/, 'a 408 or just a close');
  t.equal((await new ApiClient({ socketPath: s.socketPath }).request('GET', '/healthz')).status, 200);
});

t.test('slow body is cut off by the request timeout', async (t) => {
  const s = await startFakeServer({ headersTimeoutMs: 300, requestTimeoutMs: 800 });
  t.teardown(s.close);
  const head = `POST ${VMIS} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n`;
  const r = await raw(s.socketPath, [head, ...Array.from({ length: 100 }, () => ' ')], 100);
  t.ok(r.ms < 5000, `closed after ${r.ms} ms`);
  t.notMatch(r.text, /^HTTP\/1\.1 201/);
});

t.test('idle connections are closed', async (t) => {
  const s = await startFakeServer({ idleTimeoutMs: 300, headersTimeoutMs: 5000 });
  t.teardown(s.close);
  const r = await raw(s.socketPath, []);
  t.ok(r.ms < 3000, `closed after ${r.ms} ms`);
});

t.test('connection cap', async (t) => {
  const s = await startFakeServer({ maxConnections: 2 });
  t.teardown(s.close);
  const held = [net.connect(s.socketPath), net.connect(s.socketPath)];
  await Promise.all(held.map((h) => new Promise((r) => h.once('connect', r))));
  await sleep(50);
  const third = await raw(s.socketPath, [`GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n`]);
  t.equal(third.text, '', 'third connection dropped');
  for (const h of held) h.destroy();
  await sleep(50);
  t.equal((await new ApiClient({ socketPath: s.socketPath }).request('GET', '/healthz')).status, 200);
});

t.test('watch streams events and outlives the timeouts; client abort fires the backend signal', async (t) => {
  const s = await startFakeServer({ headersTimeoutMs: 200, requestTimeoutMs: 300, idleTimeoutMs: 300, keepAliveTimeoutMs: 200 });
  t.teardown(s.close);
  const c = new ApiClient({ socketPath: s.socketPath });
  s.backend.seed('VirtualMachineInstance', 'default', { metadata: { name: 'a' } });
  const ac = new AbortController();
  const events = await c.watch(VMIS, ac.signal);
  const it = events[Symbol.asyncIterator]();
  t.match((await it.next()).value, { type: 'ADDED', object: { metadata: { name: 'a' } } });
  await sleep(1200); // longer than every timeout
  s.backend.seed('VirtualMachineInstance', 'default', { metadata: { name: 'b' } });
  t.match((await it.next()).value, { type: 'ADDED', object: { metadata: { name: 'b' } } });
  await c.request('DELETE', `${VMIS}/a`);
  t.match((await it.next()).value, { type: 'DELETED', object: { metadata: { name: 'a' } } });
  t.equal(s.backend.watchSignals.length, 1);
  t.notOk(s.backend.watchSignals[0]!.aborted);
  ac.abort();
  const end = await it.next();
  t.ok(end.done, 'stream ends on abort');
  for (let i = 0; i < 50 && !s.backend.watchSignals[0]!.aborted; i++) await sleep(20);
  t.ok(s.backend.watchSignals[0]!.aborted, 'backend signal fired');
});

t.test('watch by name, events watch, and raw NDJSON format', async (t) => {
  const s = await startFakeServer();
  t.teardown(s.close);
  s.backend.seed('VirtualMachineInstance', 'default', { metadata: { name: 'a' } });
  s.backend.seed('VirtualMachineInstance', 'default', { metadata: { name: 'b' } });
  const sock = net.connect(s.socketPath);
  sock.write(`GET ${VMIS}?watch=true&fieldSelector=metadata.name%3Db HTTP/1.1\r\nHost: x\r\n\r\n`);
  let text = '';
  sock.on('data', (d: Buffer) => (text += d.toString('utf8')));
  for (let i = 0; i < 50 && !text.includes('\n{'); i++) await sleep(20);
  t.match(text, /^HTTP\/1\.1 200 /);
  t.match(text, /Content-Type: application\/json/i);
  t.match(text, /Transfer-Encoding: chunked/i);
  t.match(text, /"type":"ADDED","object":\{[^\n]*"name":"b"/);
  t.notMatch(text, /"name":"a"/);
  sock.destroy();

  const c = new ApiClient({ socketPath: s.socketPath });
  const ac = new AbortController();
  const evs = (await c.watch('/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Db', ac.signal))[Symbol.asyncIterator]();
  s.backend.addEvent('default', { kind: 'VirtualMachineInstance', name: 'a' }, 'Other', 'not for b');
  s.backend.addEvent('default', { kind: 'VirtualMachineInstance', name: 'b' }, 'Started', 'for b');
  t.match((await evs.next()).value, { type: 'ADDED', object: { kind: 'Event', reason: 'Started' } });
  ac.abort();
});
