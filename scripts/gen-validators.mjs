#!/usr/bin/env node
// Writes dist/api/crd-validators.cjs (the CRD validators as ajv standalone code) after tsc, so the daemon never compiles a schema.
// Usage: node scripts/gen-validators.mjs [out-file] (default: dist/api/crd-validators.cjs).
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const out = path.resolve(process.argv[2] ?? path.join(root, 'dist', 'api', 'crd-validators.cjs'));
try {
  const { writeValidatorsModule } = await import(path.join(root, 'dist', 'api', 'schema-standalone.js'));
  writeValidatorsModule(out, path.join(root, 'deploy', 'crds'));
} catch (e) {
  process.stderr.write(`gen-validators: ${e instanceof Error ? e.message : String(e)}${e?.cause ? `: ${e.cause.message ?? e.cause}` : ''}\n`);
  process.exit(1);
}
