// The guest filter and the host guard as planned text: rules and counter names present, values pinned to the lease, options honoured, and every name or address that could inject nftables syntax refused.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import t from 'tap';
import { defaultConfig } from '../../src/daemon/config.js';
import { VmNetwork } from '../../src/daemon/vm-network.js';
import { hostNftRuleset, planBinding } from '../../src/net/commands.js';
import type { CommandRunner } from '../../src/net/exec.js';
import {
  GUEST_DROP_COUNTERS,
  guestFilterBody,
  hostGuardBody,
  listCountersArgs,
  METADATA_ADDRESS,
  parseNftCounters,
  sandboxSysctls,
} from '../../src/net/guest-filter.js';
import { bridgeSysctls, ensureHostNetwork } from '../../src/net/host-side.js';
import { IpTools } from '../../src/net/ip-tools.js';
import { planNetwork } from '../../src/net/plan.js';
import { planPodAttach, readPodState } from '../../src/net/pod-plan.js';
import { PodNetwork } from '../../src/net/pod-network.js';

const UID = '3f2a9c1e-7b4d-4e2a-9f00-123456789abc';
const nets = [{ name: 'default', pod: {} }];
const pod = { address: '10.213.0.5', prefix: 16, gateway: '10.213.0.1', mtu: 1500 };
const base = { tap: 'tap0', mac: '02:AA:bb:cc:dd:ee', ip: '10.0.2.2' };

t.test('the guest filter pins MAC, IPv4 and ARP to the lease and names a counter for each drop', async (t) => {
  const text = guestFilterBody(base).join('\n');
  for (const c of GUEST_DROP_COUNTERS) {
    t.match(text, new RegExp(`^  counter ${c} \\{ \\}$`, 'm'), `counter ${c} declared`);
    t.match(text, new RegExp(`counter name "${c}" drop$`, 'm'), `counter ${c} counts a drop`);
  }
  t.match(text, /type filter hook prerouting priority filter; policy accept;\n    iifname "tap0" jump guest\n/, 'only frames from the tap are judged');
  t.match(text, /ether saddr != 02:aa:bb:cc:dd:ee counter name "mac_spoof" drop/, 'the MAC, normalised');
  t.match(
    text,
    /ether type vmap \{ ip : goto guest_ip, arp : goto guest_arp, ip6 : goto guest_ip6 \}\n    counter name "other_proto" drop/,
    'only IPv4, ARP and IPv6 go on',
  );
  t.match(
    text,
    /ip saddr 0\.0\.0\.0 ip daddr 255\.255\.255\.255 udp sport 68 udp dport 67 accept\n    ip saddr != 10\.0\.2\.2 counter name "ip_spoof" drop/,
    '0.0.0.0 only for DHCP',
  );
  t.match(text, /udp sport 67 counter name "dhcp_server" drop/);
  t.match(text, new RegExp(`ip daddr ${METADATA_ADDRESS.replace(/\./g, '\\.')} counter name "metadata" drop\n    accept`));
  t.match(
    text,
    /arp htype 1 arp ptype ip arp hlen 6 arp plen 4 arp saddr ether 02:aa:bb:cc:dd:ee arp saddr ip \{ 10\.0\.2\.2, 0\.0\.0\.0 \} accept\n    counter name "arp_spoof" drop/,
  );
  t.match(text, /icmpv6 type nd-router-advert counter name "router_advert" drop\n    counter name "ipv6" drop/, 'RAs counted apart, all IPv6 dropped');
  t.notMatch(guestFilterBody({ ...base, allowMetadata: true }).join('\n'), /169\.254\.169\.254/, 'allowMetadata drops the metadata rule');
});

