// The C launcher and the daemon speak one protocol: native/vmlet-launch.c's constants and message words equal src/qemu/launcher-server.ts's.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { failureCode, LAUNCHER_PROTOCOL_VERSION, MAX_ARGV_BYTES, MAX_FDS, MAX_LINE } from '../../src/qemu/launcher-server.js';

const C = readFileSync(path.join(import.meta.dirname, '..', '..', 'native', 'vmlet-launch.c'), 'utf8');

/** `#define NAME VALUE` of the C file, quotes stripped. */
function define(name: string): string | undefined {
  const m = new RegExp(`^#define\\s+${name}\\s+(.+?)\\s*$`, 'm').exec(C);
  return m?.[1]?.replace(/^"(.*)"$/, '$1');
}

t.test('limits and version', async (t) => {
  t.equal(define('PROTO_VERSION'), LAUNCHER_PROTOCOL_VERSION, 'protocol version');
  t.equal(Number(define('MAX_ARGV_BYTES')), MAX_ARGV_BYTES, 'ARGV payload limit');
  t.equal(Number(define('MAX_FDS')), MAX_FDS, 'fds per ARGV');
  t.equal(Number(define('MAX_LINE')), MAX_LINE, 'line length');
});

t.test('every word the launcher sends is one the daemon reads, and the other way round', async (t) => {
  const sent = new Set([...C.matchAll(/send_line\("([A-Z]+)/g)].map((m) => m[1]));
  t.same([...sent].sort(), ['ERROR', 'EXITED', 'HELLO', 'STARTED'], 'the launcher sends these');
  const daemon = readFileSync(path.join(import.meta.dirname, '..', '..', 'src', 'qemu', 'launcher-codec.ts'), 'utf8');
  for (const w of sent) t.match(daemon, `case '${w}':`, `the daemon parses ${w}`);
  for (const w of ['OK', 'REJECT', 'ARGV']) t.match(C, new RegExp(`str(n)?cmp\\(rbuf, "${w}`), `the launcher parses ${w}`);
});

t.test('every ERROR reason of the launcher has a code of its own', async (t) => {
  const reasons = new Set([
    ...[...C.matchAll(/send_line\("ERROR ([a-z]+) /g)].map((m) => m[1]),
    ...[...C.matchAll(/snprintf\(fail_code, sizeof fail_code, "([a-z]+)"\)/g)].map((m) => m[1]),
  ]);
  t.ok(reasons.size >= 5, `found the reasons: ${[...reasons].join(', ')}`);
  for (const r of reasons) t.not(failureCode(r ?? ''), 'LAUNCHER_FAILED', `${r} maps to a specific code (${failureCode(r ?? '')})`);
});
