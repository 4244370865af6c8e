// Two VMs through the real daemon with networking on: DHCP from the daemon, masquerade and bridge reachability, the gateway, VM to VM, status.interfaces, a daemon kill -9, a QEMU that dies, and a delete that leaves nothing.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import YAML from 'yaml';
import { daemonSkipReason, startTestDaemon, vmiObject, waitFor, type KubeObj, type TestDaemon } from '../support/daemon.js';
import { daemonNetConfig, httpGet, httpGetRetry, netSkipReason, testNetFor, testNetObjects } from '../support/net-env.js';

const skip = daemonSkipReason() || netSkipReason() || false;
// busybox-static's wget crashes in the test guest (static glibc); nc does plain HTTP fine
const GET = "printf 'GET / HTTP/1.0\\r\\n\\r\\n'";
const BOUND_RE = /vmlet-guest: eth0 (\S+)\/(\d+) router (\S+) \(dhcp\)/;

interface LeaseFile {
  next: string;
  leases: Record<string, { address: string; interfaces?: Array<{ name: string; mac: string; dhcp?: { acquiredAt: string; clientMac: string } }> }>;
}

function netVmi(name: string, iface: Record<string, unknown>): string {
  const o = vmiObject(name);
  const spec = o.spec as { domain: { devices: Record<string, unknown> }; networks?: unknown };
  spec.domain.devices.interfaces = [{ name: 'default', ...iface }];
  spec.networks = [{ name: 'default', pod: {} }];
  return YAML.stringify(o);
}

let seq = 0;
/** Types one command line on the VMI's serial console (through `vmlet console`) and reads its output and exit status from the console log. */
async function guestRun(d: TestDaemon, name: string, uid: string, command: string, timeoutMs = 30_000): Promise<{ output: string; status: number }> {
  const n = ++seq;
  const from = d.consoleText(uid).length;
  // the marker is split in the typed text, so only the shell's output carries it whole
  await d.cli(['console', name], { input: `${command}; echo __VMR""${n}__ $?\n`, timeoutMs: 20_000 });
  const re = new RegExp(`__VMR${n}__ (\\d+)`);
  const m = await waitFor(`"${command}" to finish in ${name}`, () => re.exec(d.consoleText(uid).slice(from)) ?? undefined, timeoutMs, 100);
  const text = d.consoleText(uid).slice(from);
  return { output: text.slice(0, m.index).replace(/\r/g, ''), status: Number(m[1]) };
}

function leases(d: TestDaemon): LeaseFile {
  return JSON.parse(fs.readFileSync(path.join(d.stateDir, 'net-leases.json'), 'utf8')) as LeaseFile;
}

