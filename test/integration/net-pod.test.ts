// Plays CNI (a netns with eth0 on a veth, a pod IP and a default route), attaches the VM's masquerade and bridge bindings inside it, boots the test guest on the tap fds and checks DHCP, DNAT, masquerade, loopback, adopt and cleanup.
import { execFile, execFileSync } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import t from 'tap';
import { checkSubnetClash } from '../../src/net/commands.js';
import { PodNetwork } from '../../src/net/pod-network.js';
import { qemuNicArgs } from '../../src/net/qemu-args.js';
import type { IpRoute } from '../../src/net/types.js';
import { bootTestGuest, guestSkipReason, type TestGuest } from '../support/guest.js';
import { closeFds, httpGet, httpGetRetry, inheritable, ipJson, netSkipReason } from '../support/net-env.js';

const run = promisify(execFile);
const skip = netSkipReason() ?? guestSkipReason() ?? (fs.existsSync('/usr/bin/curl') ? null : 'curl is not installed');
const DHCP_LINE = /vmlet-guest: eth0 (\S+)\/(\d+) router (\S+) \(dhcp\)/;

interface FakePod {
  netns: string;
  netnsPath: string;
  hostVeth: string;
  podIp: string;
  gateway: string;
  /** eth0's MAC as "CNI" made it */
  mac: string;
}

function sh(bin: string, args: string[]): string {
  return execFileSync(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] }).toString();
}

/** Another address in the pod's /24 (.200), for a spoofing guest. */
function pod200(ip: string): string {
  return ip.replace(/\d+$/, '200');
}

function quiet(bin: string, args: string[]): void {
  try {
    execFileSync(bin, args, { stdio: 'ignore' });
  } catch {
    /* already gone */
  }
}

