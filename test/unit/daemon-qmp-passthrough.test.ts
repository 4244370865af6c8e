// The QMP passthrough rules: queries and the safe list pass, the rest only by name from the config; the config key is checked like hostPaths.
import t from 'tap';
import { defaultConfig, mergeConfig } from '../../src/daemon/config.js';
import { checkPassthrough, markedPassthrough, SAFE_QMP_COMMANDS } from '../../src/daemon/qmp-passthrough.js';

t.test('what passes', async (t) => {
  for (const c of ['query-status', 'query-cpus-fast', ...SAFE_QMP_COMMANDS]) t.doesNotThrow(() => checkPassthrough(c, []), c);
  for (const c of [
    'human-monitor-command',
    'migrate',
    'dump-guest-memory',
    'pmemsave',
    'memsave',
    'screendump',
    'chardev-add',
    'blockdev-add',
    'object-add',
    'device_add',
    'getfd',
    'quit',
  ]) {
    t.throws(() => checkPassthrough(c, []), { code: 'QMP_COMMAND_NOT_ALLOWED' }, `${c} refused`);
  }
  t.doesNotThrow(() => checkPassthrough('screendump', ['screendump']), 'allowed by name');
  t.throws(() => checkPassthrough('screendump', ['screendump-x']), { code: 'QMP_COMMAND_NOT_ALLOWED' }, 'a name is matched whole');
  t.throws(() => checkPassthrough('queryx', []), { code: 'QMP_COMMAND_NOT_ALLOWED' }, 'only query- with its dash');
});

t.test('the mark', async (t) => {
  const s = markedPassthrough({}, 'stop', '2026-12-01T00:00:00Z');
  t.match(s.conditions, [{ type: 'QmpPassthrough', status: 'True', reason: 'CommandPassedThrough', message: /"stop"/ }]);
});

t.test('the config key', async (t) => {
  const base = defaultConfig('/repo');
  t.same(base.qmpPassthrough, { allow: [] }, 'none by default');
  t.same(mergeConfig(base, { qmpPassthrough: { allow: ['screendump', 'human-monitor-command'] } }, 'x').qmpPassthrough.allow, [
    'screendump',
    'human-monitor-command',
  ]);
  for (const bad of [{ allow: 'screendump' }, { allow: ['Screen dump'] }, { allow: [1] }, { deny: [] }]) {
    t.throws(() => mergeConfig(base, { qmpPassthrough: bad }, 'x'), { code: 'CONFIG_INVALID' }, JSON.stringify(bad));
  }
  t.throws(() => mergeConfig(base, { hostPaths: { allow: ['relative'] } }, 'x'), { code: 'CONFIG_INVALID' }, 'hostPaths keeps its rule');
});
