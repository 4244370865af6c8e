// A guest agent's interface report is checked before it reaches status: bad MACs dropped, odd names and non-addresses left out, sizes bounded; and the CLI shows no control characters.
import t from 'tap';
import { printable, formatTable } from '../../src/cli/output.js';
import { checkedGuestInterfaces, GUEST_REPORT_LIMITS } from '../../src/daemon/guest-report.js';

const mac = '52:54:00:12:34:56';

t.test('a well-formed report passes through', async (t) => {
  const r = checkedGuestInterfaces([
    {
      name: 'eth0',
      'hardware-address': mac.toUpperCase(),
      'ip-addresses': [
        { 'ip-address': '10.0.2.2', 'ip-address-type': 'ipv4', prefix: 24 },
        { 'ip-address': 'fd00::2', 'ip-address-type': 'ipv6', prefix: 64 },
      ],
    },
  ]);
  t.same(r, [
    {
      name: 'eth0',
      'hardware-address': mac,
      'ip-addresses': [
        { 'ip-address': '10.0.2.2', 'ip-address-type': 'ipv4', prefix: 24 },
        { 'ip-address': 'fd00::2', 'ip-address-type': 'ipv6', prefix: 64 },
      ],
    },
  ]);
});

t.test('what a hostile guest might say is left out', async (t) => {
  const r = checkedGuestInterfaces([
    { name: 'eth0', 'hardware-address': 'not-a-mac' },
    {
      name: '\u001b[31mred\u001b[0m',
      'hardware-address': mac,
      'ip-addresses': [{ 'ip-address': '10.0.2.2; rm -rf /', 'ip-address-type': 'ipv4', prefix: 24 }],
    },
    { name: 'x'.repeat(4096), 'hardware-address': '52:54:00:00:00:01', 'ip-addresses': 'many' },
    null,
    'eth9',
  ]);
  t.equal(r.length, 2, 'interfaces without a valid MAC are dropped');
  t.same(r[0], { name: '', 'hardware-address': mac, 'ip-addresses': [] }, 'a name with escapes and a non-address are left out');
  t.equal(r[1]!.name, '', 'a name longer than IFNAMSIZ is left out');
  t.same(checkedGuestInterfaces({ name: 'eth0' }), [], 'not a list: nothing');
});

t.test('sizes are bounded', async (t) => {
  const many = Array.from({ length: 1000 }, (_, i) => ({
    name: `e${i}`,
    'hardware-address': `52:54:00:00:${((i >> 8) & 0xff).toString(16).padStart(2, '0')}:${(i & 0xff).toString(16).padStart(2, '0')}`,
    'ip-addresses': Array.from({ length: 100 }, (_, j) => ({ 'ip-address': `10.1.${i & 0xff}.${j}`, 'ip-address-type': 'ipv4', prefix: 16 })),
  }));
  const r = checkedGuestInterfaces(many);
  t.equal(r.length, GUEST_REPORT_LIMITS.interfaces);
  t.ok(r.every((g) => (g['ip-addresses'] ?? []).length === GUEST_REPORT_LIMITS.addressesPerInterface));
});

t.test('the CLI prints no control characters', async (t) => {
  t.equal(printable('ok\u001b[2Jcleared\u0007\u009b'), 'ok?[2Jcleared??');
  const table = formatTable(['NAME', 'IP'], [['vm\u001b]0;title\u0007', '10.0.2.2']]);
  t.notMatch(table, /[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/, 'no control character but the line ends');
  t.match(table, /vm\?\]0;title\?/);
});
