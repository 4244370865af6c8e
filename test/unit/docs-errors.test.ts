// Every error code thrown in src/ is listed in docs/errors.md (house rule).
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';

const root = path.resolve(import.meta.dirname, '..', '..');

function sources(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? sources(p) : p.endsWith('.ts') ? [p] : [];
  });
}

t.test('every thrown code is documented', async (t) => {
  const doc = fs.readFileSync(path.join(root, 'docs', 'errors.md'), 'utf8');
  const codes = new Set<string>();
  const re = /new (?:VmletError|QmpError|ValidationError)\(\s*'([A-Z][A-Z0-9_]+)'/g;
  for (const file of sources(path.join(root, 'src'))) {
    for (const m of fs.readFileSync(file, 'utf8').matchAll(re)) codes.add(m[1]!);
  }
  t.ok(codes.size > 50, `found ${codes.size} codes in src/`);
  const missing = [...codes].filter((c) => !doc.includes(`\`${c}\``)).sort();
  t.same(missing, [], 'codes missing from docs/errors.md (add them to docs/errors-<area>.md and run node scripts/merge-error-docs.mjs)');
});
