#!/usr/bin/env node
// Builds docs/errors.md from the per-area error tables (docs/errors-*.md), so every code is listed in one place.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const docs = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'docs');
const order = ['daemon', 'http', 'api', 'store', 'qmp', 'launcher', 'cgroups', 'net', 'cluster', 'disk', 'install'];
const parts = fs.readdirSync(docs).filter((f) => /^errors-.+\.md$/.test(f))
  .sort((a, b) => (order.indexOf(a.slice(7, -3)) + 100) % 100 - (order.indexOf(b.slice(7, -3)) + 100) % 100);
let out = '# Error codes\n\nEvery error vmlet reports carries a stable `code`: in API responses it is the `reason` of the\nKubernetes `Status` object, on the CLI it ends the one-line message in parentheses. This page is\nbuilt from the per-area tables (`docs/errors-*.md`) by `node scripts/merge-error-docs.mjs`;\n`test/unit/docs-errors.test.ts` fails when this page and the registry (`src/error-codes.ts`: code, HTTP\nstatus, area) disagree.\n\n';
for (const f of parts) {
  const text = fs.readFileSync(path.join(docs, f), 'utf8').replace(/^# /m, '## ').replace(/To be merged into `docs\/errors\.md`\.?/g, '');
  out += `${text.trim()}\n\n`;
}
const target = path.join(docs, 'errors.md');
if (process.argv.includes('--check')) {
  // Used by test/unit/docs-errors.test.ts: fails when docs/errors.md is older than its parts.
  if (fs.readFileSync(target, 'utf8') !== out) {
    console.error('docs/errors.md is out of date: run node scripts/merge-error-docs.mjs');
    process.exit(1);
  }
} else {
  fs.writeFileSync(target, out);
  console.log(`docs/errors.md: ${parts.length} parts`);
}
