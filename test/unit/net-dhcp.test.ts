// DHCP codec on fixed packets and the server's answers (OFFER/ACK/NAK/INFORM/RELEASE), without sockets.
import t from 'tap';
import {
  decodeDhcp,
  encodeDhcpReply,
  encodeDhcpRequest,
  messageType,
  optDomainSearch,
  DhcpOption as O,
  DhcpMessageType as T,
} from '../../src/net/dhcp-codec.js';
import { answerDhcp, sanitizeHostname, type DhcpLeaseConfig } from '../../src/net/dhcp-server.js';
import { parseResolvConf } from '../../src/net/resolv.js';

const zeros = (n: number): string => '00'.repeat(n);
/** A DISCOVER as udhcpc sends it, written out byte by byte (independent of the encoder). */
const DISCOVER_HEX =
  '01' +
  '01' +
  '06' +
  '00' + // op, htype, hlen, hops
  '3903f326' + // xid
  '0003' +
  '0000' + // secs 3, flags 0
  zeros(4) +
  zeros(4) +
  zeros(4) +
  zeros(4) + // ciaddr yiaddr siaddr giaddr
  '525400123456' +
  zeros(10) + // chaddr
  zeros(64) +
  zeros(128) + // sname, file
  '63825363' + // magic
  '350101' + // 53: DISCOVER
  '3d0701525400123456' + // 61: client id
  '370a0103060c0f1a1c333677' + // 55: 1 3 6 12 15 26 28 51 54 119
  '3902' +
  '0240' + // 57: 576
  '0c056775657374' + // 12: "guest"
  '00' + // pad
  'ff';

const cfg: DhcpLeaseConfig = {
  serverIp: '10.0.2.1',
  clientIp: '10.0.2.2',
  prefix: 24,
  router: '10.0.2.1',
  dns: ['192.0.2.53', '192.0.2.54'],
  search: ['example.test', 'svc.example.test'],
  hostname: 'My_VM.',
  mtu: 1450,
  leaseSeconds: 3600,
  clientMac: '52:54:00:12:34:56',
  unicast: true,
};
const NOW = new Date('2030-01-01T00:00:00Z');

t.test('decode a fixed DISCOVER', async (t) => {
  const buf = Buffer.from(DISCOVER_HEX, 'hex');
  const p = decodeDhcp(buf);
  t.equal(p.op, 1);
  t.equal(p.xid, 0x3903f326);
  t.equal(p.secs, 3);
  t.equal(p.chaddr, '52:54:00:12:34:56');
  t.equal(p.ciaddr, '0.0.0.0');
  t.equal(messageType(p), T.DISCOVER);
  t.same([...p.options.get(O.PARAM_LIST)!], [1, 3, 6, 12, 15, 26, 28, 51, 54, 119]);
  t.equal(p.options.get(O.HOSTNAME)!.toString(), 'guest');
  t.equal(p.options.get(O.MAX_SIZE)!.readUInt16BE(0), 576);
});

t.test('malformed packets', async (t) => {
  const buf = Buffer.from(DISCOVER_HEX, 'hex');
  t.throws(() => decodeDhcp(buf.subarray(0, 200)), { code: 'DHCP_MALFORMED' }, 'short');
  const nocookie = Buffer.from(buf);
  nocookie.writeUInt32BE(0, 236);
  t.throws(() => decodeDhcp(nocookie), { code: 'DHCP_MALFORMED' }, 'no cookie');
  const overrun = Buffer.concat([buf.subarray(0, 240), Buffer.from('3510', 'hex')]);
  t.throws(() => decodeDhcp(overrun), { code: 'DHCP_MALFORMED' }, 'option runs past the end');
});

t.test('long options are split and joined (RFC 3396); overload is read', async (t) => {
  const long = Buffer.alloc(300, 0x61);
  const b = encodeDhcpRequest({
    xid: 1,
    chaddr: '02:00:00:00:00:01',
    options: [
      [O.MESSAGE_TYPE, Buffer.from([T.DISCOVER])],
      [O.HOSTNAME, long],
    ],
  });
  t.equal(b[240 + 3], O.HOSTNAME);
  t.equal(b[240 + 4], 255, 'first chunk 255 bytes');
  t.same(decodeDhcp(b).options.get(O.HOSTNAME), long);
  // option 52 = 1: more options in the file field
  const ov = Buffer.from(DISCOVER_HEX, 'hex');
  const withOv = Buffer.concat([ov.subarray(0, ov.length - 1), Buffer.from('340101ff', 'hex')]);
  Buffer.from('0f0478792e7aff', 'hex').copy(withOv, 108);
  t.equal(decodeDhcp(withOv).options.get(O.DOMAIN_NAME)?.toString(), 'xy.z');
});