t.test('nothing from the outside reaches nft unchecked', async (t) => {
  t.throws(() => guestFilterBody({ ...base, tap: 'tap0" accept #' }), { code: 'NET_INVALID_NAME' });
  t.throws(() => guestFilterBody({ ...base, mac: '02:00:00:00:00:01 accept' }), { code: 'NET_INVALID_MAC' });
  t.throws(() => guestFilterBody({ ...base, mac: '03:00:00:00:00:01' }), { code: 'NET_INVALID_MAC' }, 'a multicast MAC');
  t.throws(() => guestFilterBody({ ...base, ip: '10.0.2.2 } accept' }), { code: 'NET_INVALID_ADDRESS' });
  t.throws(() => guestFilterBody({ ...base, ip: '10.0.2.2, 10.0.2.3' }), { code: 'NET_INVALID_ADDRESS' });
  t.throws(() => hostGuardBody({ bridge: 'vmlet0" accept' }), { code: 'NET_INVALID_NAME' });
  t.throws(() => hostGuardBody({ bridge: 'vmlet0', dnsServers: ['1.1.1.1 } accept'] }), { code: 'NET_INVALID_ADDRESS' });
  t.throws(() => bridgeSysctls('../../../kernel'), { code: 'NET_INVALID_NAME' }, 'no path outside net/ipv4');
  t.throws(() => listCountersArgs('bridge', 'vmlet; flush ruleset'), { code: 'NET_INVALID_NAME' });
  const iface = planNetwork([{ name: 'default', bridge: {} }], nets, UID).interfaces[0]!;
  t.throws(() => planBinding({ ...iface, mac: '02:00:00:00:00:01 accept' }, pod), { code: 'NET_INVALID_MAC' });
  t.throws(() => planBinding({ ...iface, tap: 'tap0"' }, pod), { code: 'NET_INVALID_NAME' });
  t.throws(() => planBinding(iface, { ...pod, address: '10.213.0.5 accept' }), { code: 'NET_INVALID_ADDRESS' });
});

t.test('both bindings load the guest filter with their own guest address', async (t) => {
  const m = planNetwork([{ name: 'default', masquerade: {} }], nets, UID).interfaces[0]!;
  const mb = planBinding(m, pod);
  t.match(
    mb.nft,
    /\ntable bridge vmlet \{\}\ndelete table bridge vmlet\ntable bridge vmlet \{\n  counter mac_spoof/,
    'masquerade: a bridge table beside the NAT table',
  );
  t.match(mb.nft, /ip saddr != 10\.0\.2\.2 counter name "ip_spoof" drop/, 'masquerade: the guest network address');
  t.match(mb.nft, new RegExp(`ether saddr != ${m.mac} `));
  const b = planNetwork([{ name: 'default', bridge: {}, macAddress: '02:00:00:aa:bb:cc' }], nets, UID).interfaces[0]!;
  const bb = planBinding(b, pod);
  t.equal(bb.nft!.match(/^table bridge vmlet \{$/gm)?.length, 1, 'bridge: one table holds the filter and the DHCP confinement');
  t.match(bb.nft, /ip saddr != 10\.213\.0\.5 counter name "ip_spoof" drop/, 'bridge: the sandbox address the guest leases');
  t.match(bb.nft, /ether saddr != 02:00:00:aa:bb:cc /);
  t.match(bb.nft, /metadata/);
  t.notMatch(planBinding(b, pod, {}, 'vmlet', { allowMetadata: true }).nft, /169\.254\.169\.254/, 'extras.allowMetadata');
});

t.test('a pod binding pins the guest to the pod IP and the MAC it took from eth0', async (t) => {
  const state = readPodState(
    [{ ifname: 'eth0', mtu: 1450, address: '4e:40:36:1f:3b:43', addr_info: [{ family: 'inet', local: '10.244.1.7', prefixlen: 24, scope: 'global' }] }],
    [{ dst: 'default', gateway: '10.244.1.1', dev: 'eth0' }],
    { podInterface: 'eth0', bridge: 'k6t-eth0', tap: 'tap0' },
  );
  const spec = [{ name: 'default', bridge: {} }];
  const p = planPodAttach(planNetwork(spec, nets, UID), spec, state, 'vmlet');
  t.match(p.binding.nft, /ether saddr != 4e:40:36:1f:3b:43 counter name "mac_spoof" drop/);
  t.match(p.binding.nft, /ip saddr != 10\.244\.1\.7 counter name "ip_spoof" drop/);
  t.match(p.binding.nft, /ip daddr 169\.254\.169\.254 counter name "metadata" drop/, 'metadata dropped in pods too');
  t.same(p.ip[p.ip.length - 1], ['route', 'add', '10.244.1.7/32', 'dev', 'k6t-eth0'], 'the way back to the guest for strict rp_filter');
});

t.test('the host guard: no new connections from the bridge into the host, unless allowed', async (t) => {
  const guard = hostGuardBody({ bridge: 'vmlet0', dnsServers: ['10.213.0.1', '192.0.2.53'] }).join('\n');
  t.match(guard, /^  counter guest_to_host \{ \}$/m);
  t.match(
    guard,
    /type filter hook input priority filter; policy accept;\n    iifname "vmlet0" ct state established,related accept\n/,
    'replies to the host pass',
  );
  t.match(guard, /iifname "vmlet0" icmp type echo-request accept/, 'the gateway answers ping');
  t.match(guard, /iifname "vmlet0" ip daddr \{ 10\.213\.0\.1, 192\.0\.2\.53 \} meta l4proto \{ tcp, udp \} th dport 53 accept/, 'DNS to the given servers');
  t.match(guard, /iifname "vmlet0" counter name "guest_to_host" drop\n  \}$/, 'the rest is dropped');
  t.notMatch(guard, /chain forward/, 'forwarding is left alone by default');
  t.notMatch(hostGuardBody({ bridge: 'vmlet0' }).join('\n'), /dport 53/, 'no nameserver, no DNS rule');
  t.same(hostGuardBody({ bridge: 'vmlet0', allowHostAccess: true }), [], 'allowHostAccess: no input chain');
  const noUplink = hostGuardBody({ bridge: 'vmlet0', allowHostAccess: true, blockUplink: true }).join('\n');
  t.match(noUplink, /type filter hook forward priority filter; policy accept;\n    iifname "vmlet0" oifname != "vmlet0" counter name "guest_to_uplink" drop/);
  const ruleset = hostNftRuleset({ bridge: 'vmlet0', subnet: '10.213.0.0/16', nftTable: 'vmlet', dnsServers: ['10.213.0.1'], blockUplink: true });
  t.match(ruleset, /chain postrouting[^]*chain input[^]*chain forward[^]*\n\}\n$/, 'NAT and guard in one table, replaced together');
});

