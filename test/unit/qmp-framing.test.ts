// Tests the shared line framing of the QMP and guest-agent clients: splitting, size limit, 0xFF resync, and the bounded event queue.
import t from 'tap';
import { LineSplitter } from '../../src/qmp/framing.js';
import { BoundedQueue } from '../../src/qmp/event-queue.js';

function collect(max = 1024): { s: LineSplitter; lines: string[]; oversize: number[] } {
  const lines: string[] = [];
  const oversize: number[] = [];
  const s = new LineSplitter({ maxLineBytes: max, onLine: (l) => lines.push(l), onOversize: (n) => oversize.push(n) });
  return { s, lines, oversize };
}

t.test('whole lines, several per chunk, blank lines skipped, \\r kept for JSON.parse', async (t) => {
  const { s, lines } = collect();
  s.push(Buffer.from('{"a":1}\r\n\r\n{"b":2}\n  \n{"c"'));
  s.push(Buffer.from(':3}\n'));
  t.same(lines, ['{"a":1}\r', '{"b":2}', '{"c":3}']);
  t.same(
    lines.map((l) => JSON.parse(l) as unknown),
    [{ a: 1 }, { b: 2 }, { c: 3 }],
  );
});

t.test('a line split into single bytes, including a multi-byte UTF-8 character', async (t) => {
  const { s, lines } = collect();
  const text = '{"desc":"caf\u00e9 \u2603"}\n';
  for (const b of Buffer.from(text)) s.push(Buffer.from([b]));
  t.same(lines, ['{"desc":"caf\u00e9 \u2603"}']);
});

t.test('oversize is detected before the newline arrives, once, and stops the splitter', async (t) => {
  const { s, lines, oversize } = collect(100);
  s.push(Buffer.alloc(60, 0x61));
  t.same(oversize, []);
  s.push(Buffer.alloc(60, 0x61));
  t.same(oversize, [120]);
  s.push(Buffer.from('\n{"a":1}\n'));
  t.same(lines, []);
  t.same(oversize, [120], 'reported once');
});

t.test('oversize inside one chunk with its newline', async (t) => {
  const { s, lines, oversize } = collect(10);
  s.push(Buffer.from('{"ok":1}\n{"toolong":12345}\n'));
  t.same(lines, ['{"ok":1}']);
  t.same(oversize, [17]);
});

t.test('skipToSentinel drops bytes up to 0xFF, across chunks, and drops a partial line', async (t) => {
  const { s, lines } = collect();
  s.push(Buffer.from('{"partial'));
  s.skipToSentinel();
  t.equal(s.isSkipping, true);
  s.push(Buffer.from('stale"}\n{"old":1}\n'));
  s.push(Buffer.concat([Buffer.from('junk'), Buffer.from([0xff]), Buffer.from('{"return":5}\n{"next":1}\n')]));
  t.same(lines, ['{"return":5}', '{"next":1}']);
  t.equal(s.isSkipping, false);
});

t.test('skipToSentinel called from inside onLine applies to the rest of the same chunk', async (t) => {
  const lines: string[] = [];
  const s: LineSplitter = new LineSplitter({
    maxLineBytes: 100,
    onLine: (l) => {
      lines.push(l);
      if (l === '{"skip":1}') s.skipToSentinel();
    },
    onOversize: () => {},
  });
  s.push(Buffer.concat([Buffer.from('{"skip":1}\n{"dropped":1}\n'), Buffer.from([0xff]), Buffer.from('{"kept":1}\n')]));
  t.same(lines, ['{"skip":1}', '{"kept":1}']);
});

t.test('BoundedQueue drops the oldest when full and counts it; ends after draining', async (t) => {
  let dropped = 0;
  let returned = false;
  const q = new BoundedQueue<number>(
    3,
    (n) => (dropped += n),
    () => (returned = true),
  );
  for (let i = 0; i < 10; i++) q.push(i);
  t.equal(q.size, 3);
  t.equal(q.dropped, 7);
  t.equal(dropped, 7);
  q.end();
  const got: number[] = [];
  for await (const v of q) got.push(v);
  t.same(got, [7, 8, 9]);
  t.equal(returned, false, 'ending by the producer is not a return()');
});

t.test('BoundedQueue hands items straight to a waiting consumer; break unsubscribes', async (t) => {
  let returned = false;
  const q = new BoundedQueue<string>(
    2,
    () => {},
    () => (returned = true),
  );
  const p = q.next();
  q.push('a');
  t.same(await p, { value: 'a', done: false });
  setTimeout(() => q.push('b'), 5);
  for await (const v of q) {
    t.equal(v, 'b');
    break;
  }
  t.equal(returned, true, 'break called return()');
  q.push('c');
  t.same(await q.next(), { value: undefined, done: true });
});
