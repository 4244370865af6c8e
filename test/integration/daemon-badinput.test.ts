// Bad input against the real daemon: each refusal has its own error code, the daemon stays up and nothing stored changes; a comma in a disk path cannot inject QEMU options; kubevirt.io/v1 is accepted.
import { readdirSync, readlinkSync } from 'node:fs';
import path from 'node:path';
import tap from 'tap';
import YAML from 'yaml';
import {
  daemonSkipReason,
  isAlive,
  manifestVM,
  qemuProcessesFor,
  rawHttpRequest,
  snapshotDir,
  startTestDaemon,
  vmiObject,
  vmObject,
  waitFor,
  type TestDaemon,
} from '../support/daemon.js';

const skip = daemonSkipReason();

const G = '/apis/vmlet.io/v1alpha1/namespaces/default';

interface Refusal {
  via: 'http' | 'cli';
  http?: number;
  code: string;
  message: string;
}

/** What the daemon (or the CLI) said, as HTTP status + Status.reason, or the CLI's `(CODE)`. */
async function post(d: TestDaemon, urlPath: string, body: string | Buffer, contentType = 'application/json', method = 'POST'): Promise<Refusal> {
  const r = await d.http(method, urlPath, body, { 'content-type': contentType });
  let st: { kind?: string; reason?: string; message?: string } = {};
  try {
    st = r.json() as typeof st;
  } catch {
    /* not JSON: the assertion below says so */
  }
  return { via: 'http', http: r.status, code: st.kind === 'Status' ? (st.reason ?? '') : `(not a Status: ${r.text.slice(0, 80)})`, message: st.message ?? '' };
}

/** Over the limit: written on a raw socket, since the daemon answers 413 and closes before reading it all. */
async function postRaw(d: TestDaemon, body: string, chunked: boolean): Promise<Refusal> {
  const r = await rawHttpRequest(d.socket, 'POST', `${G}/virtualmachines`, Buffer.from(body), { chunked });
  let st: { kind?: string; reason?: string; message?: string } = {};
  try {
    st = JSON.parse(r.text) as typeof st;
  } catch {
    /* not JSON */
  }
  return { via: 'http', http: r.status, code: st.kind === 'Status' ? (st.reason ?? '') : `(not a Status: ${r.text.slice(0, 80)})`, message: st.message ?? '' };
}

async function apply(d: TestDaemon, text: string): Promise<Refusal & { exit: number | null }> {
  const r = await d.cli(['apply', '-f', '-'], { input: text });
  const m = /\(([A-Z][A-Z0-9_]+)\)\s*$/m.exec(r.stderr);
  return { via: 'cli', exit: r.code, code: m?.[1] ?? `(no code in: ${r.stderr.trim().slice(0, 120)})`, message: r.stderr.trim() };
}

/** QEMU's own option splitting: `,,` is a literal comma, a single `,` separates options. */
function qemuSplit(opts: string): string[] {
  const out: string[] = [];
  let cur = '';
  for (let i = 0; i < opts.length; i++) {
    if (opts[i] === ',') {
      if (opts[i + 1] === ',') {
        cur += ',';
        i++;
        continue;
      }
      out.push(cur);
      cur = '';
      continue;
    }
    cur += opts[i];
  }
  out.push(cur);
  return out;
}

