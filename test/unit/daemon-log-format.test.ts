import pino from 'pino';
import t from 'tap';
import { defaultConfig, loadConfig, mergeConfig, wantsTextLogs } from '../../src/daemon/config.js';
import { formatMessage, textLogDestination } from '../../src/daemon/log-format.js';
import { VmletError } from '../../src/errors.js';

function capture(colorize = false): { logger: pino.Logger; lines: () => string[]; raw: () => string } {
  let text = '';
  const logger = pino({ level: 'debug', base: { node: 'node1' } }, textLogDestination({ out: { write: (s: string) => (text += s) }, colorize }));
  return { logger, lines: () => text.split('\n').filter((l) => l !== ''), raw: () => text };
}

t.test('which format', async (t) => {
  t.equal(wantsTextLogs('auto', true), true, 'auto on a terminal: text');
  t.equal(wantsTextLogs('auto', false), false, 'auto into a pipe or file: JSON, as before');
  t.equal(wantsTextLogs('text', false), true);
  t.equal(wantsTextLogs('json', true), false);
  const base = defaultConfig('/repo');
  t.equal(base.logFormat, 'auto');
  t.equal(mergeConfig(base, { logFormat: 'text' }, 'f.yaml').logFormat, 'text');
  t.throws(() => mergeConfig(base, { logFormat: 'pretty' }, 'f.yaml'), { code: 'CONFIG_INVALID', message: /logFormat must be json, text or auto/ });
  t.throws(() => mergeConfig(base, { logFormat: true }, 'f.yaml'), { code: 'CONFIG_INVALID' });
  t.equal(loadConfig('/repo', { logFormat: 'json' }).logFormat, 'json', 'the flag');
});

t.test('one line per entry: time, level, component, VM, message, error and its code', async (t) => {
  const c = capture();
  const vmLog = c.logger.child({ component: 'node' }).child({ vmi: { namespace: 'default', name: 'web', uid: 'u-1' } });
  const err = new VmletError('LAUNCHER_EXEC', 'QEMU exited with status 1', { cause: new Error("Could not open '/nope.img'\nNo such file") });
  for (let i = 0; i < 3; i++) vmLog.warn({ err, reason: 'QemuExited' }, 'VMI failed');
  c.logger.child({ component: 'controller' }).warn({ vm: 'default/db', err: new VmletError('STORE_CONFLICT', 'busy') }, 'VM reconcile failed; retrying in 1 s');
  c.logger.info({ socket: '/run/vmlet/vmlet.sock' }, 'vmlet daemon ready');
  const lines = c.lines();
  t.comment(`\n${c.raw()}`);
  t.equal(lines.length, 5, 'five entries, five lines (no stack traces, no multi-line objects)');
  for (const l of lines.slice(0, 3)) {
    t.match(
      l,
      /^\[\d\d:\d\d:\d\d\.\d{3}\] WARN: \[node\] default\/web: VMI failed: QEMU exited with status 1: Could not open '\/nope\.img' No such file \(LAUNCHER_EXEC\) \{"reason":"QemuExited"\}$/,
    );
  }
  t.match(lines[3], /WARN: \[controller\] default\/db: VM reconcile failed; retrying in 1 s: busy \(STORE_CONFLICT\)$/);
  t.match(lines[4], /INFO: vmlet daemon ready \{"socket":"\/run\/vmlet\/vmlet\.sock"\}$/);
  t.notMatch(c.raw(), /u-1|node1|"pid"|hostname|stack/, 'the uid, node name, pid and stack are left out');
  t.notMatch(c.raw(), /\u001b\[/, 'no colour unless asked');
});

t.test('colour on a terminal', async (t) => {
  const c = capture(true);
  c.logger.child({ vmi: { namespace: 'default', name: 'web' } }).error('boom');
  t.match(c.raw(), /\u001b\[/, 'ANSI colours');
  t.match(c.raw().replace(/\u001b\[[0-9;]*m/g, ''), /ERROR: default\/web: boom\n$/);
});

t.test('formatMessage edge cases', async (t) => {
  t.equal(formatMessage({ msg: 'plain' }, 'msg'), 'plain');
  t.equal(formatMessage({ err: { type: 'Error', message: '' } }, 'msg'), 'Error', 'an error without message or msg');
  t.equal(formatMessage({ msg: 'x', err: 'a string' }, 'msg'), 'x: a string');
  t.equal(formatMessage({ msg: 'x', vmi: { name: 'n' } }, 'msg'), 'n: x', 'a VMI without namespace');
});