t.test('sysctls: strict rp_filter in every sandbox, proxy ARP and forwarding on the host bridge', async (t) => {
  t.same(sandboxSysctls(false), [
    ['conf/all/rp_filter', '1'],
    ['conf/default/rp_filter', '1'],
  ]);
  t.same(sandboxSysctls(true)[0], ['ip_forward', '1']);
  t.same(bridgeSysctls('vmlet0'), [
    ['conf/vmlet0/forwarding', '1'],
    ['conf/vmlet0/proxy_arp', '1'],
    ['conf/vmlet0/proxy_arp_pvlan', '1'],
    ['conf/vmlet0/rp_filter', '1'],
    ['neigh/vmlet0/proxy_delay', '0'],
  ]);
});

t.test('drop counters are read from nft -j', async (t) => {
  const json = JSON.stringify({
    nftables: [
      { metainfo: { version: '1.0.6', json_schema_version: 1 } },
      { counter: { family: 'bridge', name: 'mac_spoof', table: 'vmlet', handle: 1, packets: 3, bytes: 180 } },
      { counter: { family: 'bridge', name: 'ipv6', table: 'vmlet', handle: 2, packets: 0, bytes: 0 } },
      { table: { family: 'bridge', name: 'vmlet' } },
    ],
  });
  t.same(parseNftCounters(json), { mac_spoof: { packets: 3, bytes: 180 }, ipv6: { packets: 0, bytes: 0 } });
  t.same(parseNftCounters('{}'), {});
  t.throws(() => parseNftCounters('not json'), { code: 'NET_COMMAND_FAILED' });
  t.same(listCountersArgs('ip', 'vmlet'), ['-j', 'list', 'counters', 'table', 'ip', 'vmlet']);

  const calls: string[][] = [];
  const runner: CommandRunner = async (bin, args) => {
    calls.push([bin, ...args]);
    return { stdout: json, stderr: '' };
  };
  const pn = new PodNetwork({ runner, nftTable: 'vmlet_x' });
  t.same(await pn.guestDrops('/proc/1/ns/net'), { mac_spoof: { packets: 3, bytes: 180 }, ipv6: { packets: 0, bytes: 0 } });
  t.same(calls, [['nsenter', '--net=/proc/1/ns/net', '--', 'nft', '-j', 'list', 'counters', 'table', 'bridge', 'vmlet_x']], 'read inside the pod netns');
  await pn.close();
});