tap.test('refused input: own code, daemon up, store untouched', { skip: daemonSkipReason({ guest: false }) }, async (t) => {
  const d = await startTestDaemon(t);
  // Something stored to protect: a halted VM (no QEMU, so nothing writes in the background once it settled).
  await d.apply(manifestVM('keep', { runStrategy: 'Halted' }));
  await waitFor('VM keep settled', async () => (await d.vm('keep'))?.status?.printableStatus === 'Stopped', 10_000);
  await new Promise((r) => setTimeout(r, 500));
  const daemonPid = d.pid;

  const bigMemory = vmObject('absurd');
  const negMemory = vmObject('negative');
  const unknownField = vmObject('unknown');
  const missingVolume = vmObject('novolume');
  const badName = vmObject('Bad_Name');
  const huge = vmObject('huge');
  (bigMemory.spec as { template: { spec: { domain: { memory: { guest: string } } } } }).template.spec.domain.memory.guest = '64Ei';
  (negMemory.spec as { template: { spec: { domain: { memory: { guest: string } } } } }).template.spec.domain.memory.guest = '-128Mi';
  (unknownField.spec as { template: { spec: { domain: Record<string, unknown> } } }).template.spec.domain.bogusField = true;
  (missingVolume.spec as { template: { spec: { domain: { devices: Record<string, unknown> } } } }).template.spec.domain.devices.disks = [
    { name: 'data', disk: { bus: 'virtio' } },
  ];
  (huge.metadata as { annotations?: Record<string, string> }).annotations = { padding: 'x'.repeat(1536 * 1024) };
  const keepNow = await d.vm('keep');
  const keepUnknown = structuredClone(keepNow!) as unknown as { spec: { template: { spec: { domain: Record<string, unknown> } } }; status?: unknown };
  keepUnknown.spec.template.spec.domain.bogusField = 1;
  delete keepUnknown.status;

  const cases: Array<{ name: string; category: string; want: { code: string | RegExp; http?: number }; send: () => Promise<Refusal> }> = [
    {
      name: 'malformed YAML (vmlet apply)',
      category: 'parse',
      want: { code: 'MANIFEST_PARSE' },
      send: () => apply(d, 'apiVersion: vmlet.io/v1alpha1\nkind: VirtualMachine\nmetadata: {name: x\n  spec: [\n'),
    },
    {
      name: 'malformed YAML body (HTTP)',
      category: 'parse-http',
      want: { code: 'BAD_REQUEST', http: 400 },
      send: () => post(d, `${G}/virtualmachines`, 'kind: VirtualMachine\nmetadata: {name: [x\n', 'application/yaml'),
    },
    {
      name: 'unknown field (HTTP)',
      category: 'unknown',
      want: { code: 'UNKNOWN_FIELD', http: 422 },
      send: () => post(d, `${G}/virtualmachines`, JSON.stringify(unknownField)),
    },
    { name: 'unknown field (vmlet apply)', category: 'unknown', want: { code: 'UNKNOWN_FIELD' }, send: () => apply(d, YAML.stringify(unknownField)) },
    {
      name: 'unknown field on replace of a stored VM',
      category: 'unknown',
      want: { code: 'UNKNOWN_FIELD', http: 422 },
      send: () => post(d, `${G}/virtualmachines/keep`, JSON.stringify(keepUnknown), 'application/json', 'PUT'),
    },
    {
      name: 'negative memory',
      category: 'memory',
      want: { code: /^(INVALID_QUANTITY|OUT_OF_RANGE)$/, http: 422 },
      send: () => post(d, `${G}/virtualmachines`, JSON.stringify(negMemory)),
    },
    {
      name: 'absurd memory (64Ei)',
      category: 'memory',
      want: { code: /^(INVALID_QUANTITY|OUT_OF_RANGE)$/, http: 422 },
      send: () => post(d, `${G}/virtualmachines`, JSON.stringify(bigMemory)),
    },
    {
      name: 'a disk without its volume',
      category: 'volume',
      want: { code: 'MISSING_VOLUME', http: 422 },
      send: () => post(d, `${G}/virtualmachines`, JSON.stringify(missingVolume)),
    },
    {
      name: 'a name that is not a DNS label (body)',
      category: 'name',
      want: { code: 'INVALID_NAME', http: 422 },
      send: () => post(d, `${G}/virtualmachines`, JSON.stringify(badName)),
    },
    {
      name: 'a name that is not a DNS label (path)',
      category: 'path',
      want: { code: 'INVALID_PATH', http: 400 },
      send: () => post(d, `${G}/virtualmachines/Bad_Name`, JSON.stringify(badName), 'application/json', 'PUT'),
    },
    {
      name: 'a name that is not a DNS label (vmlet apply)',
      category: 'name-cli',
      want: { code: /^(INVALID_NAME|INVALID_PATH)$/ },
      send: () => apply(d, YAML.stringify(badName)),
    },
    {
      name: 'a body over 1 MiB (Content-Length)',
      category: 'size',
      want: { code: 'BODY_TOO_LARGE', http: 413 },
      send: () => postRaw(d, JSON.stringify(huge), false),
    },
    { name: 'a body over 1 MiB (chunked)', category: 'size', want: { code: 'BODY_TOO_LARGE', http: 413 }, send: () => postRaw(d, JSON.stringify(huge), true) },
  ];

  const seen = new Map<string, string>();
  for (const c of cases) {
    const before = snapshotDir(d.stateDir);
    let got: Refusal;
    try {
      got = await c.send();
    } catch (e) {
      t.fail(`${c.name}: request failed: ${(e as Error).message}`);
      continue;
    }
    if (typeof c.want.code === 'string') t.equal(got.code, c.want.code, `${c.name}: code ${c.want.code} (${got.message.slice(0, 160)})`);
    else t.match(got.code, c.want.code, `${c.name}: code ${got.code} (${got.message.slice(0, 160)})`);
    if (c.want.http !== undefined) t.equal(got.http, c.want.http, `${c.name}: HTTP ${c.want.http} with a Status body`);
    if ('exit' in got) t.equal((got as { exit: number | null }).exit, 1, `${c.name}: vmlet exits 1`);
    const prev = seen.get(c.category);
    if (prev === undefined) seen.set(c.category, got.code);
    // The daemon is still there, and it is the same process.
    const h = await d.http('GET', '/healthz');
    t.equal(h.status, 200, `${c.name}: the daemon still answers`);
    t.ok(isAlive(daemonPid) && d.pid === daemonPid, `${c.name}: the daemon did not restart or die`);
    await new Promise((r) => setTimeout(r, 100));
    const after = snapshotDir(d.stateDir);
    const changed = [...new Set([...before.keys(), ...after.keys()])].filter((k) => before.get(k) !== after.get(k));
    t.same(changed, [], `${c.name}: nothing stored changed`);
  }
  // Several problems in one manifest: all of them are reported, each with its field, as kubectl does.
  await t.test('a manifest with an unknown field, a bad quantity and a bad name gets all three', async (t) => {
    const three = vmObject('Bad_Name');
    const domain = (three.spec as { template: { spec: { domain: Record<string, unknown> & { memory: { guest: string } } } } }).template.spec.domain;
    domain.bogusField = true;
    domain.memory.guest = 'lots';
    const want = [
      ['spec.template.spec.domain.bogusField', 'UNKNOWN_FIELD'],
      ['metadata.name', 'INVALID_NAME'],
      ['spec.template.spec.domain.memory.guest', 'INVALID_QUANTITY'],
    ];
    const before = snapshotDir(d.stateDir);
    const r = await d.http('POST', `${G}/virtualmachines`, JSON.stringify(three), { 'content-type': 'application/json' });
    t.equal(r.status, 422);
    const st = r.json() as { reason?: string; details?: { causes?: Array<{ field?: string; code?: string; reason?: string; message?: string }> } };
    t.equal(st.reason, 'UNKNOWN_FIELD', "the top-level code is the first problem's, as before");
    t.same(
      st.details?.causes?.map((c) => [c.field, c.code]),
      want,
      'details.causes: every problem with its field and code',
    );
    t.ok(
      st.details?.causes?.every((c) => c.reason === c.code && typeof c.message === 'string' && c.message !== ''),
      "each with a message, and Kubernetes' reason",
    );
    const cli = await d.cli(['apply', '-f', '-'], { input: YAML.stringify(three) });
    t.equal(cli.code, 1);
    const lines = cli.stderr.trimEnd().split('\n');
    t.equal(lines[0], 'error: VirtualMachine "default/Bad_Name" is invalid:', `the CLI says what was refused (${cli.stderr})`);
    t.same(
      lines.slice(1).map((l) => /^error: (\S+): .+ \(([A-Z_]+)\)$/.exec(l)?.slice(1)),
      want,
      'then one line per cause: error: FIELD: MESSAGE (CODE)',
    );
    t.same(snapshotDir(d.stateDir), before, 'nothing stored');
  });
  // The vmlet CLI sends a manifest in one go; the daemon reads and drops the rest so the client sees the 413, not EPIPE.
  await t.test('vmlet apply of a manifest over 1 MiB reports BODY_TOO_LARGE', async (t) => {
    const codes: string[] = [];
    for (let i = 0; i < 3; i++) codes.push((await apply(d, YAML.stringify(huge))).code);
    t.same(codes, ['BODY_TOO_LARGE', 'BODY_TOO_LARGE', 'BODY_TOO_LARGE'], `codes: ${codes.join(', ')}`);
  });
  t.equal((await d.http('GET', '/healthz')).status, 200, 'the daemon still answers after the CLI tries');
  const codes = ['parse', 'unknown', 'memory', 'volume', 'name', 'size'].map((k) => seen.get(k));
  t.equal(new Set(codes).size, codes.length, `each kind of bad input has its own code (${codes.join(', ')})`);
  t.equal((await d.vm('keep'))?.metadata.resourceVersion, keepNow?.metadata.resourceVersion, 'the stored VM keeps its resourceVersion');
  const list = await d.cliOk(['get', 'vms', '-o', 'name']);
  t.equal(list.trim(), 'virtualmachine.vmlet.io/keep', 'only the good VM is stored');
});