t.test('VMs on masquerade and bridge through the daemon', { skip, timeout: 300_000 }, async (t) => {
  const tn = testNetFor(t);
  const d = await startTestDaemon(t, { config: { network: daemonNetConfig(tn) } });

  await d.apply(netVmi('net-a', { masquerade: {}, ports: [{ port: 80 }] }));
  await d.apply(netVmi('net-b', { bridge: {}, macAddress: '02:00:00:aa:bb:cc' }));
  const [a, b] = await Promise.all([d.waitPhase('net-a', 'Running', 60_000), d.waitPhase('net-b', 'Running', 60_000)]);
  const ifA = a.status?.interfaces?.[0];
  const ifB = b.status?.interfaces?.[0];
  const addrA = ifA?.ipAddress ?? '';
  const addrB = ifB?.ipAddress ?? '';
  t.match(ifA, { name: 'default', mac: /^02:/, ipAddress: /^10\.214\./, ipAddresses: [addrA] }, 'status.interfaces of A: name, derived MAC, sandbox address');
  t.match(ifB, { name: 'default', mac: '02:00:00:aa:bb:cc', ipAddress: /^10\.214\./, ipAddresses: [addrB] }, 'status.interfaces of B: the MAC from the spec');
  t.not(addrA, addrB, 'two sandboxes, two addresses');
  const gateway = tn.subnet.replace(/0\/24$/, '1');

  await t.test('the guests take their addresses from the daemon', async (t) => {
    await Promise.all([
      waitFor('guest A to bind by DHCP', () => BOUND_RE.test(d.consoleText(a.metadata.uid)), 90_000),
      waitFor('guest B to bind by DHCP', () => BOUND_RE.test(d.consoleText(b.metadata.uid)), 90_000),
    ]);
    t.same(BOUND_RE.exec(d.consoleText(a.metadata.uid))?.slice(1), ['10.0.2.2', '24', '10.0.2.1'], 'A (masquerade) got 10.0.2.2/24 via 10.0.2.1');
    t.same(BOUND_RE.exec(d.consoleText(b.metadata.uid))?.slice(1), [addrB, '24', gateway], 'B (bridge) got the sandbox address itself');
    const file = await waitFor(
      'both DHCP leases in the lease file',
      () => {
        const f = leases(d);
        return f.leases[a.metadata.uid]?.interfaces?.[0]?.dhcp && f.leases[b.metadata.uid]?.interfaces?.[0]?.dhcp ? f : undefined;
      },
      10_000,
    );
    t.equal(file.leases[a.metadata.uid]?.interfaces?.[0]?.dhcp?.clientMac, ifA?.mac, "A's lease is recorded with its MAC");
    t.equal(file.leases[b.metadata.uid]?.address, addrB, "B's lease holds its address");
    const host = await guestRun(d, 'net-a', a.metadata.uid, 'hostname; cat /etc/resolv.conf');
    t.match(host.output, /net-a/, 'the host name came with the lease');
    t.match(host.output, new RegExp(`nameserver ${tn.opts.dns!.nameservers[0]!.replace(/\./g, '\\.')}`), 'DNS servers from the daemon config');
    t.match(host.output, /search lab\.vmlet\.test/, 'the DNS domain from the daemon config');
  });

  await t.test('status.interfaces from the guest agent', async (t) => {
    const withAgent = await d.waitPhase('net-b', 'Running', 60_000, (o) => o.status?.interfaces?.[0]?.interfaceName !== undefined);
    t.match(
      withAgent.status?.interfaces?.[0],
      { interfaceName: 'eth0', infoSource: 'domain, guest-agent', ipAddress: addrB },
      'B: the guest names eth0 and holds the sandbox address',
    );
  });

  await t.test('host → sandbox address', async (t) => {
    const viaNat = await httpGetRetry(addrA, 80, 30_000);
    t.match(viaNat.body, /VMLET-GUEST-HTTP-OK/, "masquerade: the sandbox address's port 80 is the guest's httpd");
    const direct = await httpGetRetry(addrB, 80, 30_000);
    t.match(direct.body, /VMLET-GUEST-HTTP-OK/, 'bridge: the sandbox address is the guest');
    await guestRun(d, 'net-a', a.metadata.uid, 'httpd -p 8080 -h /www');
    const local = await guestRun(d, 'net-a', a.metadata.uid, `${GET} | nc -w 5 127.0.0.1 8080`);
    t.match(local.output, /VMLET-GUEST-HTTP-OK/, 'A serves 8080 inside the guest');
    await t.rejects(httpGet(addrA, 8080, 2000), 'port 8080 is not listed in ports, so it is not forwarded');
  });

  await t.test('the guests reach the gateway and each other', async (t) => {
    t.equal((await guestRun(d, 'net-a', a.metadata.uid, `ping -c 1 -W 3 ${gateway}`)).status, 0, `A reaches the ${tn.opts.bridge} gateway ${gateway}`);
    t.equal((await guestRun(d, 'net-b', b.metadata.uid, `ping -c 1 -W 3 ${gateway}`)).status, 0, `B reaches the gateway ${gateway}`);
    const aToB = await guestRun(d, 'net-a', a.metadata.uid, `${GET} | nc -w 5 ${addrB} 80`);
    t.match(aToB.output, /VMLET-GUEST-HTTP-OK/, "A reaches B's httpd at B's sandbox address");
    const bToA = await guestRun(d, 'net-b', b.metadata.uid, `${GET} | nc -w 5 ${addrA} 80`);
    t.match(bToA.output, /VMLET-GUEST-HTTP-OK/, "B reaches A's httpd at A's sandbox address");
  });

  await t.test('multiqueue: one tap queue per vCPU', async (t) => {
    const o = vmiObject('net-mq');
    const spec = o.spec as { domain: { cpu: unknown; devices: Record<string, unknown> } };
    spec.domain.cpu = { cores: 2 };
    spec.domain.devices.networkInterfaceMultiqueue = true;
    await d.apply(YAML.stringify(o));
    const mq = await d.waitPhase('net-mq', 'Running', 60_000);
    const pid = mq.status!.vmlet!.qemuPid!;
    const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    t.ok(
      argv.some((a) => /^tap,id=net0,fds=3:4$/.test(a)),
      'QEMU gets two tap fds',
    );
    t.ok(
      argv.some((a) => /^virtio-net-pci,.*,mq=on,vectors=6,romfile=$/.test(a)),
      'and a multiqueue virtio NIC without an option ROM (interfaces are no boot devices)',
    );
    t.same(
      ['3', '4'].map((fd) => fs.readlinkSync(`/proc/${pid}/fd/${fd}`)),
      ['/dev/net/tun', '/dev/net/tun'],
      'fds 3 and 4 are the tap queues',
    );
    await waitFor('net-mq to bind by DHCP', () => BOUND_RE.test(d.consoleText(mq.metadata.uid)), 90_000);
    const q = await guestRun(d, 'net-mq', mq.metadata.uid, 'ls /sys/class/net/eth0/queues');
    t.match(q.output, /rx-0\s+rx-1\s+tx-0\s+tx-1/, 'the guest sees two queue pairs');
    await d.cliOk(['delete', 'vmi', 'net-mq']);
    await d.waitGone('vmi', 'net-mq', 60_000);
  });

  await t.test('a daemon kill -9 keeps connectivity and leases', async (t) => {
    const before = leases(d);
    const pids = [a.status?.vmlet?.qemuPid, b.status?.vmlet?.qemuPid];
    await d.kill('SIGKILL');
    t.match((await httpGet(addrA, 80, 5000)).body, /VMLET-GUEST-HTTP-OK/, 'A answers while the daemon is down');
    // Leftovers of a VMI that is gone: a sandbox netns and a host veth on the bridge with vmlet's prefixes.
    const staleNs = `${tn.opts.names!.netnsPrefix}deadbeef`;
    const staleVeth = `${tn.opts.names!.vethPrefix}deadbeef`;
    execFileSync('ip', ['netns', 'add', staleNs]);
    execFileSync('ip', ['link', 'add', staleVeth, 'type', 'veth', 'peer', 'name', `vx${tn.tag}`]);
    execFileSync('ip', ['link', 'set', staleVeth, 'master', tn.opts.bridge!]);
    await d.restart();
    t.notOk(fs.existsSync(path.join('/run/netns', staleNs)), 'a stale sandbox netns is removed at start-up');
    t.notOk(testNetObjects(tn).veths.includes(staleVeth), 'and a stale host veth on the bridge');
    const [a2, b2] = await Promise.all([d.waitPhase('net-a', 'Running', 30_000), d.waitPhase('net-b', 'Running', 30_000)]);
    t.same([a2.status?.vmlet?.qemuPid, b2.status?.vmlet?.qemuPid], pids, 'the same QEMUs are re-adopted');
    t.same(a2.status?.interfaces?.[0]?.ipAddress, addrA, 'A keeps its address');
    t.match((await httpGetRetry(addrA, 80, 10_000)).body, /VMLET-GUEST-HTTP-OK/, 'host → A after the restart');
    t.match((await httpGetRetry(addrB, 80, 10_000)).body, /VMLET-GUEST-HTTP-OK/, 'host → B after the restart');
    const after = leases(d);
    t.same(Object.keys(after.leases).sort(), Object.keys(before.leases).sort(), 'the same leases');
    t.equal(after.next, before.next, 'no address was handed out meanwhile');
    // A DHCP renewal (udhcpc renews on SIGUSR1) is answered by the restarted daemon with the same address.
    const acquired = before.leases[b.metadata.uid]?.interfaces?.[0]?.dhcp?.acquiredAt;
    const renew = await guestRun(d, 'net-b', b.metadata.uid, 'kill -USR1 $(cat /run/udhcpc.eth0.pid)');
    t.equal(renew.status, 0, 'udhcpc in B asked to renew');
    const renewed = await waitFor(
      "B's renewal in the lease file",
      () => {
        const l = leases(d).leases[b.metadata.uid]?.interfaces?.[0]?.dhcp;
        return l && l.acquiredAt !== acquired ? l : undefined;
      },
      20_000,
    );
    t.equal(renewed.clientMac, '02:00:00:aa:bb:cc', 'the renewal was acknowledged for B');
    t.equal(leases(d).leases[b.metadata.uid]?.address, addrB, 'with the same address');
    t.equal((await guestRun(d, 'net-b', b.metadata.uid, `ping -c 1 -W 3 ${gateway}`)).status, 0, 'B still reaches the gateway');
  });

  await t.test('a QEMU that dies takes its sandbox with it', async (t) => {
    const cur = await d.vmi('net-a');
    process.kill(cur!.status!.vmlet!.qemuPid!, 'SIGKILL');
    await d.waitPhase('net-a', 'Failed', 15_000);
    const idA = a.metadata.uid.replace(/-/g, '').slice(0, 8);
    await waitFor("A's sandbox to go", () => !testNetObjects(tn).netns.some((n) => n.endsWith(idA)), 10_000);
    t.notOk(leases(d).leases[a.metadata.uid], "A's lease is released");
    t.ok(leases(d).leases[b.metadata.uid], "B's lease stays");
    t.match((await httpGet(addrB, 80, 5000)).body, /VMLET-GUEST-HTTP-OK/, 'B is unaffected');
  });

  await t.test('delete leaves no netns, link, rule or lease', async (t) => {
    const netnsBefore = testNetObjects(tn).netns;
    t.equal(netnsBefore.length, 1, "only B's sandbox exists before");
    await d.cliOk(['delete', 'vmi', 'net-a']);
    await d.cliOk(['delete', 'vmi', 'net-b']);
    await Promise.all([d.waitGone('vmi', 'net-a', 60_000), d.waitGone('vmi', 'net-b', 60_000)]);
    t.same(testNetObjects(tn), { netns: [], veths: [], bridgePorts: [] }, 'no netns, no host veth, nothing on the bridge');
    t.same(leases(d).leases, {}, 'no lease');
    for (const ns of netnsBefore) t.notOk(fs.existsSync(path.join('/run/netns', ns)), `${ns} is gone, and its nft tables with it`);
    const status = await d.http('GET', '/healthz');
    t.equal(status.status, 200, 'the daemon is fine');
  });
  const left: KubeObj[] = await d.vmis();
  t.same(left, [], 'no VMI left');
});
