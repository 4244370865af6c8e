// Chaos: kill -9 the daemon at random moments during storms of apply/delete; after each restart store, run dirs, QEMUs and network sandboxes agree exactly.
import fs from 'node:fs';
import path from 'node:path';
import tap from 'tap';
import {
  daemonSkipReason,
  httpRequest,
  processesMatching,
  withChildren,
  qemuProcessesFor,
  sleep,
  startTestDaemon,
  vmiObject,
  waitFor,
} from '../support/daemon.js';
import { daemonNetConfig, netSkipReason, testNetFor, testNetObjects } from '../support/net-env.js';

const skip = daemonSkipReason() || netSkipReason() || false;
const VMIS = '/apis/vmlet.io/v1alpha1/namespaces/default/virtualmachineinstances';
const ROUNDS = 3;
const OPS = 50;
const POOL = 6;

function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => (s = (s * 1664525 + 1013904223) >>> 0) / 2 ** 32;
}

interface Vmi {
  metadata: { name: string; uid: string; deletionTimestamp?: string };
  status?: { phase?: string };
}

tap.test('apply/delete storm with the daemon killed at random moments', { skip }, async (t) => {
  // Every VMI gets the default masquerade NIC, so sandboxes are made and removed throughout the storm.
  const tn = testNetFor(t);
  const d = await startTestDaemon(t, { config: { network: daemonNetConfig(tn) } });
  const rnd = prng(7);
  /** Per name: whether the last acknowledged operation left it existing; undefined = in doubt. */
  const expect = new Map<string, boolean | undefined>();

  for (let round = 1; round <= ROUNDS; round++) {
    let next = 0;
    const killAt = 200 + Math.floor(rnd() * 1500);
    const killer = sleep(killAt).then(() => d.kill('SIGKILL'));
    // Operations on one name never overlap, so the last acknowledged one decides what must exist.
    const busy = new Set<string>();
    await Promise.all(
      Array.from({ length: 6 }, async () => {
        while (next < OPS) {
          const name = `storm-${Math.floor(rnd() * POOL)}`;
          if (busy.has(name)) {
            await sleep(5);
            continue;
          }
          next++;
          busy.add(name);
          const del = rnd() < 0.45;
          expect.set(name, undefined);
          try {
            const r = del
              ? await httpRequest(d.socket, 'DELETE', `${VMIS}/${name}`, undefined, {}, 5_000)
              : await httpRequest(d.socket, 'POST', VMIS, JSON.stringify(vmiObject(name, { graceSeconds: 1 })), {}, 5_000);
            // A delete is acknowledged once deletion began; it then always completes. A 409 on create may
            // meet an object that is being deleted, so it proves nothing.
            if (del && (r.status === 200 || r.status === 404)) expect.set(name, false);
            if (!del && r.status === 201) expect.set(name, true);
          } catch {
            // the daemon died under this request: its outcome is in doubt
          } finally {
            busy.delete(name);
          }
        }
      }),
    );
    await killer;
    await d.restart();

    // Let deletions finish, then compare store, run dirs and processes.
    const settled = await waitFor(
      `round ${round}: settled`,
      async () => {
        const list = JSON.parse((await httpRequest(d.socket, 'GET', VMIS)).text) as { items: Vmi[] };
        const busy = list.items.some((v) => v.metadata.deletionTimestamp || !['Running', 'Failed', 'Succeeded'].includes(v.status?.phase ?? ''));
        return busy ? undefined : list.items;
      },
      90_000,
      250,
    );

    const uids = new Set(settled.map((v) => v.metadata.uid));
    for (const v of settled) {
      const qemus = qemuProcessesFor(v.metadata.uid);
      if (v.status?.phase === 'Running') t.equal(qemus.length, 1, `round ${round}: ${v.metadata.name} runs exactly one QEMU`);
      else t.equal(qemus.length, 0, `round ${round}: ${v.metadata.name} (${v.status?.phase}) has no QEMU`);
    }
    const dirs = fs.readdirSync(path.join(d.runDir, 'vms'));
    t.same(
      dirs.filter((u) => !uids.has(u)),
      [],
      `round ${round}: no run dir without its VMI`,
    );
    // Launchers and QEMUs name their run dir `<runDir>/vms/<uid>` in their argv; the daemon itself names only <runDir>.
    const uidOf = (argv: string[]): string | undefined => /(?:\/vms\/|io\.vmlet\.vmi\.uid=)([0-9a-f-]{36})/.exec(argv.join(' '))?.[1];
    const strays = withChildren(processesMatching(path.join(d.runDir, 'vms'))).filter((p) => p.pid !== d.pid && !uids.has(uidOf(p.argv) ?? ''));
    t.same(
      strays.map((p) => p.pid),
      [],
      `round ${round}: no QEMU or launcher of a VMI that is gone`,
    );
    for (const [name, exists] of expect) {
      if (exists === undefined) continue;
      t.equal(
        settled.some((v) => v.metadata.name === name),
        exists,
        `round ${round}: ${name} ${exists ? 'was acknowledged and exists' : 'was deleted and is gone'}`,
      );
    }
    const objects = path.join(d.stateDir, 'objects');
    const files = (function walk(dir: string): string[] {
      return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(path.join(dir, e.name)) : [path.join(dir, e.name)]));
    })(objects);
    const torn = files
      .filter((f) => f.endsWith('.json'))
      .filter((f) => {
        try {
          JSON.parse(fs.readFileSync(f, 'utf8'));
          return false;
        } catch {
          return true;
        }
      });
    t.same(torn, [], `round ${round}: every stored file parses`);

    // Sandboxes: exactly the Running VMIs have one (a finished VMI's is removed right after its final
    // status is written, so allow a moment), each with its own lease and address.
    const running = settled.filter((v) => v.status?.phase === 'Running').map((v) => v.metadata.uid);
    const ids = (uids: string[]): string[] => uids.map((u) => u.replace(/-/g, '').slice(0, 8)).sort();
    const leaseFile = path.join(d.stateDir, 'net-leases.json');
    const net = await waitFor(
      `round ${round}: sandboxes match the Running VMIs`,
      () => {
        const objs = testNetObjects(tn);
        const leases = (JSON.parse(fs.readFileSync(leaseFile, 'utf8')) as { leases: Record<string, { address: string }> }).leases;
        const got = {
          netns: objs.netns.map((n) => n.slice(tn.opts.names!.netnsPrefix.length)).sort(),
          veths: objs.veths.length,
          leases: Object.keys(leases).sort(),
        };
        const agree =
          JSON.stringify(got.netns) === JSON.stringify(ids(running)) &&
          got.veths === running.length &&
          JSON.stringify(got.leases) === JSON.stringify([...running].sort());
        return agree ? { ...got, addresses: Object.values(leases).map((l) => l.address) } : undefined;
      },
      15_000,
      250,
    ).catch((e: unknown) => {
      t.fail(`${(e as Error).message}: ${JSON.stringify({ running: ids(running), ...testNetObjects(tn), leases: fs.readFileSync(leaseFile, 'utf8') })}`);
      return undefined;
    });
    if (net) {
      t.pass(`round ${round}: ${running.length} Running VMIs, ${net.netns.length} sandboxes, ${net.leases.length} leases`);
      t.equal(new Set(net.addresses).size, net.addresses.length, `round ${round}: no address is leased twice`);
    }
  }
});
