import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { parse } from 'yaml';
import { CRD_FILES, DEFAULT_CRD_DIR, compileSchemas, readCrdSchema, strictify, validateObject, parseManifests } from '../../src/api/index.js';

const root = join(DEFAULT_CRD_DIR, '..', '..');

function walk(node: unknown, path: string, visit: (node: Record<string, unknown>, path: string) => void): void {
  if (Array.isArray(node)) node.forEach((n, i) => walk(n, `${path}[${i}]`, visit));
  else if (typeof node === 'object' && node !== null) {
    visit(node as Record<string, unknown>, path);
    for (const [k, v] of Object.entries(node)) walk(v, `${path}.${k}`, visit);
  }
}

t.test('the CRD directory is found relative to the module', async (t) => {
  t.ok(DEFAULT_CRD_DIR.endsWith('/deploy/crds/'));
  // Besides the CRDs the folder holds only the kustomization that deploy/ references them through.
  t.same(
    readdirSync(DEFAULT_CRD_DIR)
      .filter((f) => f !== 'kustomization.yaml')
      .sort(),
    Object.values(CRD_FILES).sort(),
  );
});

t.test('the VM template spec schema is the VMI spec schema', async (t) => {
  const vm = readCrdSchema(join(DEFAULT_CRD_DIR, CRD_FILES.VirtualMachine)) as {
    properties: { spec: { properties: { template: { properties: { spec: unknown } } } } };
  };
  const vmi = readCrdSchema(join(DEFAULT_CRD_DIR, CRD_FILES.VirtualMachineInstance)) as { properties: { spec: unknown } };
  t.same(vm.properties.spec.properties.template.properties.spec, vmi.properties.spec);
});

t.test('CRDs are structural Kubernetes CRDs', async (t) => {
  for (const file of Object.values(CRD_FILES)) {
    const crd = parse(readFileSync(join(DEFAULT_CRD_DIR, file), 'utf8')) as {
      apiVersion: string;
      kind: string;
      spec: {
        group: string;
        scope: string;
        versions: Array<{ name: string; subresources?: { status?: object }; additionalPrinterColumns?: unknown[]; schema: { openAPIV3Schema: unknown } }>;
      };
    };
    t.equal(crd.apiVersion, 'apiextensions.k8s.io/v1');
    t.equal(crd.kind, 'CustomResourceDefinition');
    t.equal(crd.spec.group, 'vmlet.io');
    t.equal(crd.spec.scope, 'Namespaced');
    const v = crd.spec.versions[0];
    t.equal(v?.name, 'v1alpha1');
    t.same(v?.subresources?.status, {}, `${file}: status subresource`);
    t.ok((v?.additionalPrinterColumns?.length ?? 0) >= 3, `${file}: printer columns`);
    const problems: string[] = [];
    walk(v?.schema.openAPIV3Schema, '', (node, path) => {
      // Kubernetes refuses additionalProperties: false and additionalProperties next to properties.
      if (node['additionalProperties'] === false) problems.push(`${path}: additionalProperties false`);
      if (node['additionalProperties'] !== undefined && node['properties'] !== undefined) problems.push(`${path}: both`);
      // Every field needs a type, except int-or-string.
      if (path.match(/\.properties\.[^.]+$/) && node['type'] === undefined && node['x-kubernetes-int-or-string'] !== true) {
        problems.push(`${path}: no type`);
      }
      if (node['format'] !== undefined) problems.push(`${path}: format (ajv has no formats loaded)`);
    });
    t.same(problems, [], `${file}: structural`);
  }
});

t.test('strictify', async (t) => {
  const s = strictify({
    type: 'object',
    properties: {
      a: { type: 'object', properties: { b: { type: 'string', default: 'x' } } },
      m: { type: 'object', additionalProperties: { type: 'string' } },
      p: { type: 'object', 'x-kubernetes-preserve-unknown-fields': true, properties: { q: { type: 'object', properties: {} } } },
      e: { type: 'string', enum: ['properties'] },
    },
  });
  t.same(s, {
    type: 'object',
    additionalProperties: false,
    properties: {
      a: { type: 'object', additionalProperties: false, properties: { b: { type: 'string', default: 'x' } } },
      m: { type: 'object', additionalProperties: { type: 'string' } },
      p: { type: 'object', 'x-kubernetes-preserve-unknown-fields': true, properties: { q: { type: 'object', additionalProperties: false, properties: {} } } },
      e: { type: 'string', enum: ['properties'] },
    },
  });
});

t.test('schemas compile from an explicit directory', async (t) => {
  const c = compileSchemas(DEFAULT_CRD_DIR);
  t.type(c.validators.VirtualMachine, 'function');
  t.throws(() => compileSchemas('/nonexistent'), { code: 'SCHEMA_LOAD' });
});

t.test('examples validate', async (t) => {
  const dir = join(root, 'examples');
  const files = readdirSync(dir).filter((f) => /^vmi?-.*\.yaml$/.test(f));
  t.ok(files.length > 0);
  for (const f of files) {
    const text = readFileSync(join(dir, f), 'utf8').replaceAll('@GUEST_KERNEL@', '/srv/guest/vmlinuz').replaceAll('@GUEST_INITRD@', '/srv/guest/initrd.img');
    for (const doc of parseManifests(text)) t.ok(validateObject(doc), `${f}`);
  }
});
