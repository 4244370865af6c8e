// Crash-test child: does acknowledged store writes in a loop from several workers and prints each one, until killed.
//
// Usage: node --import tsx test/support/store-crash-child.ts <state-dir> [workers]
// Output lines: "READY", "B <worker> <op> <name>" before an operation, "A <worker> <op> <name> <rv>" once it resolved
// (op: create | update | status | delete | event). The parent kills this process with SIGKILL at a random moment.

import { writeSync } from 'node:fs';
import { pino } from 'pino';
import { LocalStore } from '../../src/source/local-store.js';

const dir = process.argv[2];
const workers = Number(process.argv[3] ?? '4');
if (dir === undefined) throw new Error('usage: store-crash-child.ts <dir> [workers]');

// Synchronous writes: a line printed is a line the parent will read, even if SIGKILL follows at once.
const say = (line: string): void => {
  writeSync(1, `${line}\n`);
};

const store = await LocalStore.open({ dir, logger: pino({ level: 'silent' }) });
const ns = 'crash';

async function worker(w: number): Promise<never> {
  const names = Array.from({ length: 5 }, (_, i) => `w${w}-n${i}`);
  let n = 0;
  for (;;) {
    n++;
    const name = names[Math.floor(Math.random() * names.length)] ?? 'w0-n0';
    const cur = await store.get('VirtualMachineInstance', ns, name);
    const dice = Math.random();
    if (cur === undefined) {
      say(`B ${w} create ${name}`);
      const o = await store.create({
        apiVersion: 'vmlet.io/v1alpha1',
        kind: 'VirtualMachineInstance',
        metadata: { name, namespace: ns },
        spec: { n, pad: 'x'.repeat(Math.floor(Math.random() * 4000)) },
      });
      say(`A ${w} create ${name} ${o.metadata.resourceVersion}`);
    } else if (dice < 0.1) {
      say(`B ${w} delete ${name}`);
      const o = await store.delete('VirtualMachineInstance', ns, name);
      say(`A ${w} delete ${name} ${o.metadata.resourceVersion}`);
    } else if (dice < 0.2) {
      say(`B ${w} event ${name}`);
      const e = await store.recordEvent({
        involvedObject: { kind: cur.kind, namespace: ns, name, uid: cur.metadata.uid },
        type: 'Normal',
        reason: 'Tick',
        message: `tick ${n % 3}`,
      });
      say(`A ${w} event ${name} ${e.metadata.resourceVersion}`);
    } else if (dice < 0.6) {
      say(`B ${w} update ${name}`);
      const o = await store.update(
        { ...cur, spec: { n, pad: 'y'.repeat(Math.floor(Math.random() * 4000)) } },
        { expectedResourceVersion: cur.metadata.resourceVersion },
      );
      say(`A ${w} update ${name} ${o.metadata.resourceVersion}`);
    } else {
      say(`B ${w} status ${name}`);
      const o = await store.updateStatus<{ n?: number }>('VirtualMachineInstance', ns, name, () => ({ n }));
      say(`A ${w} status ${name} ${o.metadata.resourceVersion}`);
    }
  }
}

say('READY');
await Promise.all(Array.from({ length: workers }, (_, w) => worker(w)));
