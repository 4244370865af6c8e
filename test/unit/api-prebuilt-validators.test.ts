// Tests the build-time validators (crd-validators.cjs): they judge, report and default exactly like the ones ajv compiles at runtime, and a stale file is ignored.
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync, appendFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import {
  CRD_FILES,
  DEFAULT_CRD_DIR,
  compileSchemas,
  parseManifests,
  validateObject,
  ValidationError,
  type CompiledSchemas,
  type JsonSchema,
  type SchemaKind,
} from '../../src/api/index.js';
import { loadRuntimeSchemas } from '../../src/api/schema.js';
import { mapSchemaErrors } from '../../src/api/schema-errors.js';
import { loadPrebuiltSchemas } from '../../src/api/schema-prebuilt.js';
import { validatorsModuleSource, writeValidatorsModule } from '../../src/api/schema-standalone.js';
import { vmiObject, vmObject } from '../support/daemon.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const KINDS: readonly SchemaKind[] = ['VirtualMachine', 'VirtualMachineInstance'];
type Obj = Record<string, unknown>;

const tmp = mkdtempSync(path.join(os.tmpdir(), 'vmlet-prebuilt-'));
t.teardown(() => rmSync(tmp, { recursive: true, force: true }));
const generated = path.join(tmp, 'crd-validators.cjs');
writeValidatorsModule(generated, DEFAULT_CRD_DIR);

let lastIgnored = '';

function prebuiltFrom(crdDir: string, file = generated): CompiledSchemas | undefined {
  lastIgnored = '';
  const onIgnored = (reason: string): void => {
    lastIgnored = reason;
  };
  return loadPrebuiltSchemas({ crdDir, crdFiles: Object.values(CRD_FILES), loadSchemas: loadRuntimeSchemas, file, onIgnored });
}

const prebuilt = prebuiltFrom(DEFAULT_CRD_DIR);
const firstIgnored = lastIgnored;
const compiled = compileSchemas(DEFAULT_CRD_DIR);

// ---------------------------------------------------------------------------------------------
// the corpus

function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function yamlFiles(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir).flatMap((name) => {
    const p = path.join(dir, name);
    if (name === 'node_modules' || name === 'crds') return [];
    if (statSync(p).isDirectory()) return yamlFiles(p);
    return /\.ya?ml$/.test(name) ? [p] : [];
  });
}

/** VM and VMI manifests of the repo: examples/, deploy/ and test fixtures (not CRDs). */
function repoManifests(): Array<{ name: string; obj: Obj }> {
  const out: Array<{ name: string; obj: Obj }> = [];
  for (const file of ['examples', 'deploy', 'test'].flatMap((d) => yamlFiles(path.join(root, d)))) {
    const text = readFileSync(file, 'utf8').replaceAll('@GUEST_KERNEL@', '/srv/guest/vmlinuz').replaceAll('@GUEST_INITRD@', '/srv/guest/initrd.img');
    let docs: unknown[];
    try {
      docs = parseManifests(text);
    } catch {
      continue;
    }
    docs.forEach((d, i) => {
      if (isObj(d) && (d['kind'] === 'VirtualMachine' || d['kind'] === 'VirtualMachineInstance'))
        out.push({ name: `${path.relative(root, file)}#${i}`, obj: d });
    });
  }
  return out;
}

/** Deep-sets a dotted path, making objects on the way; `undefined` deletes. */
function set(obj: Obj, dotted: string, value: unknown): Obj {
  const copy = structuredClone(obj);
  const segs = dotted.split('.');
  let cur: Obj = copy;
  for (const seg of segs.slice(0, -1)) {
    const next = cur[seg];
    if (isObj(next) || Array.isArray(next)) cur = next as Obj;
    else {
      const made: Obj = {};
      cur[seg] = made;
      cur = made;
    }
  }
  const last = segs[segs.length - 1]!;
  if (value === undefined) delete cur[last];
  else cur[last] = value;
  return copy;
}