t.test('OFFER for a DISCOVER', async (t) => {
  const req = decodeDhcp(Buffer.from(DISCOVER_HEX, 'hex'));
  const a = answerDhcp(req, cfg, 'uid/default', NOW);
  t.equal(a.to, '255.255.255.255', 'broadcast: the client has no address yet');
  t.equal(a.event, null);
  const r = a.reply!;
  t.ok(r.length >= 300, 'padded to the BOOTP minimum');
  t.equal(r[0], 2, 'BOOTREPLY');
  t.equal(r.readUInt32BE(4), 0x3903f326, 'xid echoed');
  t.equal(r.subarray(16, 20).toString('hex'), '0a000202', 'yiaddr 10.0.2.2');
  t.equal(r.subarray(20, 24).toString('hex'), '0a000201', 'siaddr');
  t.equal(r.subarray(28, 34).toString('hex'), '525400123456', 'chaddr');
  t.equal(r.subarray(240, 245).toString('hex'), '350102' + '3604', 'message type OFFER, then server id');
  const p = decodeDhcp(r);
  t.equal(messageType(p), T.OFFER);
  const ip = (c: number): string[] => {
    const v = p.options.get(c)!;
    return Array.from({ length: v.length / 4 }, (_, i) => [...v.subarray(i * 4, i * 4 + 4)].join('.'));
  };
  t.same(ip(O.SERVER_ID), ['10.0.2.1']);
  t.same(ip(O.SUBNET_MASK), ['255.255.255.0']);
  t.same(ip(O.ROUTER), ['10.0.2.1']);
  t.same(ip(O.BROADCAST), ['10.0.2.255']);
  t.same(ip(O.DNS), ['192.0.2.53', '192.0.2.54']);
  t.equal(p.options.get(O.LEASE_TIME)!.readUInt32BE(0), 3600);
  t.equal(p.options.get(O.RENEWAL_T1)!.readUInt32BE(0), 1800);
  t.equal(p.options.get(O.REBINDING_T2)!.readUInt32BE(0), 3150);
  t.equal(p.options.get(O.MTU)!.readUInt16BE(0), 1450);
  t.equal(p.options.get(O.HOSTNAME)!.toString(), 'my-vm', 'hostname sanitised');
  t.equal(p.options.get(O.DOMAIN_NAME)!.toString(), 'example.test');
  t.equal(p.options.get(O.DOMAIN_SEARCH)!.toString('hex'), '076578616d706c65047465737400' + '03737663076578616d706c65047465737400');
});

function request(opts: { requested?: string; server?: string; ciaddr?: string; type?: number; mac?: string }): ReturnType<typeof decodeDhcp> {
  const o: [number, Buffer][] = [[O.MESSAGE_TYPE, Buffer.from([opts.type ?? T.REQUEST])]];
  const ipb = (s: string): Buffer => Buffer.from(s.split('.').map(Number));
  if (opts.requested) o.push([O.REQUESTED_IP, ipb(opts.requested)]);
  if (opts.server) o.push([O.SERVER_ID, ipb(opts.server)]);
  return decodeDhcp(encodeDhcpRequest({ xid: 7, chaddr: opts.mac ?? '52:54:00:12:34:56', ...(opts.ciaddr ? { ciaddr: opts.ciaddr } : {}), options: o }));
}

