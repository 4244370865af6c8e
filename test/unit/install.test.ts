// vmlet install and uninstall into a scratch root with the host commands recorded: the layout, upgrades beside the old version, a config that is never overwritten, refusals, and an uninstall that leaves only config and state.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { VmletError } from '../../src/errors.js';
import { checkHost, findProgram, type HostFacts } from '../../src/install/host-check.js';
import type { CommandResult, HostOps } from '../../src/install/host-ops.js';
import { install, removeDeadCopies, renderUnit, WRAPPER_MARK } from '../../src/install/install.js';
import { installLayout } from '../../src/install/layout.js';
import { readCreatedUser, readManifest } from '../../src/install/manifest.js';
import { productionPackages } from '../../src/install/tree.js';
import { stopWaitMs, uninstall } from '../../src/install/uninstall.js';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Records every command; `systemctl is-active` answers as `active` says. */
function recorder(): HostOps & { calls: string[]; active: boolean } {
  const ops = {
    calls: [] as string[],
    active: false,
    run(program: string, args: string[]): Promise<CommandResult> {
      const line = [program, ...args].join(' ');
      ops.calls.push(line);
      if (program === 'systemctl' && args[0] === 'is-active') return Promise.resolve({ code: ops.active ? 0 : 3, stdout: '', stderr: '' });
      if (program === 'systemctl' && (args[0] === 'start' || args[0] === 'restart')) ops.active = true;
      if (program === 'systemctl' && args[0] === 'disable') ops.active = false;
      // no such link or table on this fake host
      if (program === 'ip' && args[0] === 'link') return Promise.resolve({ code: 1, stdout: '', stderr: 'does not exist' });
      if (program === 'nft') return Promise.resolve({ code: 1, stdout: '', stderr: 'No such file or directory' });
      return Promise.resolve({ code: 0, stdout: '', stderr: '' });
    },
  };
  return ops;
}

/** A built tree in miniature: one production package, one dev-only package, the real unit template. */
function makeTree(dir: string, version: string, code = 'console.log(1)\n'): string {
  const w = (rel: string, text: string): void => {
    fs.mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true });
    fs.writeFileSync(path.join(dir, rel), text);
  };
  w('package.json', JSON.stringify({ name: 'vmlet', version }));
  w(
    'package-lock.json',
    JSON.stringify({
      packages: {
        '': {},
        'node_modules/pino': {},
        'node_modules/@grpc/grpc-js': {},
        'node_modules/tap': { dev: true },
        'node_modules/fsevents': { optional: true },
      },
    }),
  );
  w('dist/cli/main.js', code);
  w('dist/.build-stamp', new Date().toISOString());
  w('native/build/vmlet-launch', 'ELF');
  w('deploy/crds/vm.yaml', 'kind: CustomResourceDefinition\n');
  w('docs/install.md', '# install\n');
  w('node_modules/pino/index.js', 'module.exports = 1\n');
  w('node_modules/@grpc/grpc-js/index.js', 'module.exports = 2\n');
  w('node_modules/tap/index.js', 'dev only\n');
  w('src/daemon/proto/deviceplugin-v1beta1.proto', 'syntax = "proto3";\n');
  w('src/daemon/main.ts', 'not copied\n');
  fs.mkdirSync(path.join(dir, 'systemd'), { recursive: true });
  fs.copyFileSync(path.join(repo, 'systemd', 'vmlet.service'), path.join(dir, 'systemd', 'vmlet.service'));
  return dir;
}

/** Every file and link under `dir`, relative, sorted. */
function listing(dir: string): string[] {
  const out: string[] = [];
  const walk = (rel: string): void => {
    for (const e of fs.readdirSync(path.join(dir, rel), { withFileTypes: true })) {
      const r = path.join(rel, e.name);
      if (e.isDirectory()) walk(r);
      else out.push(r);
    }
  };
  walk('');
  return out.sort();
}