/** Deliberately bad objects, built from good ones. */
function badObjects(vmi: Obj, vm: Obj): Array<{ name: string; obj: Obj }> {
  return [
    { name: 'unknown top-level field', obj: set(vmi, 'bogus', 1) },
    { name: 'unknown field deep down', obj: set(vmi, 'spec.domain.devices.watchdog', { name: 'w' }) },
    { name: 'unknown metadata field', obj: set(vmi, 'metadata.colour', 'red') },
    { name: 'unknown field in a VM template', obj: set(vm, 'spec.template.spec.domain.gpu', {}) },
    { name: 'wrong type: cores', obj: set(vmi, 'spec.domain.cpu.cores', 'two') },
    { name: 'wrong type: spec', obj: set(vmi, 'spec', 'nope') },
    { name: 'wrong type: labels', obj: set(vmi, 'metadata.labels', { a: 1 }) },
    { name: 'wrong type: disks', obj: set(vmi, 'spec.domain.devices.disks', { name: 'x' }) },
    { name: 'wrong type: quantity', obj: set(vmi, 'spec.domain.memory.guest', true) },
    { name: 'missing name', obj: set(vmi, 'metadata.name', undefined) },
    { name: 'missing spec', obj: set(vmi, 'spec', undefined) },
    { name: 'missing domain', obj: set(vmi, 'spec.domain', undefined) },
    { name: 'missing template', obj: set(vm, 'spec.template', undefined) },
    { name: 'bad enum: disk bus', obj: set(vmi, 'spec.domain.devices.disks', [{ name: 'root', disk: { bus: 'floppy' } }]) },
    { name: 'bad enum: runStrategy', obj: set(vm, 'spec.runStrategy', 'Sometimes') },
    { name: 'out of range: cores', obj: set(vmi, 'spec.domain.cpu.cores', -3) },
    { name: 'several at once', obj: set(set(set(vmi, 'bogus', 1), 'spec.domain.cpu.cores', 'x'), 'metadata.name', undefined) },
  ];
}

