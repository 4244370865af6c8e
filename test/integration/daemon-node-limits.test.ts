// Node limits and MACs in use through the real daemon: each refusal with its code, the limit, the use and the ask, nothing stored; deleting a VMI frees its room (and its MAC); a VM waiting for room gets a FailedCreate Warning and its VMI once there is room; parallel creates cannot overshoot; a client uid's connection past maxConnectionsPerClient is answered 429 and closed while the others work.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import type net from 'node:net';
import path from 'node:path';
import t from 'tap';
import { daemonSkipReason, startTestDaemon, vmiObject, vmObject, waitFor, type TestDaemon } from '../support/daemon.js';
import { daemonNetConfig, netSkipReason, testNetFor } from '../support/net-env.js';
import { connectRaw } from '../support/raw-connection.js';

const skip = daemonSkipReason() || netSkipReason() || false;
const G = '/apis/vmlet.io/v1alpha1/namespaces/default';

interface Answer {
  http: number;
  code: string;
  message: string;
}

async function post(d: TestDaemon, plural: 'virtualmachineinstances' | 'virtualmachines', body: object): Promise<Answer> {
  const r = await d.http('POST', `${G}/${plural}`, JSON.stringify(body));
  const st = r.json() as { kind?: string; reason?: string; message?: string };
  return { http: r.status, code: st.kind === 'Status' ? (st.reason ?? '') : 'created', message: st.message ?? '' };
}

/** A VMI of the test guest with `memory`, `cores` and (with networking) one masquerade NIC with `mac`. */
function vmi(name: string, o: { memory?: string; cores?: number; mac?: string } = {}): Record<string, unknown> {
  const v = vmiObject(name, { memory: o.memory ?? '128Mi' });
  const spec = v.spec as { domain: { cpu: Record<string, number>; devices: Record<string, unknown> }; networks?: unknown };
  spec.domain.cpu = { cores: o.cores ?? 1 };
  if (o.mac !== undefined) {
    spec.domain.devices.interfaces = [{ name: 'default', masquerade: {}, macAddress: o.mac }];
    spec.networks = [{ name: 'default', pod: {} }];
  }
  return v;
}

const stored = (d: TestDaemon, plural: string, name: string): boolean => fs.existsSync(path.join(d.stateDir, 'objects', plural, 'default', `${name}.json`));
const names = async (d: TestDaemon): Promise<string[]> => (await d.vmis()).map((o) => o.metadata.name).sort();

