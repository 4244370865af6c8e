// A process that is not a VMI's launcher saying HELLO on a launcher socket: a node child, as root or as another uid, that claims its own pid truly.
import { spawn } from 'node:child_process';

export const NOBODY = 65534;

/**
 * `env -i` + argv for a clean node child: the test runner wraps node children with hooks (NODE_OPTIONS, set on spawn
 * whatever `env` says) that write into the repo, which nobody may not.
 */
export function cleanNode(args: string[]): [string, string[]] {
  return ['/usr/bin/env', ['-i', `PATH=${process.env.PATH ?? '/usr/bin:/bin'}`, process.execPath, ...args]];
}

// A node child that connects, sends `line` with {pid} replaced by its own pid (a true claim), and prints the first reply line.
const FORGER = `
const net = require('node:net');
const [sock, tmpl] = process.argv.slice(1);
let got = '';
const done = () => { process.stdout.write(JSON.stringify({ pid: process.pid, uid: process.getuid(), reply: got })); process.exit(0); };
const c = net.connect(sock, () => c.write(tmpl.replace('{pid}', String(process.pid)) + '\\n'));
c.on('data', (d) => { got += d.toString('latin1'); if (got.includes('\\n')) c.destroy(); });
c.on('close', done);
c.on('error', (e) => { got += 'ERROR ' + e.code; done(); });
setTimeout(() => { got += 'TIMEOUT'; c.destroy(); }, 15000);
`;

/** Runs the forger as `uid` (root when undefined); resolves with its pid and the daemon's answer. */
export function forgeHello(socketPath: string, line: string, uid?: number): Promise<{ pid: number; uid: number; reply: string }> {
  return new Promise((resolve, reject) => {
    const ids = uid === undefined ? {} : { uid, gid: uid };
    const [file, argv] = cleanNode(['-e', FORGER, socketPath, line]);
    const c = spawn(file, argv, { cwd: '/', stdio: ['ignore', 'pipe', 'inherit'], ...ids });
    let out = '';
    c.stdout.on('data', (b: Buffer) => (out += b.toString()));
    c.on('error', reject);
    c.on('close', () => {
      try {
        resolve(JSON.parse(out) as { pid: number; uid: number; reply: string });
      } catch {
        reject(new Error(`forger printed ${JSON.stringify(out)}`));
      }
    });
  });
}
