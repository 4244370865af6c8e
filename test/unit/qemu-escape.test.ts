import t from 'tap';
import { escapeOptValue, qemuOpts, splitOpts } from '../../src/qemu/escape.js';

t.test('escapeOptValue doubles commas', async (t) => {
  t.equal(escapeOptValue('plain'), 'plain');
  t.equal(escapeOptValue('a,b'), 'a,,b');
  t.equal(escapeOptValue(',,'), ',,,,');
  t.equal(escapeOptValue('/x/a,file.driver=null-co'), '/x/a,,file.driver=null-co');
  t.equal(escapeOptValue('key=value'), 'key=value', '= needs no escaping in a value');
});

t.test('escapeOptValue refuses control characters and empty values', async (t) => {
  for (const bad of ['a\nb', 'a\rb', 'a\u0000b', 'tab\there', '\u007f', '\u0085', 'x\u2028y', '']) {
    t.throws(() => escapeOptValue(bad), { code: 'UNSAFE_VALUE' }, encodeURIComponent(bad));
  }
});

t.test('qemuOpts', async (t) => {
  t.equal(
    qemuOpts('virtio-blk-pci', [
      ['drive', 'vol0'],
      ['serial', 'a,b'],
      ['bootindex', 1],
      ['x', undefined],
      ['ro', true],
      ['rw', false],
    ]),
    'virtio-blk-pci,drive=vol0,serial=a,,b,bootindex=1,ro=on,rw=off',
  );
  t.equal(
    qemuOpts(undefined, [
      ['type', 11],
      ['value', 'k=v,w'],
    ]),
    'type=11,value=k=v,,w',
  );
  t.equal(qemuOpts('dr,iver', []), 'dr,,iver');
  t.throws(() => qemuOpts(undefined, [['bad key', 'x']]), { code: 'UNSAFE_VALUE' });
  t.throws(() => qemuOpts(undefined, [['k', 'a\nb']]), { code: 'UNSAFE_VALUE' });
});

t.test('splitOpts undoes the escaping: an escaped value stays one option', async (t) => {
  const evil = '/srv/a,file.driver=null-co,b,,c';
  const opts = qemuOpts(undefined, [
    ['driver', 'file'],
    ['filename', evil],
    ['read-only', false],
  ]);
  t.same(splitOpts(opts), ['driver=file', `filename=${evil}`, 'read-only=off']);
  t.same(splitOpts('a,b,,c,d'), ['a', 'b,c', 'd']);
});
