// Test helpers for the net library: uniquely named test networks, root/tool skip reasons, tap fds QEMU can inherit, netns-wrapped QEMU, HTTP probes.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { closeFds, libc } from '../../src/sys/libc.js';
import { NetManager, type NetManagerOptions } from '../../src/net/sandbox.js';
import { qemuNicArgs } from '../../src/net/qemu-args.js';
import type { NicModel } from '../../src/net/types.js';
import { bootTestGuest, type TestGuest } from './guest.js';

const dupFn = libc.func('int dup(int fd)');

function has(bin: string): boolean {
  try {
    execFileSync('sh', ['-c', 'command -v "$1"', 'sh', bin], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** Why net integration tests cannot run here, or null. */
export function netSkipReason(): string | null {
  if (process.platform !== 'linux') return 'needs Linux';
  if (process.getuid?.() !== 0) return 'needs root (creates netns, bridges, nftables tables)';
  for (const b of ['ip', 'nft', 'nsenter']) if (!has(b)) return `${b} is not installed${b === 'nft' ? ' (apt-get install nftables)' : ''}`;
  if (!fs.existsSync('/dev/net/tun')) return '/dev/net/tun is missing';
  return null;
}

export interface TestNet {
  opts: NetManagerOptions;
  subnet: string;
  /** for names of other objects (dummy nft tables) */
  tag: string;
  stateDir: string;
  cleanup(): void;
}

/**
 * NetManager options with names no other test or the real daemon uses: bridge `vmltbXXXX`, nft
 * table `vmlet_tXXXX`, netns `vtXXXX-…`, veths `vhXXXX…`, a /24 in 10.214/16, no host forwarding.
 */
export function testNet(): TestNet {
  const tag = randomBytes(2).toString('hex');
  const third = 1 + (parseInt(tag, 16) % 250);
  const subnet = `10.214.${third}.0/24`;
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-net-'));
  return {
    tag,
    subnet,
    stateDir,
    opts: {
      stateDir,
      subnet,
      bridge: `vmltb${tag}`,
      nftTable: `vmlet_t${tag}`,
      names: { netnsPrefix: `vt${tag}-`, vethPrefix: `vh${tag}` },
      hostForwarding: false,
      dns: { nameservers: [`10.214.${third}.1`], search: ['vmlet.test'] },
      leaseSeconds: 600,
    },
    cleanup: () => fs.rmSync(stateDir, { recursive: true, force: true }),
  };
}

/** testNet() whose objects (netns, links, bridge, table, state dir) the test's teardown removes. */
export function testNetFor(t: { teardown(fn: () => void): void }): TestNet {
  const tn = testNet();
  t.teardown(() => {
    scrubTestNet(tn);
    tn.cleanup();
  });
  return tn;
}

/** A started NetManager on a testNet(); the test's teardown closes it and removes its objects. */
export async function startedManager(t: { teardown(fn: () => Promise<void> | void): void }): Promise<{ tn: TestNet; mgr: NetManager }> {
  const tn = testNet();
  const mgr = new NetManager(tn.opts);
  t.teardown(async () => {
    await mgr.close();
    scrubTestNet(tn);
    tn.cleanup();
  });
  await mgr.start();
  return { tn, mgr };
}

/** Best-effort removal of everything carrying the tag (for teardown after a failed test). */
export function scrubTestNet(t: TestNet): void {
  const o = t.opts;
  for (const ns of fs.existsSync('/run/netns') ? fs.readdirSync('/run/netns') : []) {
    if (ns.startsWith(o.names!.netnsPrefix)) run('ip', ['netns', 'del', ns]);
  }
  const links = JSON.parse(execFileSync('ip', ['-json', 'link', 'show']).toString()) as { ifname: string }[];
  for (const l of links) if (l.ifname.startsWith(o.names!.vethPrefix)) run('ip', ['link', 'del', l.ifname]);
  run('ip', ['link', 'del', o.bridge!]);
  run('nft', ['delete', 'table', 'ip', o.nftTable!]);
}

function run(bin: string, args: string[]): void {
  try {
    execFileSync(bin, args, { stdio: 'ignore' });
  } catch {
    /* already gone */
  }
}

/** dup(2)s fds without close-on-exec so that a child spawned next inherits them under the same numbers; call the result to close them. */
export function inheritable(fds: number[]): { fds: number[]; close: () => void } {
  const out = fds.map((fd) => dupFn(fd) as number);
  if (out.some((fd) => fd < 0)) throw new Error('dup failed');
  return { fds: out, close: () => closeFds(out) };
}

export { closeFds };

/** A QEMU "binary" that runs qemu-system-x86_64 inside the netns (for `ifname=` taps); the script holds only a checked path. */
export function qemuInNetns(netnsPath: string, dir: string): string {
  if (!/^\/[A-Za-z0-9_./-]+$/.test(netnsPath)) throw new Error(`odd netns path ${netnsPath}`);
  const p = path.join(dir, `qemu-in-${path.basename(netnsPath)}.sh`);
  fs.writeFileSync(p, `#!/bin/sh\nexec nsenter --net=${netnsPath} -- qemu-system-x86_64 "$@"\n`, { mode: 0o755 });
  return p;
}

/** GET http://host:port/ from this (the host's) netns; resolves with status and body, rejects on error/timeout. */
export function httpGet(host: string, port = 80, timeoutMs = 5000): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host, port, path: '/', timeout: timeoutMs, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('timeout', () => req.destroy(new Error(`timeout after ${timeoutMs} ms`)));
    req.on('error', reject);
  });
}

