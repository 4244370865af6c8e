// Chaos: 1000 malformed or hostile API requests and fuzzed manifests; the daemon never crashes or leaks, and every refusal is a Status.
import fs from 'node:fs';
import net from 'node:net';
import tap from 'tap';
import { daemonSkipReason, httpRequest, rawHttpRequest, startTestDaemon, vmiObject } from '../support/daemon.js';

const skip = daemonSkipReason({ guest: false });
const VMIS = '/apis/vmlet.io/v1alpha1/namespaces/default/virtualmachineinstances';

/** A small deterministic PRNG, so a failing case can be replayed from its seed. */
function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => (s = (s * 1664525 + 1013904223) >>> 0) / 2 ** 32;
}

function mutate(obj: unknown, rnd: () => number, depth = 0): unknown {
  if (obj === null || typeof obj !== 'object') {
    const pick = rnd();
    if (pick < 0.2) return -1;
    if (pick < 0.4) return 'x'.repeat(Math.floor(rnd() * 300));
    if (pick < 0.5) return { nested: true };
    if (pick < 0.6) return [obj];
    if (pick < 0.7) return 'a,file.driver=null-co,b';
    if (pick < 0.8) return '../../etc/passwd';
    return obj;
  }
  if (Array.isArray(obj)) return obj.map((v) => (rnd() < 0.3 ? mutate(v, rnd, depth + 1) : v));
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(obj)) {
    const r = rnd();
    if (r < 0.1) continue;
    out[r < 0.15 ? `${k}X` : k] = r < 0.4 && depth < 6 ? mutate(v, rnd, depth + 1) : v;
  }
  if (rnd() < 0.1) out['unknownField'] = 1;
  return out;
}

function rssKiB(pid: number): number {
  return Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? NaN);
}

tap.test('1000 hostile requests', { skip }, async (t) => {
  const d = await startTestDaemon(t);
  const pid = d.pid;
  const rnd = prng(4242);
  type Req = () => Promise<{ status: number; text: string }>;
  const reqs: Array<{ what: string; run: Req }> = [];
  const bodyReq = (what: string, method: string, p: string, body?: string): void => {
    reqs.push({ what, run: () => httpRequest(d.socket, method, p, body) });
  };
  for (let i = 0; i < 250; i++)
    bodyReq('bad JSON', 'POST', VMIS, ['{', '{"kind":', 'null', '[]', '"str"', '{"a":1}}', '\u0000\u0001', '{"apiVersion":1}'][i % 8]!);
  for (let i = 0; i < 350; i++) {
    const m = mutate(vmiObject(`fuzz-${i}`), rnd) as { metadata?: { name?: unknown } };
    bodyReq('fuzzed manifest', 'POST', VMIS, JSON.stringify(m));
  }
  const names = ['..', '..%2F..%2Fetc', '%2e%2e', 'a%00b', 'UPPER', 'x'.repeat(300), 'a/b', '%2F', '-bad', 'name%0Aheader'];
  for (let i = 0; i < 150; i++) bodyReq('hostile name', ['GET', 'DELETE', 'PUT'][i % 3]!, `${VMIS}/${names[i % names.length]}`, i % 3 === 2 ? '{}' : undefined);
  for (let i = 0; i < 100; i++) bodyReq('wrong method', ['PATCH', 'DELETE', 'POST', 'TRACE'][i % 4]!, i % 2 ? VMIS : '/healthz');
  for (let i = 0; i < 140; i++)
    bodyReq(
      'unknown path',
      'GET',
      [
        '/',
        '/apis',
        '/apis/vmlet.io/v9/x',
        '/api/v1/namespaces/default/pods',
        '/../../etc/passwd',
        '/apis/vmlet.io/v1alpha1/namespaces/default/virtualmachineinstances/x/console/../../y',
      ][i % 6]!,
    );
  for (let i = 0; i < 10; i++)
    reqs.push({ what: 'huge body', run: () => rawHttpRequest(d.socket, 'POST', VMIS, Buffer.alloc(2 * 1024 * 1024, 0x61), { chunked: i % 2 === 1 }) });
  t.equal(reqs.length, 1000, '1000 requests');

  // Three slow-loris clients trickle headers the whole time; they must not block anyone.
  const loris = Array.from({ length: 3 }, () => {
    const s = net.connect(d.socket);
    s.on('error', () => undefined);
    s.write('GET /healthz HTTP/1.1\r\nHost: x\r\n');
    const timer = setInterval(() => s.write('X-Slow: 1\r\n'), 500);
    return { s, timer };
  });
  t.teardown(() => {
    for (const l of loris) {
      clearInterval(l.timer);
      l.s.destroy();
    }
  });

  // Two rounds with the same mix (even and odd requests): a leak grows RSS in both, while V8's
  // lazily collected heap and buffers mostly grow in the first.
  const rounds = [reqs.filter((_, i) => i % 2 === 0), reqs.filter((_, i) => i % 2 === 1)];
  const rss = [rssKiB(pid)];
  const bad: string[] = [];
  let created = 0;
  for (const round of rounds) {
    let next = 0;
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        while (next < round.length) {
          const r = round[next++]!;
          let ans: { status: number; text: string };
          try {
            ans = await r.run();
          } catch (e) {
            bad.push(`${r.what}: no answer (${(e as Error).message})`);
            continue;
          }
          if (ans.status >= 200 && ans.status < 300) {
            created++;
            continue;
          }
          let body: { kind?: string; status?: string; reason?: string } | undefined;
          try {
            body = JSON.parse(ans.text) as typeof body;
          } catch {
            /* not JSON */
          }
          if (body?.kind !== 'Status' || body.status !== 'Failure' || !body.reason)
            bad.push(`${r.what}: HTTP ${ans.status} without a Status: ${ans.text.slice(0, 120)}`);
          if (ans.status >= 500) bad.push(`${r.what}: server error ${ans.status}: ${ans.text.slice(0, 160)}`);
        }
      }),
    );
    rss.push(rssKiB(pid));
  }
  t.same(bad.slice(0, 10), [], `every refusal is a Kubernetes Status, no 5xx (${bad.length} bad)`);
  t.ok(created < 350, `${created} fuzzed manifests were valid and created`);
  t.equal(d.pid, pid, 'same daemon process');
  t.equal((await httpRequest(d.socket, 'GET', '/healthz')).status, 200, 'the daemon answers');
  const [r0, r1, r2] = rss as [number, number, number];
  t.comment(`daemon RSS: ${r0} KiB before, ${r1} after 500 requests, ${r2} after 1000`);
  t.ok(r2 - r1 < 32 * 1024, `the second 500 requests grew RSS by ${r2 - r1} KiB (< 32 MiB: no leak)`);
  t.ok(r2 - r0 < 96 * 1024, `RSS grew ${r2 - r0} KiB in all (< 96 MiB)`);
  // Clean up whatever the fuzzer managed to create, so teardown is quick.
  const list = JSON.parse((await httpRequest(d.socket, 'GET', VMIS)).text) as { items: Array<{ metadata: { name: string } }> };
  await Promise.all(list.items.map((o) => httpRequest(d.socket, 'DELETE', `${VMIS}/${o.metadata.name}`)));
});