tap.test('a comma in a disk path reaches QEMU escaped, not as an option', { skip }, async (t) => {
  // QEMU kept root: a confined QEMU gets its hostDisks by fd, so no path reaches its argv at all
  // (daemon-qemu-confinement.test.ts); by name the path must still be escaped.
  const d = await startTestDaemon(t, { config: { qemuUser: 'root' } });
  // Accepted by validation (commas are legal in file names); QEMU must see one filename, not `file.driver=null-co`.
  const diskPath = path.join(d.root, 'disk,file.driver=null-co,x.img');
  const vmi = vmiObject('comma', {
    disks: [{ name: 'data', disk: { bus: 'virtio' } }],
    volumes: [{ name: 'data', hostDisk: { path: diskPath, type: 'DiskOrCreate', capacity: '1Mi' } }],
  });
  const out = await d.apply(YAML.stringify(vmi));
  t.match(out, 'virtualmachineinstance.vmlet.io/comma created', 'accepted (documented: commas are escaped, not refused)');
  const running = await d.waitPhase('comma', 'Running', 30_000);
  const pid = running.status?.vmlet?.qemuPid;
  const [qemu] = qemuProcessesFor(running.metadata.uid);
  t.ok(qemu && qemu.pid === pid, 'its QEMU runs');
  if (!qemu) return;
  const withPath = qemu.argv.filter((a) => a.includes('file.driver=null-co'));
  t.equal(withPath.length, 1, `one argument names the disk: ${withPath.join(' | ')}`);
  const parts = qemuSplit(withPath[0] ?? '');
  t.notOk(
    parts.some((p) => p.startsWith('file.driver=')),
    'QEMU parses no file.driver option out of it',
  );
  t.ok(parts.includes(`filename=${diskPath}`), 'QEMU parses the whole path as the filename');
  const opened = readdirSync(`/proc/${qemu.pid}/fd`).map((fd) => {
    try {
      return readlinkSync(`/proc/${qemu.pid}/fd/${fd}`);
    } catch {
      return '';
    }
  });
  t.ok(opened.includes(diskPath), 'QEMU opened the file with the comma in its name (not a null-co device)');
});

tap.test('kubevirt.io/v1 manifests are accepted', { skip }, async (t) => {
  const d = await startTestDaemon(t);
  const out = await d.apply(manifestVM('kv', { apiVersion: 'kubevirt.io/v1', runStrategy: 'Always' }));
  t.match(out, 'virtualmachine.vmlet.io/kv created', 'apply accepts kubevirt.io/v1');
  const vmi = await d.waitPhase('kv', 'Running', 30_000);
  t.equal(qemuProcessesFor(vmi.metadata.uid).length, 1, 'and runs it');
  t.comment(`stored apiVersion: VM ${(await d.vm('kv'))?.apiVersion}, VMI ${vmi.apiVersion}`);
  const again = await d.apply(manifestVM('kv', { apiVersion: 'kubevirt.io/v1', runStrategy: 'Always' }));
  t.match(again, 'virtualmachine.vmlet.io/kv configured', 're-applying it is a replace');
  const vmiDirect = await d.apply(YAML.stringify(vmiObject('kvi', { apiVersion: 'kubevirt.io/v1' })));
  t.match(vmiDirect, 'virtualmachineinstance.vmlet.io/kvi created', 'a kubevirt.io/v1 VMI too');
  await d.waitPhase('kvi', 'Running', 30_000);
});