/** A seeded PRNG (mulberry32), so a failure reproduces. */
function prng(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let x = Math.imul(a ^ (a >>> 15), 1 | a);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

const WRONG: readonly unknown[] = ['str', 7, -1, 2.5, true, null, [], {}];

/** An object shaped by the schema, mostly right, now and then wrong (type, enum, unknown or missing field, range). */
function sample(schema: unknown, rnd: () => number, depth: number): unknown {
  if (!isObj(schema)) return {};
  if (rnd() < 0.04) return WRONG[Math.floor(rnd() * WRONG.length)];
  const en = schema['enum'];
  if (Array.isArray(en) && en.length > 0) return rnd() < 0.9 ? en[Math.floor(rnd() * en.length)] : 'not-a-value';
  if (schema['x-kubernetes-int-or-string'] === true || Array.isArray(schema['anyOf'])) return rnd() < 0.5 ? '128Mi' : Math.floor(rnd() * 8);
  switch (schema['type']) {
    case 'object': {
      const out: Obj = {};
      if (depth > 14) return out;
      const props = isObj(schema['properties']) ? schema['properties'] : {};
      const required = Array.isArray(schema['required']) ? schema['required'] : [];
      for (const [k, sub] of Object.entries(props)) {
        const want = required.includes(k) ? rnd() > 0.03 : rnd() < 0.45;
        if (want) out[k] = sample(sub, rnd, depth + 1);
      }
      if (isObj(schema['additionalProperties'])) {
        for (let i = Math.floor(rnd() * 3); i > 0; i--) out[`key${i}`] = sample(schema['additionalProperties'], rnd, depth + 1);
      }
      if (rnd() < 0.03) out['notAField'] = 'x';
      return out;
    }
    case 'array':
      return depth > 14 ? [] : Array.from({ length: Math.floor(rnd() * 3) }, () => sample(schema['items'], rnd, depth + 1));
    case 'string':
      return rnd() < 0.5 ? 'abc' : `s-${Math.floor(rnd() * 1000)}`;
    case 'integer':
      return rnd() < 0.9 ? Math.floor(rnd() * 16) : rnd() < 0.5 ? -5 : 1e12;
    case 'number':
      return rnd() * 10;
    case 'boolean':
      return rnd() < 0.5;
    default:
      return { any: 'thing' };
  }
}

/** Objects drawn from each kind's runtime schema. */
function sampledObjects(count: number): Array<{ name: string; obj: Obj; kind: SchemaKind }> {
  const out: Array<{ name: string; obj: Obj; kind: SchemaKind }> = [];
  for (const kind of KINDS) {
    const schema: JsonSchema = compiled.schemas[kind];
    for (let seed = 1; seed <= count; seed++) {
      const s = sample(schema, prng(seed * 7919 + kind.length), 0);
      const obj = isObj(s) ? s : { value: s };
      out.push({ name: `${kind} sample #${seed}`, obj: { ...obj, apiVersion: 'vmlet.io/v1alpha1', kind }, kind });
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// comparisons

function kindOf(obj: Obj): SchemaKind {
  return obj['kind'] === 'VirtualMachine' ? 'VirtualMachine' : 'VirtualMachineInstance';
}

/** What one validator makes of an object: valid, ajv's errors, the mapped field errors and the defaulted copy. */
function judge(schemas: CompiledSchemas, kind: SchemaKind, obj: unknown): { valid: boolean; errors: unknown; fields: unknown; data: unknown } {
  const data = structuredClone(obj);
  const validate = schemas.validators[kind];
  const valid = validate(data);
  const errors = validate.errors ?? [];
  return { valid, errors, fields: mapSchemaErrors(errors), data };
}

function validateOutcome(schemas: CompiledSchemas, obj: Obj): unknown {
  try {
    return { ok: validateObject(structuredClone(obj), { schemas }) };
  } catch (e) {
    if (e instanceof ValidationError) return { code: e.code, details: e.details };
    return { threw: String(e) }; // not a ValidationError: still the same on both sides
  }
}

t.test('the generated validators load and say where they came from', async (t) => {
  t.ok(prebuilt, `loaded ${firstIgnored}`);
  t.equal(prebuilt?.origin, 'prebuilt');
  t.equal(compiled.origin, 'compiled');
  t.same(prebuilt?.schemas, compiled.schemas, 'the runtime schemas are still there, read on demand');
  t.match(readFileSync(generated, 'utf8'), /^\/\/ Generated by scripts\/gen-validators\.mjs/);
});

t.test('prebuilt and runtime-compiled validators agree over the corpus', async (t) => {
  if (prebuilt === undefined) return t.fail('no prebuilt validators');
  const repo = repoManifests();
  t.ok(repo.length >= 2, `the repo's manifests (${repo.map((m) => m.name).join(', ')})`);
  const vmi = vmiObject('corpus-vmi');
  const vm = vmObject('corpus-vm');
  // The schema does not require metadata; validateVMI refuses it as MISSING_FIELD.
  const edge = [{ name: 'no metadata at all', obj: set(vmi, 'metadata', undefined) }];
  const hand = [{ name: 'test VMI', obj: vmi }, { name: 'test VM', obj: vm }, ...repo, ...badObjects(vmi, vm), ...edge];
  const sampled = sampledObjects(150);
  let valid = 0;
  let invalid = 0;
  for (const { name, obj } of [...hand, ...sampled]) {
    const kind = kindOf(obj);
    const a = judge(prebuilt, kind, obj);
    const b = judge(compiled, kind, obj);
    if (a.valid) valid++;
    else invalid++;
    // One assertion per object keeps the output short; the first difference is shown on failure.
    t.same({ ...a, vo: validateOutcome(prebuilt, obj) }, { ...b, vo: validateOutcome(compiled, obj) }, name);
  }
  for (const { name, obj } of badObjects(vmi, vm)) t.notOk(judge(prebuilt, kindOf(obj), obj).valid, `${name} is refused`);
  t.ok(valid > 10 && invalid > 50, `both outcomes are exercised (${valid} valid, ${invalid} invalid)`);
  const withDefaults = judge(prebuilt, 'VirtualMachineInstance', set(vmi, 'metadata.namespace', undefined));
  t.match(withDefaults.data, { metadata: { namespace: 'default' } }, 'schema defaults are applied');
});

t.test('a stale or foreign generated file is ignored', async (t) => {
  const crds = path.join(tmp, 'crds');
  cpSync(DEFAULT_CRD_DIR, crds, { recursive: true });
  t.ok(prebuiltFrom(crds), 'an identical copy of the CRDs matches');
  appendFileSync(path.join(crds, CRD_FILES.VirtualMachineInstance), '\n# edited after the build\n');
  t.equal(prebuiltFrom(crds), undefined, 'a CRD edited since the build: not used');
  t.match(lastIgnored, /generated from other CRD files/);
  t.equal(prebuiltFrom(path.join(tmp, 'no-such-dir')), undefined, 'unreadable CRDs: not used (the runtime compile reports them)');
  t.match(lastIgnored, /cannot read the CRDs/);
  t.equal(prebuiltFrom(DEFAULT_CRD_DIR, path.join(tmp, 'absent.cjs')), undefined, 'no file: not used');
  t.match(lastIgnored, /is absent/);
  const foreign = path.join(tmp, 'foreign.cjs');
  writeFileSync(foreign, 'exports.digest = "x";\n');
  t.equal(prebuiltFrom(DEFAULT_CRD_DIR, foreign), undefined, 'a module of another shape: not used');
  t.match(lastIgnored, /not a validators module/);
  const broken = path.join(tmp, 'broken.cjs');
  writeFileSync(broken, 'this is not javascript\n');
  t.equal(prebuiltFrom(DEFAULT_CRD_DIR, broken), undefined, 'a module that does not load: not used');
  t.match(lastIgnored, /cannot load/);
  const regenerated = path.join(tmp, 'regenerated.cjs');
  writeValidatorsModule(regenerated, crds);
  t.ok(prebuiltFrom(crds, regenerated), 'regenerated from the edited CRDs: used again');
  t.not(validatorsModuleSource(crds), validatorsModuleSource(DEFAULT_CRD_DIR), 'the digest follows the CRDs');
  t.same(
    readdirSync(tmp).filter((f) => f.endsWith('.tmp')),
    [],
    'no temp files left behind',
  );
});

t.test('loading and using the prebuilt validators does not load ajv itself (a fresh process)', async (t) => {
  const script = `
    import { createRequire } from 'node:module';
    import { loadPrebuiltSchemas } from ${JSON.stringify(path.join(root, 'src', 'api', 'schema-prebuilt.ts'))};
    import { CRD_FILES, DEFAULT_CRD_DIR, loadRuntimeSchemas } from ${JSON.stringify(path.join(root, 'src', 'api', 'schema.ts'))};
    import { validateVMI } from ${JSON.stringify(path.join(root, 'src', 'api', 'validate.ts'))};
    const schemas = loadPrebuiltSchemas({ crdDir: DEFAULT_CRD_DIR, crdFiles: Object.values(CRD_FILES), loadSchemas: loadRuntimeSchemas, file: ${JSON.stringify(generated)} });
    validateVMI(${JSON.stringify(vmiObject('child'))}, { schemas });
    const loaded = Object.keys(createRequire(import.meta.url).cache).filter((f) => f.includes('/node_modules/ajv/'));
    console.log(JSON.stringify({ origin: schemas.origin, loaded }));`;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: root, encoding: 'utf8' });
  t.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as { origin?: string; loaded?: string[] };
  t.equal(out.origin, 'prebuilt');
  t.same(
    (out.loaded ?? []).filter((f) => !f.includes('/node_modules/ajv/dist/runtime/')),
    [],
    `only ajv's small runtime helpers are loaded (${(out.loaded ?? []).map((f) => path.basename(f)).join(', ')})`,
  );
});
