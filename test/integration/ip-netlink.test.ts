// The netlink path of IpTools.ipBatch leaves the same links, addresses and routes as `ip -batch` for the sandbox planners' batches (masquerade and bridge bindings), and stops at the first failing command with its errno.
import { execFileSync } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import t from 'tap';
import { planBinding, planSandboxInside, planSandboxVeth, type SandboxParams } from '../../src/net/commands.js';
import { execRunner } from '../../src/net/exec.js';
import { netlinkSupports, runIpBatchNetlink } from '../../src/net/ip-netlink.js';
import { IpTools } from '../../src/net/ip-tools.js';
import { planNetwork } from '../../src/net/plan.js';
import { isVmletError } from '../../src/errors.js';

function skipReason(): string | null {
  if (process.platform !== 'linux') return 'needs Linux';
  if (process.getuid?.() !== 0) return 'needs root (creates netns, veths, bridges, taps)';
  try {
    execFileSync('ip', ['-V'], { stdio: 'ignore' });
  } catch {
    return 'ip (iproute2) is not installed';
  }
  if (!fs.existsSync('/dev/net/tun')) return '/dev/net/tun is missing';
  return null;
}
const skip = skipReason();

const PREFIX = { netnsPrefix: 'vnlt-', vethPrefix: 'vnlth' };
const tag = randomBytes(3).toString('hex');
/** the host bridge of this test: never vmlet0, never up, no address (nothing leaves the host) */
const BRIDGE = `vnltb${tag}`;
const BINS = { ip: 'ip', nft: 'nft', nsenter: 'nsenter' };

const quiet = (args: string[]): void => {
  try {
    execFileSync('ip', args, { stdio: 'ignore' });
  } catch {
    /* already gone */
  }
};
const ipJson = (args: string[], ns?: string): unknown =>
  JSON.parse(execFileSync('ip', [...(ns !== undefined ? ['-n', ns] : []), '-json', ...args]).toString() || '[]');

/** Everything of this test run, also what a crashed earlier run left. */
function scrub(): void {
  for (const ns of fs.existsSync('/run/netns') ? fs.readdirSync('/run/netns') : []) if (ns.startsWith(PREFIX.netnsPrefix)) quiet(['netns', 'del', ns]);
  for (const l of ipJson(['link', 'show']) as { ifname: string }[]) if (l.ifname.startsWith('vnlt')) quiet(['link', 'del', l.ifname]);
}

/** Values that differ between any two sandboxes made alike: names, indexes, MACs, bridge ids, timers, lifetimes. */
const VOLATILE = new Set([
  'ifindex',
  'link_index',
  'link_netnsid',
  'master',
  'address',
  'perm_address',
  'id',
  'no',
  'bridge_id',
  'root_id',
  'designated_root',
  'designated_bridge',
  'designated_port',
  'root_port',
  'hello_timer',
  'tcn_timer',
  'topology_change_timer',
  'gc_timer',
  'message_age_timer',
  'forward_delay_timer',
  'hold_timer',
  'valid_life_time',
  'preferred_life_time',
  'parentbus',
  'parentdev',
]);
const MAC = /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/;

/**
 * IPv6 link-locals are left out: the kernel adds one when it sees a veth's carrier (linkwatch, up to
 * 1 s late), so whether `addr flush dev eth0` of the bridge binding still finds it is a race with
 * either path.
 */
const isGlobal = (a: unknown): boolean => !(typeof a === 'object' && a !== null && 'local' in a && String(a.local).startsWith('fe80:'));

function normalise(v: unknown, names: Record<string, string>): unknown {
  if (Array.isArray(v)) return v.map((x) => normalise(x, names));
  if (v !== null && typeof v === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) {
      if (VOLATILE.has(k) && !(k === 'master' && typeof x === 'string' && !x.startsWith('vnlt'))) out[k] = '*';
      else if (k === 'addr_info' && Array.isArray(x)) out[k] = normalise(x.filter(isGlobal), names);
      else out[k] = normalise(x, names);
    }
    return out;
  }
  if (typeof v === 'string') return MAC.test(v) ? 'MAC' : (names[v] ?? v);
  return v;
}

interface Made {
  netns: string;
  hostVeth: string;
}

/** One sandbox of `binding` made by the planners' batches through IpTools, with or without netlink. */
async function make(binding: 'masquerade' | 'bridge', netlink: boolean): Promise<Made> {
  const uid = randomUUID();
  const spec = binding === 'masquerade' ? { name: 'default', masquerade: {} } : { name: 'default', bridge: {} };
  const plan = planNetwork([spec], [{ name: 'default', pod: {} }], uid, { names: PREFIX, queues: binding === 'masquerade' ? 2 : 1 });
  const sp: SandboxParams = { names: plan.names, bridge: BRIDGE, address: '10.219.0.5', prefix: 16, gateway: '10.219.0.1', mtu: 1500 };
  const pod = { address: sp.address, prefix: sp.prefix, gateway: sp.gateway, mtu: 1500 };
  const tap = binding === 'masquerade' ? { user: 107, group: 108 } : {};
  const inside = [...planSandboxInside(sp), ...plan.interfaces.flatMap((i) => planBinding(i, pod, tap).ip)];
  const veth = planSandboxVeth(sp);
  if (netlink && !(netlinkSupports(veth) && netlinkSupports(inside))) throw new Error('the planners emit a form the netlink path does not cover');
  const tools = new IpTools(execRunner, BINS, { netlink });
  execFileSync('ip', ['netns', 'add', plan.names.netns]);
  await tools.ipBatch(veth);
  await tools.ipBatch(inside, `/run/netns/${plan.names.netns}`);
  return { netns: plan.names.netns, hostVeth: plan.names.hostVeth };
}

