// Chaos: a SIGSTOPped QEMU makes its QMP commands time out and a condition say so; the daemon and other VMs stay responsive; SIGCONT recovers.
import tap from 'tap';
import { daemonSkipReason, sleep, startTestDaemon, vmiObject, waitFor, type KubeObj } from '../support/daemon.js';
import YAML from 'yaml';

const skip = daemonSkipReason();

function condition(o: KubeObj | undefined, type: string): string | undefined {
  const conds = (o?.status as { conditions?: Array<{ type: string; status: string }> } | undefined)?.conditions;
  return conds?.find((c) => c.type === type)?.status;
}

tap.test('a stopped QEMU times out, is reported, and recovers', { skip }, async (t) => {
  const d = await startTestDaemon(t);
  await d.apply([YAML.stringify(vmiObject('frozen')), YAML.stringify(vmiObject('healthy'))].join('---\n'));
  const frozen = await d.waitPhase('frozen', 'Running', 60_000);
  await d.waitPhase('healthy', 'Running', 60_000);
  const pid = (frozen.status as { vmlet?: { qemuPid?: number } }).vmlet?.qemuPid;
  t.ok(pid, 'QEMU pid recorded');
  process.kill(pid!, 'SIGSTOP');
  t.teardown(() => {
    try {
      process.kill(pid!, 'SIGCONT');
    } catch {
      /* gone */
    }
  });

  const t0 = Date.now();
  const stuck = d.cli(['qmp', 'frozen', '{"execute":"query-status"}'], { timeoutMs: 30_000 });
  // While that command hangs, the daemon and the other VM answer at once.
  await sleep(300);
  const h0 = Date.now();
  const other = await d.cli(['qmp', 'healthy', '{"execute":"query-status"}']);
  t.equal(other.code, 0, 'the other VM answers QMP');
  t.ok(Date.now() - h0 < 3_000, `within ${Date.now() - h0} ms`);
  t.equal((await d.cli(['get', 'vmis'])).code, 0, 'the daemon answers get');

  const r = await stuck;
  t.not(r.code, 0, 'the command to the stopped QEMU fails');
  t.match(r.stderr, /QMP_TIMEOUT/, `with QMP_TIMEOUT (${r.stderr.trim()})`);
  t.ok(Date.now() - t0 < 15_000, 'within the query timeout, no hang');

  const reported = await waitFor(
    'QmpResponsive=False',
    async () => {
      const o = await d.vmi('frozen');
      return condition(o, 'QmpResponsive') === 'False' ? o : undefined;
    },
    20_000,
  );
  t.equal(reported.status && (reported.status as { phase?: string }).phase, 'Running', 'the VMI stays Running (QEMU is alive)');
  const later = await d.cli(['qmp', 'frozen', '{"execute":"query-status"}']);
  t.match(later.stderr, /QMP_UNAVAILABLE|QMP_TIMEOUT/, 'further commands fail fast while it is stopped');

  process.kill(pid!, 'SIGCONT');
  await waitFor('QmpResponsive=True', async () => condition(await d.vmi('frozen'), 'QmpResponsive') === 'True', 20_000);
  const ok = await d.cli(['qmp', 'frozen', '{"execute":"query-status"}']);
  t.equal(ok.code, 0, 'QMP works again after SIGCONT');
  t.match(ok.stdout, /"running": true/, 'and QEMU runs');
  const after = await d.vmi('frozen');
  t.equal((after?.status as { vmlet?: { qemuPid?: number } }).vmlet?.qemuPid, pid, 'same QEMU');
});
