#!/usr/bin/env node
// `npm start`: runs the daemon in standalone mode in the foreground and applies the example VM once the socket answers.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const socket = process.env.VMLET_SOCKET ?? '/run/vmlet/vmlet.sock';
const cli = path.join(root, 'dist', 'cli', 'main.js');
const config = path.join(root, 'examples', 'vmlet.yaml');

const daemon = spawn(process.execPath, [cli, 'daemon', '--config', config, '--socket', socket], { stdio: 'inherit' });
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => daemon.kill(sig));
daemon.on('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));

async function waitForSocket(deadline) {
  while (Date.now() < deadline) {
    const ok = await new Promise((resolve) => {
      const s = net.connect(socket, () => { s.destroy(); resolve(true); });
      s.on('error', () => resolve(false));
    });
    if (ok) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}

if (!(await waitForSocket(Date.now() + 30_000))) {
  console.error(`start: the daemon did not open ${socket} within 30 s`);
  daemon.kill('SIGTERM');
} else {
  // The example names the test guest by placeholder; fill in this checkout's cached image.
  const guest = path.join(root, '.cache', 'guest');
  const text = fs.readFileSync(path.join(root, 'examples', 'vm-testguest.yaml'), 'utf8')
    .replaceAll('@GUEST_KERNEL@', path.join(guest, 'vmlinux'))
    .replaceAll('@GUEST_INITRD@', path.join(guest, 'initrd.img'));
  const r = spawnSync(process.execPath, [cli, '--socket', socket, 'apply', '-f', '-'], { input: text, stdio: ['pipe', 'inherit', 'inherit'] });
  if (r.status === 0) {
    console.error([
      '',
      'vmlet is running in standalone mode; the example VM "testguest" is booting.',
      `  watch it:        node dist/cli/main.js get vmis`,
      `  attach console:  node dist/cli/main.js console testguest   (Ctrl+] detaches)`,
      '  its web server:  curl http://IP/   (IP: the IP column of get vmis, its sandbox address; port 80 goes to the guest)',
      'Ctrl+C stops the daemon; VMs keep running and are re-adopted on the next start.',
      '',
    ].join('\n'));
  }
}