t.test('limits and MACs: each refusal, nothing stored, room freed by a delete, a VM waiting for room', { skip, timeout: 300_000 }, async (t) => {
  const tn = testNetFor(t);
  const d = await startTestDaemon(t, {
    config: { network: daemonNetConfig(tn), limits: { maxVmis: 2, maxGuestMemory: '320Mi', maxVcpus: 3 } },
  });
  const M1 = '02:00:00:1e:00:01';
  t.equal((await post(d, 'virtualmachineinstances', vmi('a', { mac: M1 }))).http, 201, 'a: 128Mi, 1 vCPU, MAC M1');

  const mem = await post(d, 'virtualmachineinstances', vmi('b', { memory: '256Mi' }));
  t.same([mem.http, mem.code], [403, 'NODE_LIMIT_MEMORY'], 'b: 256Mi more than the 320Mi allowed');
  t.equal(mem.message, 'node limit limits.maxGuestMemory is 320Mi: 128Mi in use, VirtualMachineInstance default/b asks for 256Mi more');
  const cpu = await post(d, 'virtualmachineinstances', vmi('c', { cores: 3 }));
  t.same([cpu.http, cpu.code], [403, 'NODE_LIMIT_VCPUS'], 'c: 3 vCPUs more than the 3 allowed');
  t.equal(cpu.message, 'node limit limits.maxVcpus is 3 vCPUs: 1 vCPU in use, VirtualMachineInstance default/c asks for 3 vCPUs more');
  const mac = await post(d, 'virtualmachineinstances', vmi('d', { mac: M1.toUpperCase() }));
  t.same([mac.http, mac.code], [409, 'NET_MAC_IN_USE'], "d: a's MAC (written in upper case)");
  t.match(mac.message, /macAddress 02:00:00:1e:00:01 is already used by VirtualMachineInstance default\/a/, 'naming the VMI that has it');

  t.equal((await post(d, 'virtualmachineinstances', vmi('e'))).http, 201, 'e: fits (2 VMIs, 256Mi, 2 vCPUs)');
  const count = await post(d, 'virtualmachineinstances', vmi('f'));
  t.same([count.http, count.code], [403, 'NODE_LIMIT_VMIS'], 'f: a third VMI');
  t.equal(count.message, 'node limit limits.maxVmis is 2 VMIs: 2 VMIs in use, VirtualMachineInstance default/f asks for 1 VMI more');
  const vm = await post(d, 'virtualmachines', vmObject('vm-now', { runStrategy: 'Always' }));
  t.same([vm.http, vm.code], [403, 'NODE_LIMIT_VMIS'], 'a VM that would start at once is refused before it is stored');

  t.same(await names(d), ['a', 'e'], 'only the admitted VMIs exist');
  for (const n of ['b', 'c', 'd', 'f']) t.notOk(stored(d, 'virtualmachineinstances', n), `nothing stored for ${n}`);
  t.notOk(stored(d, 'virtualmachines', 'vm-now'), 'nor for the VM');

  // A halted VM may be stored; starting it is refused while the node is full.
  t.equal((await post(d, 'virtualmachines', vmObject('vm-wait', { runStrategy: 'Halted' }))).http, 201, 'a halted VM is stored');
  const start = await d.http('PUT', `/apis/subresources.vmlet.io/v1alpha1/namespaces/default/virtualmachines/vm-wait/start`);
  t.equal(start.status, 403, 'vmlet start of it: 403');
  t.match(start.text, /NODE_LIMIT_VMIS/);
  // Through the controller: Always by a replace, then it waits for room with one Warning.
  // The controller may write the VM's status between the read and the replace (409): read again, as kubectl does.
  const replace = async (): Promise<number> => {
    const cur = (await d.vm('vm-wait'))!;
    const next = { ...cur, spec: { ...cur.spec, runStrategy: 'Always' } };
    delete (next as { status?: unknown }).status;
    return (await d.http('PUT', `${G}/virtualmachines/vm-wait`, JSON.stringify(next))).status;
  };
  let replaced = await replace();
  for (let i = 0; i < 5 && replaced === 409; i++) replaced = await replace();
  t.equal(replaced, 200, 'runStrategy: Always');
  const warning = await waitFor(
    'the FailedCreate Warning',
    async () => {
      const ev = (await d.http('GET', `/api/v1/namespaces/default/events?fieldSelector=involvedObject.name=vm-wait`)).json() as {
        items: Array<{ type: string; reason: string; message: string }>;
      };
      return ev.items.find((e) => e.reason === 'FailedCreate');
    },
    15_000,
  );
  t.match(warning, { type: 'Warning', message: /NODE_LIMIT_VMIS/ }, 'FailedCreate Warning on the VM');
  t.same(await names(d), ['a', 'e'], 'and no VMI for it');

  // Deleting a frees a place and its MAC: the waiting VM gets its VMI, and d its MAC.
  t.equal((await d.http('DELETE', `${G}/virtualmachineinstances/a`)).status, 200);
  await d.waitGone('vmi', 'a', 60_000);
  await waitFor('the VM to get its VMI', async () => (await names(d)).includes('vm-wait'), 20_000);
  t.pass('the waiting VM got its VMI after the delete (controller retry)');
  t.equal((await post(d, 'virtualmachineinstances', vmi('d', { mac: M1 }))).code, 'NODE_LIMIT_VMIS', 'and the node is full again');
  t.equal((await d.http('DELETE', `${G}/virtualmachineinstances/e`)).status, 200);
  await d.waitGone('vmi', 'e', 60_000);
  t.equal((await post(d, 'virtualmachineinstances', vmi('d', { mac: M1 }))).http, 201, "d takes a's MAC once a is gone");
  await d.waitPhase('d', 'Running', 90_000);
});

