// rtnetlink encoding byte for byte (nlmsghdr, ifinfomsg, ifaddrmsg, rtmsg, nested rtattrs), ack parsing into errno and extended-ack text, and which ip commands the netlink path takes.
import t from 'tap';
import * as nl from '../../src/net/rtnetlink.js';
import { netlinkSupports, parseIpCommand, runIpBatchNetlink } from '../../src/net/ip-netlink.js';
import { planBinding, planSandboxInside, planSandboxNetns, planSandboxVeth } from '../../src/net/commands.js';
import { planNetwork } from '../../src/net/plan.js';

const hex = (b: Buffer): string => b.toString('hex').replace(/(..)/g, '$1 ').trim();

t.test('link set lo up: nlmsghdr, ifinfomsg, a NUL-terminated name padded to 4', async (t) => {
  const m = nl.nlmsg(nl.RTM_NEWLINK, nl.NLM_F_REQUEST | nl.NLM_F_ACK, 7, nl.ifinfomsg({ flags: nl.IFF_UP, change: nl.IFF_UP }), [
    { type: nl.IFLA_IFNAME, value: nl.cstr('lo') },
  ]);
  t.equal(
    hex(m),
    [
      '28 00 00 00 10 00 05 00 07 00 00 00 00 00 00 00', // len 40, RTM_NEWLINK, REQUEST|ACK, seq 7, pid 0
      '00 00 00 00 00 00 00 00 01 00 00 00 01 00 00 00', // AF_UNSPEC, index 0, flags UP, change UP
      '07 00 03 00 6c 6f 00 00', // IFLA_IFNAME "lo\0" + 1 byte of padding
    ].join(' '),
  );
});

t.test('veth with its peer: nested link info, the peer as ifinfomsg + attributes', async (t) => {
  const peer = Buffer.concat([
    nl.ifinfomsg(),
    nl.encodeAttrs([
      { type: nl.IFLA_IFNAME, value: nl.cstr('eth0') },
      { type: nl.IFLA_NET_NS_FD, value: nl.u32(9) },
    ]),
  ]);
  const attrs = nl.encodeAttrs([
    {
      type: nl.IFLA_LINKINFO,
      value: [
        { type: nl.IFLA_INFO_KIND, value: nl.str('veth') },
        { type: nl.IFLA_INFO_DATA, value: [{ type: nl.VETH_INFO_PEER, value: peer }] },
      ],
    },
  ]);
  t.equal(
    hex(attrs),
    [
      '38 00 12 00', // IFLA_LINKINFO, 56 bytes
      '08 00 01 00 76 65 74 68', // IFLA_INFO_KIND "veth" (no NUL, as iproute2)
      '2c 00 02 00', // IFLA_INFO_DATA
      '28 00 01 00', // VETH_INFO_PEER: ifinfomsg + attributes
      '00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00',
      '09 00 03 00 65 74 68 30 00 00 00 00', // IFLA_IFNAME "eth0\0", padded
      '08 00 1c 00 09 00 00 00', // IFLA_NET_NS_FD 9
    ].join(' '),
  );
  const outer = nl.parseAttrs(attrs);
  const info = nl.parseAttrs(outer.get(nl.IFLA_LINKINFO)!);
  t.equal(info.get(nl.IFLA_INFO_KIND)!.toString(), 'veth', 'parses back');
});

t.test('ifaddrmsg and rtmsg', async (t) => {
  const a = nl.nlmsg(nl.RTM_NEWADDR, nl.NLM_F_REQUEST | nl.NLM_F_CREATE | nl.NLM_F_EXCL, 1, nl.ifaddrmsg({ family: nl.AF_INET, prefixlen: 16, index: 5 }), [
    { type: nl.IFA_LOCAL, value: nl.ipv4Bytes('10.213.0.5') },
  ]);
  t.equal(hex(a), '20 00 00 00 14 00 01 06 01 00 00 00 00 00 00 00 02 10 00 00 05 00 00 00 08 00 02 00 0a d5 00 05');
  const r = nl.rtmsg({ family: nl.AF_INET, dstLen: 0, table: nl.RT_TABLE_MAIN, protocol: nl.RTPROT_BOOT, scope: nl.RT_SCOPE_UNIVERSE, type: nl.RTN_UNICAST });
  t.equal(hex(r), '02 00 00 00 fe 03 00 01 00 00 00 00', 'AF_INET, default, main table, proto boot, unicast');
  const parsed = nl.parseIfaddrmsg(a.subarray(16));
  t.match(parsed, { family: 2, prefixlen: 16, index: 5 });
  t.same([...parsed.attrs.get(nl.IFA_LOCAL)!], [10, 213, 0, 5]);
  t.throws(() => nl.ipv4Bytes('10.0.0.256'));
});

/** An NLMSG_ERROR message as the kernel writes it. */
function errorMsg(err: number, flags: number, echoed: Buffer, tlvs: nl.Attr[] = []): Buffer {
  const e = Buffer.alloc(4);
  e.writeInt32LE(err);
  return nl.nlmsg(nl.NLMSG_ERROR, flags, 3, Buffer.concat([e, echoed]), tlvs);
}

