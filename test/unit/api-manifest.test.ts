import t from 'tap';
import { parseManifests } from '../../src/api/index.js';
import type { ManifestErrorDetails } from '../../src/api/manifest.js';
import { type VmletError } from '../../src/errors.js';

t.test('several YAML documents, empty ones skipped', async (t) => {
  const text = `---
apiVersion: vmlet.io/v1alpha1
kind: VirtualMachine
metadata: {name: a}
---
# only a comment
---
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: b
`;
  const docs = parseManifests(text);
  t.equal(docs.length, 2);
  t.match(docs[0], { kind: 'VirtualMachine', metadata: { name: 'a' } });
  t.match(docs[1], { kind: 'VirtualMachineInstance', metadata: { name: 'b' } });
});

t.test('JSON', async (t) => {
  const docs = parseManifests(JSON.stringify({ apiVersion: 'vmlet.io/v1alpha1', kind: 'VirtualMachine', metadata: { name: 'j' } }, null, 2));
  t.same(docs, [{ apiVersion: 'vmlet.io/v1alpha1', kind: 'VirtualMachine', metadata: { name: 'j' } }]);
});

t.test('Lists are flattened', async (t) => {
  const docs = parseManifests('apiVersion: v1\nkind: List\nitems:\n- kind: VirtualMachine\n- kind: VirtualMachineInstance\n');
  t.same(docs, [{ kind: 'VirtualMachine' }, { kind: 'VirtualMachineInstance' }]);
});

t.test('empty text', async (t) => {
  t.same(parseManifests(''), []);
  t.same(parseManifests('---\n---\n'), []);
});

t.test('malformed YAML has line and column', async (t) => {
  const text = 'apiVersion: v1\nkind: VirtualMachine\nmetadata:\n  name: [unclosed\n';
  const e = t.throws(() => parseManifests(text)) as VmletError & { details: ManifestErrorDetails };
  t.equal(e.code, 'MANIFEST_PARSE');
  t.match(e.message, /line \d+, column \d+/);
  t.type(e.details.line, 'number');
  t.type(e.details.col, 'number');

  const bad = t.throws(() => parseManifests('a: 1\n  b: 2\n')) as VmletError & { details: ManifestErrorDetails };
  t.equal(bad.code, 'MANIFEST_PARSE');
  t.equal(bad.details.line, 1);
  t.notMatch(bad.message, /column \d+.*column \d+/, 'position given once');
  t.throws(() => parseManifests('a: 1\na: 2\n'), { code: 'MANIFEST_PARSE' }, 'duplicate keys');
  t.throws(() => parseManifests('{"a": 1,}x'), { code: 'MANIFEST_PARSE' }, 'bad JSON');
  t.throws(() => parseManifests('---\na: 1\n---\n- 1\n- 2\n'), { code: 'MANIFEST_PARSE', message: /document 2/ }, 'a list is not an object');
  t.throws(() => parseManifests('just a string'), { code: 'MANIFEST_PARSE' });
});
