// `netns add NAME` over the netlink path makes what `ip netns add` makes: a new netns bound on /run/netns/NAME (a shared mount), usable and deletable by ip, the calling thread back in its own netns; a taken name fails with EEXIST and stays as it was.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { isVmletError } from '../../src/errors.js';
import { execRunner } from '../../src/net/exec.js';
import { netlinkSupports, runIpBatchNetlink } from '../../src/net/ip-netlink.js';
import { IpTools } from '../../src/net/ip-tools.js';
import { createNamedNetns } from '../../src/sys/netns-create.js';

function skipReason(): string | null {
  if (process.platform !== 'linux') return 'needs Linux';
  if (process.getuid?.() !== 0) return 'needs root (creates netns and mounts)';
  for (const bin of ['ip', 'umount']) {
    try {
      execFileSync(bin, ['-V'], { stdio: 'ignore' });
    } catch {
      return `${bin} is not installed`;
    }
  }
  return null;
}
const skip = skipReason();

/**
 * Not `vnlt-`: ip-netlink.test.ts deletes every netns of that prefix (and every host link starting
 * with `vnlt`) at its start and end, and tap runs test files side by side.
 */
const PREFIX = 'vnltns-';
const VETH_PREFIX = 'vnsh';
/** a netns dir of this test only, for the bind-onto-itself path (/run/netns is a mount point already once ip has used it) */
const DIR_PREFIX = 'vnltns-dir-';
const tag = randomBytes(3).toString('hex');
const BINS = { ip: 'ip', nft: 'nft', nsenter: 'nsenter' };

const quiet = (bin: string, args: string[]): void => {
  try {
    execFileSync(bin, args, { stdio: 'ignore' });
  } catch {
    /* already gone */
  }
};
const ino = (p: string): number => fs.statSync(p).ino;
const netnsList = (): string[] =>
  execFileSync('ip', ['netns', 'list'])
    .toString()
    .split('\n')
    .map((l) => l.split(' ')[0]!)
    .filter((n) => n !== '');
const linksIn = (ns: string): { ifname: string; flags: string[] }[] =>
  JSON.parse(execFileSync('ip', ['netns', 'exec', ns, 'ip', '-json', 'link']).toString()) as { ifname: string; flags: string[] }[];

/** The optional fields (`shared:N`, `master:N`, …) of the topmost mount at `mountPoint`, or null when none is there. */
function propagation(mountPoint: string): string[] | null {
  let found: string[] | null = null;
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ');
    const sep = f.indexOf('-');
    if (sep > 6 && f[4] === mountPoint) found = f.slice(6, sep);
  }
  return found;
}

const isMountPoint = (p: string): boolean => propagation(p) !== null;

/** Everything of this test, also what a crashed earlier run left. */
function scrub(): void {
  for (const n of fs.existsSync('/run/netns') ? fs.readdirSync('/run/netns') : []) if (n.startsWith(PREFIX)) quiet('ip', ['netns', 'del', n]);
  const links = JSON.parse(execFileSync('ip', ['-json', 'link', 'show']).toString() || '[]') as { ifname: string }[];
  for (const l of links) if (l.ifname.startsWith(VETH_PREFIX)) quiet('ip', ['link', 'del', l.ifname]);
  for (const d of fs.readdirSync('/run').filter((n) => n.startsWith(DIR_PREFIX))) removeTree(path.join('/run', d));
}

/** Unmounts (lazily, with what is mounted below) and removes `p` and what is in it. */
function removeTree(p: string): void {
  for (let i = 0; i < 4 && isMountPoint(p); i++) quiet('umount', ['-l', p]);
  if (fs.lstatSync(p).isDirectory()) for (const f of fs.readdirSync(p)) removeTree(path.join(p, f));
  fs.rmSync(p, { recursive: true, force: true });
}

t.test('a netns made over the netlink path is one ip knows, new, and deletable', { skip: skip ?? false }, async (t) => {
  scrub();
  t.teardown(scrub);
  const name = `${PREFIX}a${tag}`;
  const hostNet = ino('/proc/self/ns/net');
  const threadNet = ino('/proc/thread-self/ns/net');
  t.ok(netlinkSupports([['netns', 'add', name]]), 'a netlink form');
  const started = process.hrtime.bigint();
  await new IpTools(execRunner, BINS).ipBatch([['netns', 'add', name]]);
  t.comment(`ipBatch(netns add) took ${(Number(process.hrtime.bigint() - started) / 1e6).toFixed(2)} ms`);

  t.equal(ino('/proc/thread-self/ns/net'), threadNet, 'the calling thread is back in its own netns');
  t.equal(ino('/proc/self/ns/net'), hostNet, 'so is the process');
  t.ok(netnsList().includes(name), 'ip netns list shows it');
  t.not(ino(`/run/netns/${name}`), hostNet, 'another netns than the host one');
  const links = linksIn(name);
  t.same(
    links.map((l) => l.ifname),
    ['lo'],
    'ip netns exec works there; only lo',
  );
  t.notOk(links[0]!.flags.includes('UP'), 'lo is down, as ip netns add leaves it');
  t.ok(
    propagation('/run/netns')?.some((o) => o.startsWith('shared:')),
    '/run/netns is a shared mount',
  );
  t.ok(
    propagation(`/run/netns/${name}`)?.some((o) => o.startsWith('shared:')),
    'the netns mount is shared as well (propagates)',
  );

  execFileSync('ip', ['netns', 'del', name]);
  t.notOk(netnsList().includes(name), 'ip netns del removes it');
  t.notOk(fs.existsSync(`/run/netns/${name}`), 'the file is gone');
});