/** Retries httpGet until it answers (the guest's httpd may start a moment after DHCP). */
export async function httpGetRetry(host: string, port = 80, totalMs = 15000): Promise<{ status: number; body: string }> {
  const until = Date.now() + totalMs;
  for (;;) {
    try {
      return await httpGet(host, port, 3000);
    } catch (e) {
      if (Date.now() > until) throw e;
      await new Promise((r) => setTimeout(r, 300));
    }
  }
}

export function ipJson<T>(args: string[]): T {
  const out = execFileSync('ip', ['-json', ...args]).toString();
  return (out.trim() ? JSON.parse(out) : []) as T;
}

/** The daemon's `network:` config for a test network: its own bridge, subnet, table and name prefixes, no host forwarding. */
export function daemonNetConfig(tn: TestNet): Record<string, unknown> {
  const o = tn.opts;
  return {
    enabled: true,
    subnet: tn.subnet,
    bridge: o.bridge,
    nftTable: o.nftTable,
    netnsPrefix: o.names!.netnsPrefix,
    vethPrefix: o.names!.vethPrefix,
    hostForwarding: false,
    dnsServers: o.dns!.nameservers,
    dnsSearch: o.dns!.search,
    dnsDomain: `lab.${o.dns!.search[0]}`,
    leaseSeconds: o.leaseSeconds,
  };
}

/** The sandboxes (netns) and host veths that carry the test network's prefixes. */
export function testNetObjects(tn: TestNet): { netns: string[]; veths: string[]; bridgePorts: string[] } {
  const o = tn.opts;
  const netns = fs.existsSync('/run/netns') ? fs.readdirSync('/run/netns').filter((n) => n.startsWith(o.names!.netnsPrefix)) : [];
  const veths = ipJson<{ ifname: string }[]>(['link', 'show'])
    .map((l) => l.ifname)
    .filter((n) => n.startsWith(o.names!.vethPrefix));
  let bridgePorts: string[] = [];
  try {
    bridgePorts = ipJson<{ ifname: string }[]>(['link', 'show', 'master', o.bridge!]).map((l) => l.ifname);
  } catch {
    /* no bridge */
  }
  return { netns, veths, bridgePorts };
}

/** Boots the test guest with the sandbox's tap of `uid` passed by fd (inherited by QEMU under the same number). */
export async function bootGuestOnTap(
  mgr: Pick<NetManager, 'openTapFds'>,
  uid: string,
  nic: { mac: string; model: NicModel },
  teardown: (fn: () => void | Promise<void>) => void,
): Promise<TestGuest> {
  const tapFds = mgr.openTapFds(uid);
  const inh = inheritable(tapFds);
  closeFds(tapFds);
  try {
    return await bootTestGuest({
      accel: 'tcg',
      qmp: false,
      guestAgent: false,
      teardown,
      extraArgs: qemuNicArgs({ index: 0, mac: nic.mac, model: nic.model, tap: { fds: inh.fds }, romfile: '' }),
    });
  } finally {
    inh.close();
  }
}
