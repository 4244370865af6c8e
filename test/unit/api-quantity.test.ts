import t from 'tap';
import { formatBytes, parseMilliQuantity, parseQuantity } from '../../src/api/quantity.js';

t.test('binary and decimal suffixes', async (t) => {
  const cases: Array<[string | number, bigint]> = [
    ['0', 0n],
    ['1', 1n],
    [134217728, 134217728n],
    ['128Mi', 128n << 20n],
    ['1Gi', 1n << 30n],
    ['1.5Gi', 3n << 29n],
    ['2Ti', 2n << 40n],
    ['1Ki', 1024n],
    ['1Pi', 1n << 50n],
    ['1Ei', 1n << 60n],
    ['1k', 1000n],
    ['1M', 1_000_000n],
    ['1G', 1_000_000_000n],
    ['1T', 10n ** 12n],
    ['1P', 10n ** 15n],
    ['1E', 10n ** 18n],
    ['1e3', 1000n],
    ['1E3', 1000n],
    ['1.5e3', 1500n],
    ['12e-1', 2n],
    ['+5', 5n],
    ['.5Ki', 512n],
    ['5.', 5n],
    ['0.5', 1n], // rounded up like Quantity.Value()
    ['100m', 1n],
    ['-1Mi', -(1n << 20n)],
  ];
  for (const [q, want] of cases) t.equal(parseQuantity(q), want, `${String(q)}`);
});

t.test('millis', async (t) => {
  t.equal(parseMilliQuantity('500m'), 500n);
  t.equal(parseMilliQuantity('1'), 1000n);
  t.equal(parseMilliQuantity('1.5'), 1500n);
  t.equal(parseMilliQuantity(2), 2000n);
  t.equal(parseMilliQuantity(0.25), 250n);
  t.equal(parseMilliQuantity('1u'), 1n);
  t.equal(parseMilliQuantity('1n'), 1n);
});

t.test('invalid quantities', async (t) => {
  for (const q of ['', 'abc', '1Mb', '1 Mi', 'Mi', '1.2.3', '1e', '1e999', '1KiB', '--1', '1x', ' 1', '1,5Gi', '0x10', 'x'.repeat(80)]) {
    t.throws(() => parseQuantity(q), { code: 'INVALID_QUANTITY' }, JSON.stringify(q));
  }
  t.throws(() => parseQuantity(Number.NaN), { code: 'INVALID_QUANTITY' });
  t.throws(() => parseQuantity(Number.POSITIVE_INFINITY), { code: 'INVALID_QUANTITY' });
  t.throws(() => parseQuantity({} as unknown as string), { code: 'INVALID_QUANTITY' });
});

t.test('formatBytes', async (t) => {
  t.equal(formatBytes(128n << 20n), '128Mi');
  t.equal(formatBytes(1536n << 10n), '1536Ki');
  t.equal(formatBytes(1000n), '1000');
  t.equal(formatBytes(0n), '0');
  t.equal(formatBytes(1n << 30n), '1Gi');
});
