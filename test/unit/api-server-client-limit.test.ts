// limits.maxConnectionsPerClient on the API server: the uid's connection past the limit gets 429 API_TOO_MANY_CONNECTIONS and is closed, the first ones keep working, and a closed one frees its place.
import type net from 'node:net';
import t from 'tap';
import { ClientConnections } from '../../src/daemon/api-client-limit.js';
import { startFakeServer } from '../support/fake-backend.js';
import { connectRaw } from '../support/raw-connection.js';

const skip = process.getuid?.() === 0 ? false : 'needs root: the API server lets only root and its socket group in (SO_PEERCRED)';

t.test('the counter', async (t) => {
  const c = new ClientConnections(2);
  t.ok(c.acquire(1000) && c.acquire(1000), 'two for uid 1000');
  t.notOk(c.acquire(1000), 'not a third');
  t.equal(c.count(1000), 2, 'a refusal counts nothing');
  t.ok(c.acquire(1001), 'another uid has its own');
  c.release(1000);
  t.ok(c.acquire(1000), 'a closed one frees its place');
  const none = new ClientConnections(0);
  for (let i = 0; i < 1000; i++) none.acquire(0);
  t.ok(none.acquire(0), '0 = no limit');
});

function get(c: { sock: net.Socket; got: () => string }, path: string): Promise<string> {
  const before = c.got().length;
  c.sock.write(`GET ${path} HTTP/1.1\r\nHost: x\r\n\r\n`);
  return new Promise((resolve, reject) => {
    const end = Date.now() + 5_000;
    const poll = (): void => {
      const t = c.got().slice(before);
      // a whole answer: chunked (ends with the last chunk) or with a Content-Length body
      const sep = t.indexOf('\r\n\r\n');
      const len = /Content-Length: (\d+)\r\n/.exec(t);
      if (sep >= 0 && (t.endsWith('0\r\n\r\n') || (len && t.length >= sep + 4 + Number(len[1])))) return resolve(t);
      if (Date.now() > end) return reject(new Error(`no answer to GET ${path}: ${JSON.stringify(t)}`));
      setTimeout(poll, 10);
    };
    poll();
  });
}

t.test('the connection past the limit is answered 429 and closed; the others work', { skip }, async (t) => {
  const N = 3;
  const s = await startFakeServer({ clientConnections: new ClientConnections(N) });
  t.teardown(s.close);
  const open = await Promise.all(Array.from({ length: N }, () => connectRaw(s.socketPath)));
  t.teardown(() => open.forEach((c) => c.sock.destroy()));
  // The server counts a connection when it accepts it: one request on each makes sure all N were.
  for (const c of open) t.match(await get(c, '/healthz'), /^HTTP\/1\.1 200 /, 'one of the first N answers');
  const extra = await connectRaw(s.socketPath);
  await extra.closed;
  t.match(extra.got(), /^HTTP\/1\.1 429 Too Many Requests\r\n/, 'N+1: 429');
  t.match(extra.got(), /Retry-After: 1\r\n/);
  t.match(extra.got(), /"reason":"API_TOO_MANY_CONNECTIONS"/);
  t.match(extra.got(), new RegExp(`uid 0 already holds ${N} connections`), 'the message names the uid and the limit');
  for (const c of open) t.match(await get(c, '/version'), /^HTTP\/1\.1 200 /, 'the first N still work');
  open[0]!.sock.destroy();
  await open[0]!.closed;
  // The server sees the close a moment later.
  let again: Awaited<ReturnType<typeof connectRaw>> | undefined;
  for (let i = 0; i < 50; i++) {
    const c = await connectRaw(s.socketPath);
    const r = await get(c, '/healthz').catch(() => '');
    if (r.startsWith('HTTP/1.1 200')) {
      again = c;
      break;
    }
    c.sock.destroy();
    await new Promise((r2) => setTimeout(r2, 20));
  }
  t.ok(again, 'after one closed, a new connection is served');
  again?.sock.destroy();
  t.same(
    s.backend.calls.filter((x) => x.op !== 'list'),
    [],
    'the refused connection reached nothing',
  );
});