function scratch(t: { teardown(fn: () => unknown): void }): { root: string; trees: string } {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-install-'));
  t.teardown(() => fs.rmSync(base, { recursive: true, force: true }));
  const root = path.join(base, 'root');
  fs.mkdirSync(path.join(root, 'etc'), { recursive: true });
  fs.writeFileSync(path.join(root, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/bash\n');
  return { root, trees: path.join(base, 'trees') };
}

/** The installed daemon's config for the scratch host: its folders and host names where nothing real is touched. */
function scratchConfig(root: string): string {
  return [
    `stateDir: ${root}/var/lib/vmlet`,
    `runDir: ${root}/run/vmlet`,
    `socket: ${root}/run/vmlet/vmlet.sock`,
    `cgroupRoot: ${root}/sys/fs/cgroup`,
    'network:',
    '  bridge: vmlt-none0',
    '  nftTable: vmlet_install_test',
    '  netnsPrefix: vmlet-install-test-',
    '',
  ].join('\n');
}

const log = (): void => undefined;

/** What the recorded `useradd` would have done on a real host. */
function addUser(root: string, name: string): void {
  fs.appendFileSync(path.join(root, 'etc', 'passwd'), `${name}:x:995:995::/nonexistent:/usr/sbin/nologin\n`);
}

function createdUserRecord(layout: ReturnType<typeof installLayout>): string | undefined {
  return readCreatedUser(layout);
}

t.test('a fresh install lays out the version, the link, the unit, the wrapper and the default config', async (t) => {
  const { root, trees } = scratch(t);
  const layout = installLayout(root);
  const ops = recorder();
  const tree = makeTree(path.join(trees, 'a'), '1.2.3');
  const r = await install({ layout, tree, node: '/usr/local/bin/node', start: true, ops, log });
  t.match(r.id, /^1\.2\.3-[0-9a-f]{8}$/);
  t.equal(r.service, 'started');
  t.equal(r.createdConfig, true);
  t.equal(fs.readlinkSync(layout.current), r.id, 'current points at the version, relatively');
  const v = path.join(layout.prefix, r.id);
  t.same(listing(v), [
    'deploy/crds/vm.yaml',
    'dist/.build-stamp',
    'dist/cli/main.js',
    'docs/install.md',
    'native/build/vmlet-launch',
    'node_modules/@grpc/grpc-js/index.js',
    'node_modules/pino/index.js',
    'package-lock.json',
    'package.json',
    'src/daemon/proto/deviceplugin-v1beta1.proto',
    'systemd/vmlet.service',
  ]);
  const unit = fs.readFileSync(layout.unitFile, 'utf8');
  t.match(unit, /^ExecStart=\/usr\/local\/bin\/node \/opt\/vmlet\/current\/dist\/cli\/main\.js daemon --config \/etc\/vmlet\/vmlet\.yaml/m);
  t.match(unit, /^Type=notify$/m);
  t.match(unit, /^KillMode=process$/m);
  t.match(unit, /^Delegate=yes$/m);
  t.match(unit, /^WatchdogSec=\d+$/m);
  t.notMatch(unit, /@[A-Z]+@/, 'no placeholder left');
  const wrapper = fs.readFileSync(layout.wrapper, 'utf8');
  t.match(wrapper, WRAPPER_MARK);
  t.match(wrapper, 'exec /usr/local/bin/node /opt/vmlet/current/dist/cli/main.js "$@"');
  t.equal(fs.statSync(layout.wrapper).mode & 0o777, 0o755);
  t.match(fs.readFileSync(layout.configFile, 'utf8'), /^mode: standalone$/m);
  t.same(ops.calls, [
    'useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin vmlet-qemu',
    'systemctl daemon-reload',
    'systemctl enable --quiet vmlet.service',
    'systemctl is-active --quiet vmlet.service',
    'systemctl start vmlet.service',
  ]);
  t.same(readManifest(layout.manifest), { format: 1, versions: [r.id], current: r.id, node: '/usr/local/bin/node', createdConfig: true });
  t.equal(createdUserRecord(layout), 'vmlet-qemu', 'recorded beside the config, which lives as long');

  t.test('the default config is one the daemon accepts', async (t) => {
    const { loadConfig } = await import('../../src/daemon/config.js');
    const cfg = loadConfig(v, { config: layout.configFile });
    t.equal(cfg.mode, 'standalone');
    t.equal(cfg.socket, '/run/vmlet/vmlet.sock');
    t.equal(cfg.launcherBinary, path.join(v, 'native', 'build', 'vmlet-launch'), 'the launcher of the installed version');
  });
});

t.test('--no-start leaves the service stopped; a reinstall of the same build reuses its folder', async (t) => {
  const { root, trees } = scratch(t);
  const layout = installLayout(root);
  const ops = recorder();
  const tree = makeTree(path.join(trees, 'a'), '1.0.0');
  const first = await install({ layout, tree, node: '/usr/bin/node', start: false, ops, log });
  t.equal(first.service, 'left stopped');
  t.notOk(ops.calls.includes('systemctl start vmlet.service'));
  ops.active = true;
  const lines: string[] = [];
  fs.writeFileSync(path.join(tree, 'dist', '.build-stamp'), 'rebuilt later');
  const again = await install({ layout, tree, node: '/usr/bin/node', start: true, ops, log: (l) => lines.push(l) });
  t.equal(again.id, first.id, 'the build stamp is not part of the content id');
  t.equal(again.service, 'left running', 'same build, same unit: no restart');
  t.match(lines.join('\n'), /installed already/);
  t.same(readManifest(layout.manifest)?.versions, [first.id]);
});

t.test('an upgrade installs beside the old version, switches the link, restarts, and keeps two versions', async (t) => {
  const { root, trees } = scratch(t);
  const layout = installLayout(root);
  const ops = recorder();
  const a = await install({ layout, tree: makeTree(path.join(trees, 'a'), '1.0.0'), node: '/usr/bin/node', start: true, ops, log });
  addUser(root, 'vmlet-qemu');
  fs.writeFileSync(layout.configFile, 'accel: tcg\nuseEmulation: true\n# mine\n');
  ops.calls.length = 0;
  const b = await install({ layout, tree: makeTree(path.join(trees, 'b'), '1.1.0', 'console.log(2)\n'), node: '/usr/bin/node', start: true, ops, log });
  t.not(b.id, a.id);
  t.equal(b.previous, a.id);
  t.equal(b.service, 'restarted');
  t.equal(fs.readlinkSync(layout.current), b.id);
  t.ok(fs.existsSync(path.join(layout.prefix, a.id, 'dist', 'cli', 'main.js')), 'the old version stays beside it');
  t.equal(fs.readFileSync(layout.configFile, 'utf8'), 'accel: tcg\nuseEmulation: true\n# mine\n', 'the config is never overwritten');
  t.ok(ops.calls.includes('systemctl restart vmlet.service'));
  t.notOk(
    ops.calls.some((c) => c.startsWith('useradd')),
    'the user the first install created is not created again',
  );
  const c = await install({ layout, tree: makeTree(path.join(trees, 'c'), '1.2.0', 'console.log(3)\n'), node: '/usr/bin/node', start: true, ops, log });
  t.same(readManifest(layout.manifest)?.versions, [b.id, c.id]);
  t.notOk(fs.existsSync(path.join(layout.prefix, a.id)), 'the oldest version is removed');
  t.equal(readManifest(layout.manifest)?.createdConfig, true, 'still the install that created the config');
  t.equal(createdUserRecord(layout), 'vmlet-qemu', 'still the install that created the user');
});

t.test('a tree that was not built is refused before anything is written', async (t) => {
  const { root, trees } = scratch(t);
  const layout = installLayout(root);
  const tree = makeTree(path.join(trees, 'a'), '1.0.0');
  fs.rmSync(path.join(tree, 'native'), { recursive: true });
  const before = listing(root);
  await t.rejects(install({ layout, tree, node: '/usr/bin/node', start: true, ops: recorder(), log }), {
    code: 'INSTALL_TREE_INCOMPLETE',
    message: /native\/build\/vmlet-launch/,
  });
  t.same(listing(root), before);
  await t.rejects(install({ layout, tree: makeTree(path.join(trees, 'b'), '1.0.0'), node: '/opt/my node/bin/node', start: true, ops: recorder(), log }), {
    code: 'INSTALL_NODE_UNSUITABLE',
  });
  t.throws(() => renderUnit('ExecStart=@NODE@ @SOMETHING@\n', layout, '/usr/bin/node'), { code: 'INSTALL_TREE_INCOMPLETE', message: /@SOMETHING@/ });
});

t.test('a failing systemctl is reported with its message and the journal hint', async (t) => {
  const { root, trees } = scratch(t);
  const ops = recorder();
  const run = ops.run.bind(ops);
  ops.run = (p, a) => (p === 'systemctl' && a[0] === 'start' ? Promise.resolve({ code: 1, stdout: '', stderr: 'Job for vmlet.service failed.' }) : run(p, a));
  await t.rejects(install({ layout: installLayout(root), tree: makeTree(path.join(trees, 'a'), '1.0.0'), node: '/usr/bin/node', start: true, ops, log }), {
    code: 'INSTALL_COMMAND_FAILED',
    message: /systemctl start vmlet\.service failed \(exit 1\): Job for vmlet\.service failed\..*journalctl -u vmlet/,
  });
});

t.test('the host check names what is missing', async (t) => {
  const ok: HostFacts = { uid: 0, nodeVersion: '20.19.0', systemdBooted: true, missing: [] };
  t.doesNotThrow(() => checkHost(ok));
  t.throws(() => checkHost({ ...ok, uid: 1000 }), { code: 'INSTALL_NOT_ROOT' });
  t.throws(() => checkHost({ ...ok, nodeVersion: '18.19.0' }), { code: 'INSTALL_NODE_UNSUITABLE', message: /18\.19\.0/ });
  t.throws(() => checkHost({ ...ok, systemdBooted: false }), { code: 'INSTALL_NO_SYSTEMD' });
  const missing = [
    { program: 'qemu-system-x86_64', pkg: 'qemu-system-x86' },
    { program: 'nft', pkg: 'nftables' },
  ];
  t.throws(() => checkHost({ ...ok, missing }), {
    code: 'INSTALL_MISSING_PACKAGES',
    message: 'missing qemu-system-x86_64, nft; install the Debian packages first: apt-get install -y qemu-system-x86 nftables',
  });
  t.equal(findProgram('sh', '/nonexistent'), '/usr/bin/sh', 'the standard folders are searched too');
  t.equal(findProgram('surely-no-such-program-here', process.env.PATH), undefined);
});

t.test('production packages: not dev-only, not links, and only those on disk', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-install-nm-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  for (const p of ['a', '@s/b', 'c/node_modules/d', 'dev']) fs.mkdirSync(path.join(dir, p), { recursive: true });
  const lock = {
    packages: {
      '': {},
      'node_modules/a': {},
      'node_modules/@s/b': {},
      'node_modules/c/node_modules/d': {},
      'node_modules/dev': { dev: true },
      'node_modules/gone': {},
      'node_modules/l': { link: true },
    },
  };
  t.same(productionPackages(lock, dir), ['@s/b', 'a']);
});

t.test('uninstall', async (t) => {
  t.test('without an install record there is nothing to do', async (t) => {
    const { root } = scratch(t);
    await t.rejects(uninstall({ layout: installLayout(root), stopVms: false, purge: false, ops: recorder(), log }), { code: 'INSTALL_NOT_FOUND' });
  });

  t.test('refuses while a VM runs and removes nothing; then removes all but config and state', async (t) => {
    const { root, trees } = scratch(t);
    const layout = installLayout(root);
    const before = listing(root);
    const ops = recorder();
    await install({ layout, tree: makeTree(path.join(trees, 'a'), '1.0.0'), node: '/usr/bin/node', start: true, ops, log });
    fs.writeFileSync(layout.configFile, scratchConfig(root));
    const state = path.join(root, 'var', 'lib', 'vmlet');
    fs.mkdirSync(path.join(state, 'objects'), { recursive: true });
    fs.writeFileSync(path.join(state, 'objects', 'vm.json'), '{}');

    // a "launcher" for a VMI: alive, with the uid on its command line, as the run folder records it
    const uid = '0b7e7c4e-1111-4222-8333-444455556666';
    const launcher = spawn('sh', ['-c', 'sleep 30; :', 'vmlet-launch', uid], { stdio: 'ignore' });
    t.teardown(() => launcher.kill('SIGKILL'));
    const vmDir = path.join(root, 'run', 'vmlet', 'vms', uid);
    fs.mkdirSync(vmDir, { recursive: true });
    fs.writeFileSync(path.join(vmDir, 'launcher.pid'), `${launcher.pid}\n`);
    const installed = listing(root);
    await t.rejects(uninstall({ layout, stopVms: false, purge: false, ops, log }), { code: 'INSTALL_VMS_RUNNING', message: new RegExp(`${uid}.*--stop-vms`) });
    t.same(listing(root), installed, 'nothing removed');
    await t.rejects(uninstall({ layout, stopVms: true, purge: false, ops, log }), { code: 'INSTALL_DAEMON_DOWN', message: /systemctl start vmlet/ });
    t.same(listing(root), installed, 'nothing removed without a daemon to stop the VM');

    launcher.kill('SIGKILL');
    await new Promise((r) => launcher.once('exit', r));
    ops.calls.length = 0;
    const r = await uninstall({ layout, stopVms: false, purge: false, ops, log });
    t.equal(r.stoppedVms, 0);
    t.ok(ops.calls.includes('systemctl disable --now --quiet vmlet.service'));
    t.ok(ops.calls.includes('systemctl daemon-reload'));
    t.notOk(
      ops.calls.some((c) => c.startsWith('userdel')),
      'the user stays without --purge',
    );
    const left = listing(root).filter((f) => !before.includes(f));
    t.same(
      left,
      ['etc/vmlet/created-user', 'etc/vmlet/vmlet.yaml', `run/vmlet/vms/${uid}/launcher.pid`, 'var/lib/vmlet/objects/vm.json'],
      'only config, state and the run folder remain',
    );
    t.notOk(fs.existsSync(layout.prefix));

    t.test('--purge after an uninstall removes the config and state it kept', async (t) => {
      ops.calls.length = 0;
      const r = await uninstall({ layout, stopVms: false, purge: true, ops, log });
      t.same(listing(root), before, 'back to the host before the install');
      t.ok(ops.calls.includes('userdel vmlet-qemu'));
      t.ok(r.removed.includes(path.join(root, 'var', 'lib', 'vmlet')));
      await t.rejects(uninstall({ layout, stopVms: false, purge: true, ops, log }), { code: 'INSTALL_NOT_FOUND' }, 'then nothing is left to do');
    });

    t.test('--purge removes config, state and the user that an earlier install created', async (t) => {
      await install({ layout, tree: makeTree(path.join(trees, 'b'), '1.0.1'), node: '/usr/bin/node', start: true, ops, log });
      addUser(root, 'vmlet-qemu');
      await uninstall({ layout, stopVms: false, purge: false, ops, log });
      ops.calls.length = 0;
      await install({ layout, tree: makeTree(path.join(trees, 'c'), '1.0.2'), node: '/usr/bin/node', start: true, ops, log });
      t.notOk(
        ops.calls.some((c) => c.startsWith('useradd')),
        'the user exists now',
      );
      await uninstall({ layout, stopVms: false, purge: true, ops, log });
      t.ok(ops.calls.includes('userdel vmlet-qemu'), 'the record beside the kept config still names the user');
      t.same(
        listing(root).filter((f) => f !== 'etc/passwd'),
        before.filter((f) => f !== 'etc/passwd'),
      );
    });
  });

  t.test('a vmlet on the PATH that the install did not write is left alone', async (t) => {
    const { root, trees } = scratch(t);
    const layout = installLayout(root);
    const ops = recorder();
    await install({ layout, tree: makeTree(path.join(trees, 'a'), '1.0.0'), node: '/usr/bin/node', start: true, ops, log });
    fs.writeFileSync(layout.configFile, scratchConfig(root));
    fs.writeFileSync(layout.wrapper, '#!/bin/sh\necho someone else\n');
    const r = await uninstall({ layout, stopVms: false, purge: false, ops, log });
    t.ok(fs.existsSync(layout.wrapper));
    t.match(r.left.join('\n'), /usr\/local\/bin\/vmlet: not the wrapper/);
  });

  t.test('a corrupt install record is refused by name', async (t) => {
    const { root } = scratch(t);
    const layout = installLayout(root);
    fs.mkdirSync(layout.prefix, { recursive: true });
    fs.writeFileSync(layout.manifest, '{"format": 7}');
    const err = await uninstall({ layout, stopVms: false, purge: false, ops: recorder(), log }).then(
      () => undefined,
      (e: unknown) => e,
    );
    t.ok(err instanceof VmletError && err.code === 'INSTALL_MANIFEST_CORRUPT', 'INSTALL_MANIFEST_CORRUPT');
    t.match(String(err), /move it away/);
  });
});

t.test('an install killed mid-copy leaves a folder that the next install removes', async (t) => {
  const { root, trees } = scratch(t);
  const layout = installLayout(root);
  const dead = spawn('true');
  await new Promise((r) => dead.once('exit', r));
  fs.mkdirSync(path.join(layout.prefix, `1.0.0-aaaaaaaa.tmp-${dead.pid}`, 'dist'), { recursive: true });
  fs.mkdirSync(path.join(layout.prefix, `1.0.0-bbbbbbbb.tmp-${process.pid}`), { recursive: true });
  t.same(removeDeadCopies(path.join(root, 'nowhere')), [], 'no prefix yet: nothing to do');
  await install({ layout, tree: makeTree(path.join(trees, 'a'), '1.0.0'), node: '/usr/bin/node', start: false, ops: recorder(), log });
  const left = fs.readdirSync(layout.prefix).filter((n) => n.includes('.tmp-'));
  t.same(left, [`1.0.0-bbbbbbbb.tmp-${process.pid}`], "the dead install's copy is gone, a live one's is kept");
});

t.test('uninstall --stop-vms waits for the longest grace period plus a minute', async (t) => {
  t.equal(stopWaitMs([]), 60_000);
  t.equal(stopWaitMs([{ spec: { terminationGracePeriodSeconds: 0 } }, { spec: { terminationGracePeriodSeconds: 30 } }]), 90_000);
  t.equal(stopWaitMs([{ spec: { terminationGracePeriodSeconds: 600 } }, {}]), 660_000, 'a VMI that shows none counts as 180 s');
  t.equal(stopWaitMs([{}]), 240_000);
});