t.test('acks: errno 0, a negative error as positive errno, the extended-ack text', async (t) => {
  const req = nl.nlmsg(nl.RTM_NEWLINK, nl.NLM_F_REQUEST, 3, nl.ifinfomsg(), [{ type: nl.IFLA_IFNAME, value: nl.cstr('x') }]);
  const [ok] = nl.parseMessages(errorMsg(0, nl.NLM_F_CAPPED, req.subarray(0, 16)));
  t.same(nl.parseAck(ok!), { errno: 0 });
  const [nodev] = nl.parseMessages(errorMsg(-19, 0, req));
  t.same(nl.parseAck(nodev!), { errno: 19 }, 'the whole request echoed, no TLVs');
  const msg = [{ type: nl.NLMSGERR_ATTR_MSG, value: nl.cstr('mtu less than device minimum') }];
  const [capped] = nl.parseMessages(errorMsg(-22, nl.NLM_F_CAPPED | nl.NLM_F_ACK_TLVS, req.subarray(0, 16), msg));
  t.same(nl.parseAck(capped!), { errno: 22, message: 'mtu less than device minimum' }, 'capped, with TLVs');
  const [full] = nl.parseMessages(errorMsg(-22, nl.NLM_F_ACK_TLVS, req, msg));
  t.same(nl.parseAck(full!), { errno: 22, message: 'mtu less than device minimum' }, 'whole request, with TLVs');
  t.throws(() => nl.parseAck({ type: nl.RTM_NEWLINK, flags: 0, seq: 0, payload: Buffer.alloc(16) }));
});

t.test('several messages in one read; a truncated one is an error', async (t) => {
  const one = nl.nlmsg(nl.RTM_NEWLINK, nl.NLM_F_MULTI, 4, nl.ifinfomsg({ index: 2 }), [{ type: nl.IFLA_IFNAME, value: nl.cstr('eth0') }]);
  const done = nl.nlmsg(nl.NLMSG_DONE, nl.NLM_F_MULTI, 4, Buffer.alloc(4));
  const msgs = nl.parseMessages(Buffer.concat([one, done]));
  t.same(
    msgs.map((m) => [m.type, m.seq]),
    [
      [nl.RTM_NEWLINK, 4],
      [nl.NLMSG_DONE, 4],
    ],
  );
  const info = nl.parseIfinfomsg(msgs[0]!.payload);
  t.equal(info.index, 2);
  t.equal(info.attrs.get(nl.IFLA_IFNAME)!.toString(), 'eth0\0');
  t.throws(() => nl.parseMessages(one.subarray(0, one.length - 4)), /truncated/);
});

t.test("the planners' batches are all netlink forms; anything else goes to ip", async (t) => {
  const sp = {
    names: { id: '1a2b3c4d', netns: 'vmlet-1a2b3c4d', hostVeth: 'vmh-1a2b3c4d' },
    bridge: 'vmlet0',
    address: '10.213.0.5',
    prefix: 16,
    gateway: '10.213.0.1',
    mtu: 1500,
  };
  const pod = { address: sp.address, prefix: 16, gateway: sp.gateway, mtu: 1500 };
  for (const [spec, queues] of [
    [{ name: 'default', masquerade: {} }, 4],
    [{ name: 'default', bridge: {} }, 1],
  ] as const) {
    const plan = planNetwork([spec], [{ name: 'default', pod: {} }], 'u', { queues });
    const inside = [...planSandboxInside(sp), ...plan.interfaces.flatMap((i) => planBinding(i, pod, { user: 107, group: 108 }).ip)];
    t.ok(netlinkSupports(planSandboxVeth(sp)), 'host side');
    t.ok(netlinkSupports(inside), `inside, ${Object.keys(spec)[1]}`);
  }
  t.same(parseIpCommand(['link', 'set', 'tap0', 'mtu', '1500', 'master', 'k6t-eth0', 'up']), {
    kind: 'set',
    name: 'tap0',
    mtu: 1500,
    master: 'k6t-eth0',
    up: true,
  });
  t.same(parseIpCommand(['route', 'add', '10.213.0.5/32', 'dev', 'k6t-eth0']), { kind: 'route', dev: 'k6t-eth0', dst: '10.213.0.5', prefix: 32 });
  t.same(parseIpCommand(['tuntap', 'add', 'dev', 'tap0', 'mode', 'tap', 'user', '107', 'multi_queue', 'vnet_hdr']), {
    kind: 'tap',
    name: 'tap0',
    user: 107,
    multiQueue: true,
    vnetHdr: true,
  });
  t.ok(netlinkSupports(planSandboxNetns(sp)), 'netns add');
  t.same(parseIpCommand(['netns', 'add', 'vmlet-1']), { kind: 'netns', name: 'vmlet-1' });
  for (const c of [
    ['netns', 'add', '../vmlet-1'],
    ['netns', 'add', '..'],
    ['netns', 'add', 'vmlet-1', 'extra'],
    ['netns', 'attach', 'vmlet-1', '1'],
    ['link', 'del', 'vmh-1'],
    ['link', 'add', 'vmlet0', 'address', '02:00:00:00:00:01', 'type', 'bridge'],
    ['link', 'set', 'eth0', 'address', '02:00:00:00:00:01'],
    ['link', 'set', 'k6t-eth0', 'alias', 'x'],
    ['link', 'add', 'vmh-1', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', '/proc/1/ns/net'],
    ['tuntap', 'add', 'dev', 'tap0', 'mode', 'tap', 'user', 'qemu', 'vnet_hdr'],
    ['tuntap', 'add', 'dev', 'tun0', 'mode', 'tun'],
    ['route', 'add', '10.0.0.5/24', 'dev', 'eth0'],
    ['route', 'add', 'default', 'dev', 'eth0'],
    ['addr', 'add', '10.0.0.5', 'dev', 'eth0'],
    ['link', 'set', 'a-name-longer-than-15', 'up'],
    ['link', 'set', 'eth0'],
  ]) {
    t.equal(parseIpCommand(c), null, c.join(' '));
  }
  t.notOk(
    netlinkSupports([
      ['link', 'set', 'lo', 'up'],
      ['link', 'del', 'x'],
    ]),
    'one unsupported line sends the whole batch to ip',
  );
});