function state(m: Made): unknown {
  const names = { [m.netns]: 'NETNS', [m.hostVeth]: 'HOSTVETH' };
  return normalise(
    {
      links: ipJson(['-details', 'link', 'show'], m.netns),
      addrs: ipJson(['addr', 'show'], m.netns),
      routes: ipJson(['route', 'show'], m.netns),
      hostVeth: ipJson(['-details', 'link', 'show', 'dev', m.hostVeth]),
      hostAddrs: ipJson(['addr', 'show', 'dev', m.hostVeth]),
    },
    names,
  );
}

t.test('netlink and ip -batch leave the same sandbox', { skip: skip ?? false }, async (t) => {
  scrub();
  t.teardown(scrub);
  execFileSync('ip', ['link', 'add', BRIDGE, 'type', 'bridge']);
  for (const binding of ['masquerade', 'bridge'] as const) {
    const byIp = await make(binding, false);
    const byNetlink = await make(binding, true);
    // carrier, operstate and a bridge port's state follow the kernel's linkwatch, up to 1 s late: compare once both settled
    let [a, b] = [state(byIp), state(byNetlink)];
    for (let i = 0; i < 30 && JSON.stringify(a) !== JSON.stringify(b); i++) {
      await new Promise((r) => setTimeout(r, 100));
      [a, b] = [state(byIp), state(byNetlink)];
    }
    t.same(b, a, `${binding}: links, addresses and routes in the netns and of the host veth`);
    const links = (ipJson(['-details', 'link', 'show'], byNetlink.netns) as { ifname: string }[]).map((l) => l.ifname).sort();
    t.same(links, binding === 'masquerade' ? ['eth0', 'k6t-eth0', 'lo', 'tap0'] : ['eth0', 'k6t-eth0', 'lo', 'tap0'], `${binding}: the links are there`);
  }
});

t.test('a command on a missing device fails with ENODEV and stops the batch', { skip: skip ?? false }, async (t) => {
  scrub();
  t.teardown(scrub);
  const ns = `${PREFIX.netnsPrefix}err${tag}`;
  execFileSync('ip', ['netns', 'add', ns]);
  const cmds = [
    ['link', 'set', 'lo', 'up'],
    ['link', 'set', 'nosuchdev0', 'up'],
    ['link', 'add', 'vnltnever', 'type', 'bridge'],
  ];
  t.ok(netlinkSupports(cmds));
  const err = await new IpTools(execRunner, BINS).ipBatch(cmds, `/run/netns/${ns}`).then(
    () => null,
    (e: unknown) => e,
  );
  t.ok(isVmletError(err, 'NET_COMMAND_FAILED'), 'NET_COMMAND_FAILED');
  t.equal(isVmletError(err) ? err.errno : undefined, 'ENODEV', 'errno ENODEV');
  t.match(isVmletError(err) ? err.message : '', /^ip link set nosuchdev0 up: /, 'names the failed command');
  const links = (ipJson(['link', 'show'], ns) as { ifname: string; flags: string[] }[]).map((l) => l.ifname);
  t.same(links, ['lo'], 'the command after it did not run');
  t.ok((ipJson(['link', 'show', 'dev', 'lo'], ns) as { flags: string[] }[])[0]!.flags.includes('UP'), 'the command before it did');
  t.throws(
    () => runIpBatchNetlink([['addr', 'add', '10.219.1.1/24', 'dev', 'nosuchdev0']], `/run/netns/${ns}`),
    { code: 'NET_COMMAND_FAILED', errno: 'ENODEV' },
    'addr add on a missing device',
  );
  t.throws(
    () => runIpBatchNetlink([['link', 'add', 'lo', 'type', 'bridge']], `/run/netns/${ns}`),
    { code: 'NET_COMMAND_FAILED', errno: 'EEXIST' },
    'an existing link',
  );
  const bad = (() => {
    try {
      runIpBatchNetlink(
        [
          ['link', 'add', 'vnltx', 'type', 'bridge'],
          ['link', 'set', 'vnltx', 'mtu', '10'],
        ],
        `/run/netns/${ns}`,
      );
      return null;
    } catch (e) {
      return e;
    }
  })();
  t.match(bad, { code: 'NET_COMMAND_FAILED', errno: 'EINVAL', message: /^ip link set vnltx mtu 10: Invalid argument/ }, 'a bad mtu');
  t.comment(isVmletError(bad) ? bad.message : String(bad));
});