t.test('REQUEST, renew, NAK, other server, other client', async (t) => {
  const ack = answerDhcp(request({ requested: '10.0.2.2', server: '10.0.2.1' }), cfg, 'k', NOW);
  t.equal(messageType(decodeDhcp(ack.reply!)), T.ACK);
  t.equal(ack.to, '255.255.255.255');
  t.same(ack.event, { type: 'lease', key: 'k', clientMac: '52:54:00:12:34:56', ip: '10.0.2.2', leaseSeconds: 3600, at: NOW });

  const renew = answerDhcp(request({ ciaddr: '10.0.2.2' }), cfg, 'k', NOW);
  t.equal(messageType(decodeDhcp(renew.reply!)), T.ACK);
  t.equal(renew.to, '10.0.2.2', 'renewal answered by unicast');
  t.equal(answerDhcp(request({ ciaddr: '10.0.2.2' }), { ...cfg, unicast: false }, 'k', NOW).to, '255.255.255.255', 'bridge binding: always broadcast');

  const nak = answerDhcp(request({ requested: '10.0.2.77' }), cfg, 'k', NOW);
  const np = decodeDhcp(nak.reply!);
  t.equal(messageType(np), T.NAK);
  t.equal(np.yiaddr, '0.0.0.0');
  t.equal(nak.to, '255.255.255.255');
  t.equal(nak.event, null);

  const other = answerDhcp(request({ requested: '10.0.2.2', server: '10.9.9.9' }), cfg, 'k', NOW);
  t.equal(other.reply, null, 'a request for another server is ignored');
  const stranger = answerDhcp(request({ requested: '10.0.2.2', mac: '02:00:00:00:00:99' }), cfg, 'k', NOW);
  t.equal(stranger.reply, null, 'a client that is not our NIC is ignored');
  const { clientMac: _mac, ...anyClient } = cfg;
  t.ok(answerDhcp(request({ requested: '10.0.2.2', mac: '02:00:00:00:00:99' }), anyClient, 'k', NOW).reply, 'any client without clientMac');
});

t.test('INFORM, RELEASE, DECLINE, BOOTP', async (t) => {
  const inf = answerDhcp(request({ type: T.INFORM, ciaddr: '10.0.2.2' }), cfg, 'k', NOW);
  const ip = decodeDhcp(inf.reply!);
  t.equal(messageType(ip), T.ACK);
  t.equal(ip.yiaddr, '0.0.0.0');
  t.notOk(ip.options.has(O.LEASE_TIME), 'no lease time in an INFORM answer');
  t.equal(inf.to, '10.0.2.2');
  const rel = answerDhcp(request({ type: T.RELEASE, ciaddr: '10.0.2.2', server: '10.0.2.1' }), cfg, 'k', NOW);
  t.equal(rel.reply, null);
  t.same(rel.event, { type: 'release', key: 'k', clientMac: '52:54:00:12:34:56', ip: '10.0.2.2', at: NOW });
  const dec = answerDhcp(request({ type: T.DECLINE, requested: '10.0.2.2', server: '10.0.2.1' }), cfg, 'k', NOW);
  t.equal(dec.event?.type, 'decline');
  const bootp = decodeDhcp(encodeDhcpRequest({ xid: 1, chaddr: '52:54:00:12:34:56', options: [] }));
  t.equal(answerDhcp(bootp, cfg, 'k', NOW).reply, null, 'plain BOOTP is not served');
  const reply = decodeDhcp(
    encodeDhcpReply({ xid: 1, flags: 0, ciaddr: '0.0.0.0', yiaddr: '0.0.0.0', siaddr: '0.0.0.0', giaddr: '0.0.0.0', chaddr: '52:54:00:12:34:56', options: [] }),
  );
  t.equal(answerDhcp(reply, cfg, 'k', NOW).reply, null, 'replies are not answered');
});

t.test('hostname and search encoding', async (t) => {
  t.equal(sanitizeHostname('My_VM'), 'my-vm');
  t.equal(sanitizeHostname('a..b.'), 'a.b');
  t.equal(sanitizeHostname('___'), null);
  t.equal(sanitizeHostname('x'.repeat(70)), 'x'.repeat(63));
  t.equal(optDomainSearch(['a.b']).toString('hex'), '0161016200');
  t.throws(() => optDomainSearch(['a..b']), { code: 'DHCP_BAD_OPTION' });
});

t.test('resolv.conf', async (t) => {
  t.same(parseResolvConf('# x\nnameserver 127.0.0.53\nnameserver 192.0.2.1 # c\nnameserver ::1\nnameserver 192.0.2.1\nsearch a.test b.test\noptions edns0\n'), {
    nameservers: ['192.0.2.1'],
    search: ['a.test', 'b.test'],
  });
  t.same(parseResolvConf('nameserver 127.0.0.53\ndomain corp.test\n'), { nameservers: [], search: ['corp.test'] }, 'stub resolvers are skipped');
});