t.test('a taken name fails with EEXIST and the netns there stays', { skip: skip ?? false }, async (t) => {
  scrub();
  t.teardown(scrub);
  const name = `${PREFIX}b${tag}`;
  const threadNet = ino('/proc/thread-self/ns/net');
  runIpBatchNetlink([['netns', 'add', name]]);
  execFileSync('ip', ['netns', 'exec', name, 'ip', 'link', 'set', 'lo', 'up']);
  const before = ino(`/run/netns/${name}`);
  const err = await new IpTools(execRunner, BINS).ipBatch([['netns', 'add', name]]).then(
    () => null,
    (e: unknown) => e,
  );
  t.ok(isVmletError(err, 'NET_COMMAND_FAILED'), 'NET_COMMAND_FAILED');
  t.equal(isVmletError(err) ? err.errno : undefined, 'EEXIST', 'errno EEXIST');
  t.equal(
    isVmletError(err) ? err.message : '',
    `ip netns add ${name}: Cannot create namespace file "/run/netns/${name}": File exists`,
    "ip's words, after the command",
  );
  t.equal(ino('/proc/thread-self/ns/net'), threadNet, 'the calling thread is in its own netns');
  t.equal(ino(`/run/netns/${name}`), before, 'the same netns is bound there');
  t.ok(linksIn(name)[0]!.flags.includes('UP'), 'with its state (lo up)');
  t.equal(netnsList().filter((n) => n === name).length, 1, 'listed once');
});

t.test('netns add, then a veth into it, in one batch', { skip: skip ?? false }, async (t) => {
  scrub();
  t.teardown(scrub);
  const name = `${PREFIX}c${tag}`;
  const veth = `${VETH_PREFIX}${tag}`;
  const cmds = [
    ['netns', 'add', name],
    ['link', 'add', veth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', name],
  ];
  t.ok(netlinkSupports(cmds));
  await new IpTools(execRunner, BINS).ipBatch(cmds);
  t.same(
    linksIn(name)
      .map((l) => l.ifname)
      .sort(),
    ['eth0', 'lo'],
    'the peer is in the new netns',
  );
  t.ok(fs.existsSync(`/sys/class/net/${veth}`), 'the host end is on the host');
});

t.test('a netns dir that is no mount point yet is bound onto itself and made shared', { skip: skip ?? false }, async (t) => {
  scrub();
  t.teardown(scrub);
  const dir = `/run/${DIR_PREFIX}${tag}/netns`;
  fs.mkdirSync(path.dirname(dir));
  t.notOk(isMountPoint(dir), 'no mount point before');
  const threadNet = ino('/proc/thread-self/ns/net');
  createNamedNetns(dir, 'one');
  t.equal((fs.statSync(dir).mode & 0o777).toString(8), (0o755 & ~process.umask()).toString(8), 'made with mode 0755 (less the umask)');
  t.ok(
    propagation(dir)?.some((o) => o.startsWith('shared:')),
    'a shared mount point',
  );
  t.equal(ino('/proc/thread-self/ns/net'), threadNet, 'the calling thread is back');
  const file = path.join(dir, 'one');
  t.not(ino(file), threadNet, 'a new netns');
  const links = JSON.parse(execFileSync('nsenter', [`--net=${file}`, 'ip', '-json', 'link']).toString()) as { ifname: string }[];
  t.same(
    links.map((l) => l.ifname),
    ['lo'],
    'usable by path',
  );
  t.throws(() => createNamedNetns(dir, 'one'), { code: 'NET_COMMAND_FAILED', errno: 'EEXIST' }, 'EEXIST there too');
  // the dir's set-up is remembered: a second netns goes straight to the file
  createNamedNetns(dir, 'two');
  t.not(ino(path.join(dir, 'two')), ino(file), 'each add makes its own netns');
  const mounts = fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((l) => l.split(' ')[4] === dir);
  t.equal(mounts.length, 1, 'the dir is bound onto itself once');
});
