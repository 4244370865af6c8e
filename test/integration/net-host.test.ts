// Host side of the net library on the real kernel: subnet clash, nftables isolation, sandbox objects, multiqueue taps, adopt after a restart.
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import t from 'tap';
import { defaultConfig } from '../../src/daemon/config.js';
import { VmNetwork } from '../../src/daemon/vm-network.js';
import { NetManager } from '../../src/net/sandbox.js';
import { isVmletError } from '../../src/errors.js';
import { closeFds, ipJson, netSkipReason, scrubTestNet, startedManager, testNet } from '../support/net-env.js';

const skip = netSkipReason();

function nsExec(netnsPath: string, args: string[]): string {
  return execFileSync('nsenter', [`--net=${netnsPath}`, '--', ...args]).toString();
}

function tables(): string[] {
  return execFileSync('nft', ['list', 'tables']).toString().trim().split('\n').filter(Boolean);
}

const masq = { interfaces: [{ name: 'default', masquerade: {} }], networks: [{ name: 'default', pod: {} }] };

t.test('subnet clash is refused before anything is created', { skip: skip ?? false }, async (t) => {
  const one = testNet();
  const mgr = new NetManager(one.opts);
  t.teardown(() => {
    scrubTestNet(one);
    one.cleanup();
  });
  await mgr.start();
  // a second node config on the same subnet clashes with the first bridge's route
  const two = testNet();
  two.opts.subnet = one.subnet.replace(/\.0\/24$/, '.128/25');
  t.teardown(() => {
    scrubTestNet(two);
    two.cleanup();
  });
  const mgr2 = new NetManager(two.opts);
  const err = await mgr2.start().then(
    () => null,
    (e: unknown) => e,
  );
  t.ok(isVmletError(err, 'NET_SUBNET_CLASH'), 'NET_SUBNET_CLASH');
  t.match((err as Error).message, new RegExp(`${one.subnet.replace(/[./]/g, '\\$&')} dev ${one.opts.bridge}`), 'the message names the route');
  t.same(
    ipJson<unknown[]>(['link', 'show']).filter((l) => (l as { ifname: string }).ifname === two.opts.bridge),
    [],
    'no bridge created',
  );
  t.notOk(
    tables().some((l) => l.endsWith(` ${two.opts.nftTable}`)),
    'no nft table created',
  );
  await mgr.removeHost();
});

t.test("removing vmlet's NAT table leaves other tables alone", { skip: skip ?? false }, async (t) => {
  const tn = testNet();
  const other = `vmlet-test-other-${tn.tag}`;
  execFileSync('nft', ['-f', '-'], { input: `table inet ${other} {\n  chain c { type filter hook input priority 0; policy accept; }\n}\n` });
  const mgr = new NetManager(tn.opts);
  t.teardown(() => {
    try {
      execFileSync('nft', ['delete', 'table', 'inet', other]);
    } catch {
      /* gone */
    }
    scrubTestNet(tn);
    tn.cleanup();
  });
  const before = tables();
  await mgr.start();
  await mgr.start(); // idempotent: the table is replaced, the bridge kept
  const ruleset = execFileSync('nft', ['list', 'table', 'ip', tn.opts.nftTable!]).toString();
  t.match(
    ruleset,
    new RegExp(`ip saddr ${tn.subnet.replace(/[./]/g, '\\$&')} ip daddr != ${tn.subnet.replace(/[./]/g, '\\$&')} oifname != "${tn.opts.bridge}" masquerade`),
    'masquerade rule',
  );
  const br = ipJson<{ addr_info: { local: string; prefixlen: number }[] }[]>(['addr', 'show', 'dev', tn.opts.bridge!]);
  t.same(
    br[0]?.addr_info.filter((a) => a.local.startsWith('10.')).map((a) => `${a.local}/${a.prefixlen}`),
    [tn.subnet.replace('.0/24', '.1/24')],
    'bridge has the gateway address once',
  );
  await mgr.removeHost();
  t.same(tables(), before, 'table list as before');
  t.ok(tables().includes(`table inet ${other}`), 'the other table survives');
  t.same(
    ipJson<unknown[]>(['link', 'show']).filter((l) => (l as { ifname: string }).ifname === tn.opts.bridge),
    [],
    'bridge removed',
  );
});