t.test('parallel creates cannot overshoot maxVmis', { skip: daemonSkipReason() || false, timeout: 180_000 }, async (t) => {
  const d = await startTestDaemon(t, { config: { limits: { maxVmis: 2 } } });
  const all = await Promise.all(['p1', 'p2', 'p3', 'p4', 'p5'].map((n) => post(d, 'virtualmachineinstances', vmi(n))));
  const codes = all.map((a) => a.code).sort();
  t.same(codes, ['NODE_LIMIT_VMIS', 'NODE_LIMIT_VMIS', 'NODE_LIMIT_VMIS', 'created', 'created'], '5 at once: exactly 2 accepted');
  const admitted = await names(d);
  t.equal(admitted.length, 2, 'two VMIs exist');
  t.same(['p1', 'p2', 'p3', 'p4', 'p5'].filter((n) => stored(d, 'virtualmachineinstances', n)).sort(), admitted, 'and only they are stored');
  await Promise.all(admitted.map((n) => d.waitPhase(n, 'Running', 90_000)));
  t.pass('both run');
});

/** GET on a kept-open connection; resolves with the status line once the whole answer is there. */
async function get(c: { sock: net.Socket; got: () => string }, p: string): Promise<string> {
  const from = c.got().length;
  c.sock.write(`GET ${p} HTTP/1.1\r\nHost: x\r\n\r\n`);
  return waitFor(
    `an answer to GET ${p}`,
    () => {
      const a = c.got().slice(from);
      const sep = a.indexOf('\r\n\r\n');
      const len = /Content-Length: (\d+)\r\n/i.exec(a);
      const whole = sep >= 0 && (a.endsWith('0\r\n\r\n') || (len !== null && a.length >= sep + 4 + Number(len[1])));
      return whole ? a.slice(0, a.indexOf('\r\n')) : undefined;
    },
    5_000,
    10,
  );
}

function asNobody(sock: string, p: string): Promise<number> {
  const client = `require('http').get({ socketPath: process.argv[1], path: process.argv[2] }, (r) => { console.log(r.statusCode); r.resume(); }).on('error', (e) => console.log(e.code));`;
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, ['-e', client, sock, p], { uid: 65534, gid: 100, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    c.stdout.on('data', (b: Buffer) => (out += b.toString()));
    c.on('error', reject);
    c.on('close', () => resolve(Number(out.trim())));
  });
}

t.test(
  'maxConnectionsPerClient: the connection past the limit gets 429 and is closed, the first ones work',
  { skip: daemonSkipReason({ guest: false }) || false },
  async (t) => {
    const N = 3;
    const d = await startTestDaemon(t, { config: { socketGroup: 'users', limits: { maxConnectionsPerClient: N } } });
    fs.chmodSync(d.root, 0o711);
    // The harness's own kept-alive connections would count against root's N.
    http.globalAgent.destroy();
    await new Promise((r) => setTimeout(r, 200));
    const open = await Promise.all(Array.from({ length: N }, () => connectRaw(d.socket)));
    t.teardown(() => open.forEach((c) => c.sock.destroy()));
    for (const c of open) t.equal(await get(c, '/healthz'), 'HTTP/1.1 200 OK', 'one of the first N');
    const extra = await connectRaw(d.socket);
    await extra.closed;
    t.match(extra.got(), /^HTTP\/1\.1 429 Too Many Requests\r\n/, `connection ${N + 1}: 429, then closed`);
    t.match(extra.got(), /"reason":"API_TOO_MANY_CONNECTIONS"/);
    t.match(extra.got(), new RegExp(`uid 0 already holds ${N} connections to this daemon \\(limits.maxConnectionsPerClient\\)`));
    for (const c of open) t.equal(await get(c, `${G}/virtualmachineinstances`), 'HTTP/1.1 200 OK', 'the first N still work');
    t.equal(await asNobody(d.socket, '/healthz'), 200, 'another uid (in the socket group) is not counted against root');
    t.match(fs.readFileSync(d.logFile, 'utf8'), /the client holds too many connections/, 'the refusal is logged');
    open[0]!.sock.destroy();
    await open[0]!.closed;
    const again = await waitFor(
      'a new connection to be served',
      async () => {
        const c = await connectRaw(d.socket);
        const ok = await get(c, '/healthz').catch(() => undefined);
        if (ok === 'HTTP/1.1 200 OK') return c;
        c.sock.destroy();
        return undefined;
      },
      5_000,
    );
    t.pass('after one closed, a new one is served');
    again.sock.destroy();
  },
);
