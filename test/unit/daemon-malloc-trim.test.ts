import t from 'tap';
import { MallocTrimmer } from '../../src/daemon/malloc-trim.js';
import { limitMallocArenas, trimMalloc } from '../../src/sys/malloc.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

t.test('one trim after the pokes go quiet, none while idle', async (t) => {
  let trims = 0;
  const m = new MallocTrimmer({ quietMs: 60, trim: () => (trims++, true) });
  t.teardown(() => m.close());
  for (let i = 0; i < 5; i++) {
    m.poke();
    await sleep(20);
  }
  t.equal(trims, 0, 'still busy: every poke pushed the trim back');
  await sleep(120);
  t.equal(trims, 1, 'one trim once quiet');
  await sleep(150);
  t.equal(trims, 1, 'no trim without work');
  m.poke();
  await sleep(120);
  t.equal(m.trims, 2);
});

t.test('close cancels a pending trim', async (t) => {
  let trims = 0;
  const m = new MallocTrimmer({ quietMs: 30, trim: () => (trims++, true) });
  m.poke();
  m.close();
  await sleep(80);
  t.equal(trims, 0);
});

t.test('glibc accepts the arena cap and the trim', async (t) => {
  t.equal(limitMallocArenas(2), true);
  t.type(trimMalloc(), 'boolean');
});