t.test('sandboxes, multiqueue taps, bad specs and adopt after a restart', { skip: skip ?? false }, async (t) => {
  const { tn, mgr } = await startedManager(t);
  const forwardBefore = fs.readFileSync('/proc/sys/net/ipv4/ip_forward', 'utf8');

  // bad input: nothing is created
  const bad = randomUUID();
  await t.rejects(mgr.setup({ uid: bad, interfaces: [{ name: 'x', masquerade: {} }], networks: [{ name: 'default', pod: {} }] }), {
    code: 'NET_INTERFACE_WITHOUT_NETWORK',
  });
  await t.rejects(mgr.setup({ uid: bad, interfaces: [{ name: 'default', slirp: {} }], networks: [{ name: 'default', pod: {} }] }), {
    code: 'NET_UNKNOWN_BINDING',
  });
  await t.rejects(
    mgr.setup({ uid: bad, interfaces: [{ name: 'default', masquerade: {}, macAddress: '01:00:5e:00:00:01' }], networks: [{ name: 'default', pod: {} }] }),
    { code: 'NET_INVALID_MAC' },
  );
  t.equal(mgr.get(bad), undefined, 'no lease for a refused spec');
  t.notOk(fs.existsSync(`/run/netns/${tn.opts.names!.netnsPrefix}${bad.slice(0, 8)}`), 'no netns for a refused spec');

  const [u1, u2, u3] = [randomUUID(), randomUUID(), randomUUID()];
  const times: number[] = [];
  const setup = async (uid: string, spec: typeof masq, queues = 1): Promise<void> => {
    const t0 = Date.now();
    await mgr.setup({ uid, hostname: `vm-${uid.slice(0, 4)}`, ...spec, plan: { queues } });
    times.push(Date.now() - t0);
  };
  await setup(u1, masq);
  // As the daemon asks: the netns and its taps first; the links, the ruleset (NAT, guest filter) and DHCP while QEMU starts.
  const later = await mgr.setup({ uid: u2, hostname: `vm-${u2.slice(0, 4)}`, ...masq, plan: { queues: 1 }, finishLater: true });
  t.ok(later.finished, 'finishLater: the rest comes as a promise');
  t.match(nsExec(later.netnsPath, ['ip', '-details', 'link', 'show', 'tap0']), /tun type tap/, 'the tap is there on return');
  closeFds(mgr.openTapFds(u2));
  t.same(
    mgr.get(u2)?.interfaces.map((i) => i.tap),
    ['tap0'],
    'and the lease names it',
  );
  // A caller that reuses the sandbox in this window (VmNetwork.prepare does) gets the same gate.
  t.equal(mgr.get(u2)?.finished, later.finished, 'a look while it is being finished carries the gate');
  await later.finished;
  t.match(nsExec(later.netnsPath, ['nft', 'list', 'table', 'ip', tn.opts.nftTable!]), /dnat to 10\.0\.2\.2/, 'the ruleset in place once it resolved');
  t.match(nsExec(later.netnsPath, ['ip', '-details', 'link', 'show', 'tap0']), /master k6t-eth0/, 'the tap on the sandbox bridge');
  t.ok(
    ipJson<{ ifname: string }[]>(['link', 'show', 'master', tn.opts.bridge!]).some((l) => l.ifname === later.hostVeth),
    'the veth on the host bridge',
  );
  t.ok(mgr.dhcp.keys().includes(`${u2}/default`), 'DHCP serves it');
  t.equal(mgr.get(u2)?.finished, undefined, 'a later look at the sandbox has no promise');
  await setup(u3, { interfaces: [{ name: 'default', bridge: {} } as never], networks: [{ name: 'default', pod: {} }] }, 2);
  t.comment(`sandbox setup times (ms): ${times.join(', ')}`);
  const s1 = mgr.get(u1)!;
  const s3 = mgr.get(u3)!;
  t.not(s1.address, mgr.get(u2)!.address, 'distinct addresses');
  const nft1 = nsExec(s1.netnsPath, ['nft', 'list', 'table', 'ip', tn.opts.nftTable!]);
  t.match(nft1, /iifname "eth0" ip daddr [0-9.]+ dnat to 10\.0\.2\.2/, 'all-ports DNAT in the sandbox');
  t.match(nft1, /ip saddr 10\.0\.2\.0\/24 oifname "eth0" masquerade/, 'guest masqueraded to the sandbox address');
  t.equal(nsExec(s1.netnsPath, ['cat', '/proc/sys/net/ipv4/ip_forward']).trim(), '1', 'forwarding on inside the sandbox');
  t.equal(fs.readFileSync('/proc/sys/net/ipv4/ip_forward', 'utf8'), forwardBefore, 'host forwarding untouched (hostForwarding: false)');
  const eth3 = JSON.parse(nsExec(s3.netnsPath, ['ip', '-json', 'addr', 'show', 'dev', 'eth0'])) as { master?: string; addr_info: { family: string }[] }[];
  t.equal(eth3[0]?.master, 'k6t-eth0', 'bridge binding: eth0 on k6t-eth0');
  t.same(
    eth3[0]?.addr_info.filter((a) => a.family === 'inet'),
    [],
    'bridge binding: eth0 has no IPv4 address any more',
  );
  const fds = mgr.openTapFds(u3);
  t.equal(fds.length, 2, 'two queues → two tap fds');
  closeFds(fds);
  t.match(nsExec(s3.netnsPath, ['ip', '-details', 'link', 'show', 'tap0']), /multi_queue/, 'multi_queue tap');

  // strays vmlet would have left behind
  const strayNs = `${tn.opts.names!.netnsPrefix}deadbeef`;
  const strayVeth = `${tn.opts.names!.vethPrefix}deadbeef`;
  execFileSync('ip', ['netns', 'add', strayNs]);
  execFileSync('ip', ['link', 'add', strayVeth, 'type', 'veth', 'peer', 'name', `${strayVeth.slice(0, 12)}p`]);
  execFileSync('ip', ['link', 'set', strayVeth, 'master', tn.opts.bridge!]);

  // restart: a new manager on the same state dir
  await mgr.close();
  const again = new NetManager(tn.opts);
  t.teardown(() => again.close());
  await again.start();
  const res = await again.adopt([u1, u3, 'never-created']);
  t.same(res.kept.sort(), [u1, u3].sort(), 'live sandboxes kept');
  t.same(res.missing, [], 'nothing missing');
  t.same(res.removed.sort(), [u2, strayNs, strayVeth].sort(), 'stale lease, stray netns and stray veth removed');
  t.same(again.dhcp.keys().sort(), [`${u1}/default`, `${u3}/default`].sort(), 'DHCP serves the kept sandboxes again');
  t.ok(fs.existsSync(s1.netnsPath) && fs.existsSync(s3.netnsPath), 'kept netns still there');
  t.same(
    ipJson<{ ifname: string }[]>(['link', 'show', 'master', tn.opts.bridge!])
      .map((l) => l.ifname)
      .sort(),
    [s1.hostVeth, s3.hostVeth].sort(),
    'only the kept veths on the bridge',
  );
  t.equal(again.get(u1)?.address, s1.address, 'address survives the restart');

  await again.teardown(u1);
  await again.teardown(u3);
  await again.teardown(u3); // idempotent
  t.same(ipJson<unknown[]>(['link', 'show', 'master', tn.opts.bridge!]), [], 'bridge empty');
  t.same(
    (fs.existsSync('/run/netns') ? fs.readdirSync('/run/netns') : []).filter((n) => n.startsWith(tn.opts.names!.netnsPrefix)),
    [],
    'no netns left',
  );
  await again.removeHost();
});