/** What CNI does for a pod: a netns, eth0 in it on a veth whose host end is the gateway, the pod IP, a default route. */
function makePod(name: string, third: number): FakePod {
  const subnet = `10.214.${third}.0/24`;
  // only self-made addresses: the /24 must not overlap any route of the host
  checkSubnetClash(subnet, ipJson<IpRoute[]>(['route', 'show']), '');
  const pod: FakePod = {
    netns: `vmlt${name}p`,
    netnsPath: `/run/netns/vmlt${name}p`,
    hostVeth: `vmlt${name}h`,
    podIp: `10.214.${third}.2`,
    gateway: `10.214.${third}.1`,
    mac: '',
  };
  sh('ip', ['netns', 'add', pod.netns]);
  sh('ip', ['link', 'add', pod.hostVeth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', pod.netns]);
  sh('ip', ['addr', 'add', `${pod.gateway}/24`, 'dev', pod.hostVeth]);
  sh('ip', ['link', 'set', pod.hostVeth, 'up']);
  for (const args of [
    ['link', 'set', 'lo', 'up'],
    ['addr', 'add', `${pod.podIp}/24`, 'dev', 'eth0'],
    ['link', 'set', 'eth0', 'up'],
    ['route', 'add', 'default', 'via', pod.gateway],
  ]) {
    sh('ip', ['-n', pod.netns, ...args]);
  }
  const route = ipJson<{ dev: string }[]>(['route', 'get', pod.podIp]);
  if (route[0]?.dev !== pod.hostVeth) throw new Error(`${pod.podIp} is not routed to ${pod.hostVeth}: ${JSON.stringify(route)}`);
  pod.mac = ipJson<{ address: string }[]>(['-n', pod.netns, 'link', 'show', 'dev', 'eth0'])[0]!.address;
  return pod;
}

function removePod(p: FakePod): void {
  quiet('ip', ['netns', 'del', p.netns]);
  quiet('ip', ['link', 'del', p.hostVeth]);
}

function hostLinks(): string[] {
  return ipJson<{ ifname: string }[]>(['link', 'show']).map((l) => l.ifname);
}

function nftRuleset(): string {
  return execFileSync('nft', ['list', 'ruleset'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString();
}

function nftTables(): string[] {
  return nftRuleset()
    .split('\n')
    .filter((l) => l.startsWith('table '))
    .sort();
}

/** A TCP server on the host end of a pod's veth that records the source address of each connection. */
async function sourceRecorder(address: string): Promise<{ port: number; sources: string[]; close: () => Promise<void> }> {
  const sources: string[] = [];
  const conns = new Set<net.Socket>();
  const srv = net.createServer((s) => {
    conns.add(s);
    sources.push(s.remoteAddress ?? '?');
    s.end('ok\n');
  });
  await new Promise<void>((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(0, address, () => resolve());
  });
  const port = (srv.address() as net.AddressInfo).port;
  // close() waits for open connections: end them first
  return { port, sources, close: () => new Promise((r) => (srv.close(() => r()), conns.forEach((c) => c.destroy()))) };
}

async function waitGone(pred: () => boolean, ms: number): Promise<boolean> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (pred()) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return pred();
}

t.test('VM bindings inside a pod netns made like CNI does', { skip: skip ?? false, timeout: 180_000 }, async (t) => {
  const tag = randomBytes(2).toString('hex');
  const third = 1 + (parseInt(tag, 16) % 120);
  const tablesBefore = nftTables();
  const masqPod = makePod(`${tag}m`, third);
  t.teardown(() => removePod(masqPod));
  const bridgePod = makePod(`${tag}b`, third + 125);
  t.teardown(() => removePod(bridgePod));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-pod-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  // the pod's resolv.conf, as the daemon would read it through /proc/<pid>/root/etc/resolv.conf
  const resolvConf = path.join(dir, 'resolv.conf');
  fs.writeFileSync(resolvConf, `search ns1.svc.cluster.local svc.cluster.local\nnameserver 10.214.${third}.53\noptions ndots:5\n`);

  const pn = new PodNetwork();
  t.teardown(() => pn.close());
  const uidM = randomUUID();
  const uidB = randomUUID();
  const reqM = {
    netnsPath: masqPod.netnsPath,
    uid: uidM,
    hostname: 'vm-masq',
    interfaces: [{ name: 'default', masquerade: {}, ports: [{ port: 80 }] }],
    networks: [{ name: 'default', pod: {} }],
    resolvConfPath: resolvConf,
  };
  const reqB = {
    netnsPath: bridgePod.netnsPath,
    uid: uidB,
    hostname: 'vm-bridge',
    interfaces: [{ name: 'default', bridge: {} }],
    networks: [{ name: 'default', pod: {} }],
    resolvConfPath: resolvConf,
  };

  let t0 = Date.now();
  const m = await pn.attach(reqM);
  t.comment(`masquerade attach: ${Date.now() - t0} ms`);
  // a second attach of the bridge binding (a daemon that died before launch) must rebuild from the record, eth0 having lost its address
  const first = await pn.attach(reqB);
  closeFds(first.fds.flat());
  t.equal(
    ipJson<{ addr_info: unknown[] }[]>(['-n', bridgePod.netns, '-4', 'addr', 'show', 'dev', 'eth0'])[0]?.addr_info.length ?? 0,
    0,
    'bridge: eth0 lost the pod IP',
  );
  t0 = Date.now();
  const b = await pn.attach(reqB);
  t.comment(`bridge re-attach: ${Date.now() - t0} ms`);
  t.same(b.status, first.status, 'bridge: a second attach reports the same');
  t.same(m.status, [{ name: 'default', mac: m.nics[0]!.mac, ipAddress: masqPod.podIp, ipAddresses: [masqPod.podIp] }], 'masquerade status: pod IP');
  t.same(b.status, [{ name: 'default', mac: bridgePod.mac, ipAddress: bridgePod.podIp, ipAddresses: [bridgePod.podIp] }], "bridge status: pod IP, eth0's MAC");
  const ethB = ipJson<{ address: string; master?: string }[]>(['-n', bridgePod.netns, 'link', 'show', 'dev', 'eth0'])[0]!;
  t.not(ethB.address, bridgePod.mac, 'bridge: eth0 gave its MAC to the guest');
  t.equal(ethB.master, 'k6t-eth0', 'bridge: eth0 is on k6t-eth0');
  t.same([m.fds.length, m.fds[0]!.length, b.fds[0]!.length], [1, 1, 1], 'one tap fd per NIC');
  t.same(pn.attached().sort(), [uidM, uidB].sort(), 'both served');

  const guests: TestGuest[] = [];
  for (const [a] of [[m], [b]] as const) {
    const inh = inheritable(a.fds[0]!);
    closeFds(a.fds[0]!);
    const nic = a.nics[0]!;
    try {
      guests.push(
        await bootTestGuest({
          accel: 'tcg',
          qmp: false,
          guestAgent: false,
          teardown: (fn) => t.teardown(fn),
          extraArgs: qemuNicArgs({ index: nic.index, mac: nic.mac, model: nic.model, tap: { fds: inh.fds }, romfile: '' }),
        }),
      );
    } finally {
      inh.close();
    }
  }
  const [gm, gb] = guests as [TestGuest, TestGuest];
  const [boundM, boundB] = await Promise.all([gm.waitForSerial(DHCP_LINE, 90_000), gb.waitForSerial(DHCP_LINE, 90_000)]);
  t.same(boundM.groups, ['10.0.2.2', '24', '10.0.2.1'], 'masquerade guest got 10.0.2.2/24 by DHCP');
  t.same(boundB.groups, [bridgePod.podIp, '24', bridgePod.gateway], "bridge guest got the pod IP and the pod's gateway by DHCP");
  await Promise.all([gm.waitReady(60_000), gb.waitReady(60_000)]);

  const conf = await gm.shell('hostname; cat /etc/resolv.conf');
  t.match(conf.output, /vm-masq/, 'hostname from DHCP');
  t.match(conf.output, new RegExp(`nameserver 10\\.214\\.${third}\\.53`), "DNS from the pod's resolv.conf");
  t.match(conf.output, /ns1\.svc\.cluster\.local/, "search domains from the pod's resolv.conf");

  const viaNat = await httpGetRetry(masqPod.podIp, 80);
  t.match(viaNat.body, /VMLET-GUEST-HTTP-OK/, 'host → pod IP:80 is DNATed to the guest');
  await gm.shell('httpd -p 8080 -h /www');
  await t.rejects(httpGet(masqPod.podIp, 8080, 2000), 'an unlisted port is not forwarded');
  const lo = await run('nsenter', [`--net=${masqPod.netnsPath}`, '--', 'curl', '-s', '-m', '10', 'http://127.0.0.1:80/']);
  t.match(lo.stdout, /VMLET-GUEST-HTTP-OK/, "the pod's own 127.0.0.1:80 reaches the guest");
  const direct = await httpGetRetry(bridgePod.podIp, 80);
  t.match(direct.body, /VMLET-GUEST-HTTP-OK/, 'host → pod IP:80 reaches the bridged guest directly');

  for (const [g, pod, what] of [
    [gm, masqPod, 'masquerade'],
    [gb, bridgePod, 'bridge'],
  ] as const) {
    const rec = await sourceRecorder(pod.gateway);
    try {
      const r = await g.shell(`echo hi | nc -w 5 ${pod.gateway} ${rec.port}`, 20_000);
      t.match(r.output, /ok/, `${what} guest reaches ${pod.gateway}`);
      t.same(rec.sources, [pod.podIp], `${what} guest's traffic leaves with the pod IP as source`);
    } finally {
      await rec.close();
    }
  }

  // the guest filter works in the pod's netns too: a spoofed source and the metadata address are dropped and counted
  for (const [g, pod, what, spoof] of [
    [gm, masqPod, 'masquerade', '10.0.2.99'],
    [gb, bridgePod, 'bridge', pod200(bridgePod.podIp)],
  ] as const) {
    t.equal(
      sh('nsenter', [`--net=${pod.netnsPath}`, '--', 'cat', '/proc/sys/net/ipv4/conf/all/rp_filter']).trim(),
      '1',
      `${what}: strict rp_filter in the pod`,
    );
    const d0 = await pn.guestDrops(pod.netnsPath);
    const r = await g.shell(
      `ip addr add ${spoof}/32 dev eth0 && ping -c 1 -W 2 -I ${spoof} ${pod.gateway}; r=$?; ip addr del ${spoof}/32 dev eth0; test $r = 0`,
    );
    t.not(r.status, 0, `${what}: a ping from a spoofed source gets no answer`);
    await g.shell('nc -w 2 169.254.169.254 80 </dev/null');
    const d1 = await pn.guestDrops(pod.netnsPath);
    t.ok((d1['ip_spoof']?.packets ?? 0) > (d0['ip_spoof']?.packets ?? Infinity), `${what}: the spoofed source was dropped in the pod (ip_spoof)`);
    t.ok((d1['metadata']?.packets ?? 0) > (d0['metadata']?.packets ?? Infinity), `${what}: 169.254.169.254 was dropped in the pod (metadata)`);
  }

  // a daemon restart: a new PodNetwork adopts both; nothing is made, DHCP serves again
  await pn.close();
  const pn2 = new PodNetwork();
  t.teardown(() => pn2.close());
  const am = await pn2.adopt(reqM);
  const ab = await pn2.adopt(reqB);
  t.same([am.status, ab.status], [m.status, b.status], 'adopt reports the same status');
  t.same(pn2.dhcp.keys().sort(), [`${uidM}/default`, `${uidB}/default`].sort(), 'DHCP serves both again');
  // the renewal's ACK rewrites resolv.conf: proof that the new server answered
  const renew = await gm.shell('echo stale > /etc/resolv.conf; kill -USR1 $(pidof udhcpc) && sleep 3; ip -4 addr show dev eth0; cat /etc/resolv.conf');
  t.match(renew.output, /inet 10\.0\.2\.2\/24/, 'the masquerade guest keeps its address over a renewal');
  t.match(renew.output, new RegExp(`nameserver 10\\.214\\.${third}\\.53`), 'the renewal was answered after the restart');
  await t.rejects(pn2.adopt({ ...reqM, netnsPath: '/proc/self/ns/net' }), { code: 'POD_NET_NOT_ATTACHED' }, 'adopt of a netns without a binding');

  await Promise.all([gm.kill(), gb.kill()]);
  // masquerade: detach, then the pod goes; bridge: the pod goes first, then detach
  await pn2.detach(uidM);
  sh('ip', ['netns', 'del', masqPod.netns]);
  sh('ip', ['netns', 'del', bridgePod.netns]);
  await pn2.detach(uidB);
  await pn2.detach(uidB);
  t.same(pn2.attached(), [], 'nothing served');
  t.ok(
    await waitGone(() => !hostLinks().some((l) => l === masqPod.hostVeth || l === bridgePod.hostVeth), 10_000),
    'both netns are destroyed (their veths went with them): no DHCP socket holds them',
  );
  t.same(nftTables(), tablesBefore, "the host's nft tables are unchanged");
  const ruleset = nftRuleset();
  t.notOk(
    [masqPod.podIp, bridgePod.podIp, '10.0.2.', 'k6t-eth0'].some((s) => ruleset.includes(s)),
    "no rule of the host's names a pod address or vmlet's links",
  );
  await t.rejects(pn2.attach(reqM), { code: 'POD_NETNS_NOT_FOUND' }, 'attach to a pod that is gone');
});

t.test('network.allowMetadata reaches the guest filter in a pod', { skip: netSkipReason() ?? false, timeout: 60_000 }, async (t) => {
  const tag = randomBytes(2).toString('hex');
  const third = 1 + (parseInt(tag, 16) % 120);
  const rules = async (allowMetadata: boolean | undefined, suffix: string, at: number): Promise<string> => {
    const pod = makePod(`${tag}${suffix}`, at);
    t.teardown(() => removePod(pod));
    const pn = new PodNetwork(allowMetadata === undefined ? {} : { allowMetadata });
    t.teardown(() => pn.close());
    const uid = randomUUID();
    const att = await pn.attach({
      netnsPath: pod.netnsPath,
      uid,
      hostname: `vm-${suffix}`,
      interfaces: [{ name: 'default', masquerade: {} }],
      networks: [{ name: 'default', pod: {} }],
    });
    closeFds(att.fds.flat());
    const filter = sh('nsenter', [`--net=${pod.netnsPath}`, '--', 'nft', 'list', 'table', 'bridge', 'vmlet']);
    await pn.detach(uid);
    return filter;
  };
  t.match(await rules(undefined, 'd', third), /ip daddr 169\.254\.169\.254 counter name "metadata" drop/, 'by default the metadata address is dropped');
  const allowed = await rules(true, 'a', third + 125);
  t.match(allowed, /ether saddr != /, 'the rest of the guest filter is there');
  t.notMatch(allowed, /169\.254\.169\.254/, 'allowMetadata: true leaves the metadata rule out');
});