t.test('ensureHostNetwork: sysctls written, the uplink closed only when nobody forwards', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-hostside-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const v4 = path.join(dir, 'sys/net/ipv4');
  for (const d of ['conf/vmltest0', 'neigh/vmltest0']) fs.mkdirSync(path.join(v4, d), { recursive: true });
  const rulesets: string[] = [];
  const runner: CommandRunner = async (bin, args, input) => {
    if (bin === 'nft') rulesets.push(input ?? '');
    return { stdout: args[0] === '-json' ? '[]' : '', stderr: '' };
  };
  const tools = new IpTools(runner, { ip: 'ip', nft: 'nft', nsenter: 'nsenter' });
  const log = { info: () => {}, warn: () => {}, debug: () => {} };
  const params = { bridge: 'vmltest0', subnet: '10.214.250.0/24', nftTable: 'vmlet_u', dnsServers: ['10.214.250.1'] };
  const run = (forwarding: string, hostForwarding: boolean) => {
    fs.writeFileSync(path.join(v4, 'ip_forward'), forwarding);
    return ensureHostNetwork({ tools, params, proc: dir, hostForwarding, log });
  };
  await run('0', false);
  t.match(
    rulesets[0],
    /oifname != "vmltest0" counter name "guest_to_uplink" drop/,
    'host forwarding off and vmlet may not turn it on: guests stay off the uplink',
  );
  t.match(rulesets[0], /counter name "guest_to_host" drop/);
  t.equal(fs.readFileSync(path.join(v4, 'ip_forward'), 'utf8'), '0', 'the host switch untouched');
  for (const [rel, v] of bridgeSysctls('vmltest0')) t.equal(fs.readFileSync(path.join(v4, rel), 'utf8'), v, `${rel} written`);
  await run('1', false);
  t.notMatch(rulesets[1], /guest_to_uplink/, 'the host forwards already: the uplink stays open');
  await run('0', true);
  t.notMatch(rulesets[2], /guest_to_uplink/, 'hostForwarding: vmlet turns forwarding on');
  t.equal(fs.readFileSync(path.join(v4, 'ip_forward'), 'utf8'), '1');
});

t.test('the daemon config reaches the host table: network.allowHostAccess', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-vmnet-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const v4 = path.join(dir, 'proc/sys/net/ipv4');
  for (const d of ['conf/vmltest1', 'neigh/vmltest1']) fs.mkdirSync(path.join(v4, d), { recursive: true });
  fs.writeFileSync(path.join(v4, 'ip_forward'), '1');
  const rulesets: string[] = [];
  const runner: CommandRunner = async (bin, args, input) => {
    if (bin === 'nft') rulesets.push(input ?? '');
    return { stdout: args[0] === '-json' ? '[]' : '', stderr: '' };
  };
  const network = {
    ...defaultConfig('/repo').network,
    bridge: 'vmltest1',
    subnet: '10.214.251.0/24',
    nftTable: 'vmlet_u1',
    hostForwarding: false,
    dnsServers: [],
  };
  for (const allowHostAccess of [false, true]) {
    const stateDir = fs.mkdtempSync(path.join(dir, 'state-'));
    const vn = new VmNetwork({
      config: { ...network, allowHostAccess },
      stateDir,
      logger: pino({ level: 'silent' }),
      runner,
      paths: { proc: path.join(dir, 'proc') },
    });
    await vn.start();
    await vn.close();
  }
  t.match(rulesets[0], /counter name "guest_to_host" drop/, 'default: guests are kept off the host');
  t.notMatch(rulesets[1], /chain input/, 'allowHostAccess: true: no guard');
});