t.test('finishLater: a step that fails after the taps rejects `finished`; teardown waits for it and removes everything', { skip: skip ?? false }, async (t) => {
  const { tn, mgr } = await startedManager(t);
  // the host bridge gone: the veth cannot join it
  execFileSync('ip', ['link', 'del', tn.opts.bridge!]);
  const uid = randomUUID();
  const s = await mgr.setup({ uid, hostname: 'vm-broken', ...masq, plan: { queues: 1 }, finishLater: true });
  t.ok(fs.existsSync(s.netnsPath), 'the netns and its taps were made');
  const teardown = mgr.teardown(uid);
  await t.rejects(s.finished!, { code: 'NET_COMMAND_FAILED' }, 'the failed step rejects finished');
  await teardown;
  t.notOk(fs.existsSync(s.netnsPath), 'no netns left');
  t.equal(mgr.get(uid), undefined, 'no lease left');
  t.notOk(
    ipJson<{ ifname: string }[]>(['link', 'show']).some((l) => l.ifname === s.hostVeth),
    'no host veth left',
  );
});

t.test(
  'a sandbox left unfinished (the daemon stopped in the finishLater window) is missing at adopt, and its first cont is refused',
  { skip: skip ?? false },
  async (t) => {
    const tn = testNet();
    t.teardown(() => {
      scrubTestNet(tn);
      tn.cleanup();
    });
    const mgr = new NetManager(tn.opts);
    await mgr.start();
    const [done, unfinished] = [randomUUID(), randomUUID()];
    await mgr.setup({ uid: done, hostname: 'vm-done', ...masq, plan: { queues: 1 } });
    const s = await mgr.setup({ uid: unfinished, hostname: 'vm-cut', ...masq, plan: { queues: 1 }, finishLater: true });
    await s.finished;
    await mgr.close();
    // What a kill before the lease's last write leaves: the lease names no interface.
    const file = path.join(tn.stateDir, 'net-leases.json');
    const state = JSON.parse(fs.readFileSync(file, 'utf8')) as { leases: Record<string, { interfaces?: unknown[] }> };
    delete state.leases[unfinished]!.interfaces;
    fs.writeFileSync(file, JSON.stringify(state));

    const o = tn.opts;
    const net = new VmNetwork({
      config: {
        ...defaultConfig('/repo').network,
        subnet: o.subnet!,
        bridge: o.bridge!,
        nftTable: o.nftTable!,
        netnsPrefix: o.names!.netnsPrefix,
        vethPrefix: o.names!.vethPrefix,
        hostForwarding: false,
      },
      stateDir: tn.stateDir,
      logger: pino({ level: 'silent' }),
    });
    await net.start();
    t.teardown(() => net.close());
    const res = await net.adopt([done, unfinished]);
    t.same(res?.kept, [done], 'the finished sandbox is kept');
    t.same(res?.missing, [unfinished], 'the unfinished one is missing');
    t.ok(fs.existsSync(s.netnsPath), 'its netns stays until the VM is released');
    t.equal(net.resumeGate(done), undefined, 'nothing holds a whole sandbox');
    await t.rejects(net.resumeGate(unfinished)!, { code: 'NET_SANDBOX_UNFINISHED', message: /start the VMI again/ });
    await net.teardown(unfinished);
    t.notOk(fs.existsSync(s.netnsPath), 'released');

    // A second prepare while the first one's sandbox is still being finished reuses it, gate and all.
    const again = randomUUID();
    const vmi = {
      apiVersion: 'kubevirt.io/v1',
      kind: 'VirtualMachineInstance',
      metadata: { name: 'vm-twice', namespace: 'default', uid: again },
      spec: { domain: { devices: { interfaces: masq.interfaces } }, networks: masq.networks },
    } as never;
    const first = await net.prepare(vmi, { fdBase: 0, accel: 'tcg' });
    // a single-queue tap opens once at a time (as when the first launch's QEMU is gone)
    closeFds(first?.fds ?? []);
    const second = await net.prepare(vmi, { fdBase: 0, accel: 'tcg' });
    closeFds(second?.fds ?? []);
    t.ok(first?.networkFinished, 'the first launch has a gate');
    t.equal(second?.networkFinished, first?.networkFinished, 'the second launch waits for the same one');
    t.equal(second?.netnsPath, first?.netnsPath, 'in the same sandbox');
    await first?.networkFinished;
    await net.teardown(again);
  },
);
