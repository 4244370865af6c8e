// The error registry (src/error-codes.ts) and the error docs (docs/errors-*.md, merged into docs/errors.md) list the same codes, areas and HTTP statuses.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { ERROR_CODES, errorCodes, httpStatusOf, isErrorCode, type ErrorArea } from '../../src/error-codes.js';
import { httpStatusFor } from '../../src/daemon/status.js';

const root = path.resolve(import.meta.dirname, '..', '..');
const docsDir = path.join(root, 'docs');
const HINT = 'add the code to src/error-codes.ts and to docs/errors-<area>.md, then run node scripts/merge-error-docs.mjs';

function sources(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? sources(p) : p.endsWith('.ts') ? [p] : [];
  });
}

interface DocRow {
  code: string;
  area: string;
  /** The HTTP column's number, when the table has one and the row gives a status. */
  http: number | undefined;
}

/** Every `| \`CODE\` | …` row of the per-area tables. */
function docRows(): DocRow[] {
  const rows: DocRow[] = [];
  for (const f of fs.readdirSync(docsDir).filter((n) => /^errors-.+\.md$/.test(n))) {
    const area = f.slice('errors-'.length, -'.md'.length);
    let httpColumn = -1;
    for (const line of fs.readFileSync(path.join(docsDir, f), 'utf8').split('\n')) {
      if (!line.startsWith('|')) continue;
      const cells = line.split(' | ').map((c) => c.replace(/^\|\s*|\s*\|$/g, '').trim());
      if (cells[0] === 'code' || cells[0] === 'reason') httpColumn = cells.indexOf('HTTP');
      const m = /^`([A-Z][A-Z0-9_]+)`$/.exec(cells[0] ?? '');
      if (!m) continue;
      const status = httpColumn > 0 ? /^(\d{3})$/.exec(cells[httpColumn] ?? '') : null;
      rows.push({ code: m[1]!, area, http: status ? Number(status[1]) : undefined });
    }
  }
  return rows;
}

t.test('every registered code is explained in docs/errors-<its area>.md', async (t) => {
  const rows = docRows();
  const missing = errorCodes().filter((c) => !rows.some((r) => r.code === c && r.area === ERROR_CODES[c].area));
  t.same(missing, [], `registered codes missing from their area's doc (${HINT})`);
  t.ok(errorCodes().length > 150, `${errorCodes().length} codes registered`);
});

t.test('every documented code is registered, with the HTTP status the docs give', async (t) => {
  const rows = docRows();
  t.same([...new Set(rows.filter((r) => !isErrorCode(r.code)).map((r) => r.code))].sort(), [], `documented codes missing from src/error-codes.ts (${HINT})`);
  const wrong = rows
    .filter((r) => r.http !== undefined && r.http !== httpStatusOf(r.code))
    .map((r) => `${r.code}: docs/errors-${r.area}.md says ${r.http}, the registry ${httpStatusOf(r.code)}`);
  t.same(wrong, [], 'HTTP statuses agree');
  const areas = new Set<ErrorArea>(errorCodes().map((c) => ERROR_CODES[c].area));
  for (const a of areas) t.ok(fs.existsSync(path.join(docsDir, `errors-${a}.md`)), `docs/errors-${a}.md exists`);
});

t.test('docs/errors.md is merged from the current parts', async (t) => {
  t.doesNotThrow(
    () => execFileSync(process.execPath, [path.join(root, 'scripts', 'merge-error-docs.mjs'), '--check'], { stdio: 'pipe' }),
    'node scripts/merge-error-docs.mjs --check',
  );
  const doc = fs.readFileSync(path.join(docsDir, 'errors.md'), 'utf8');
  t.same(
    errorCodes().filter((c) => !doc.includes(`\`${c}\``)),
    [],
    'every registered code is in docs/errors.md',
  );
});

t.test('every code written literally in src/ is registered', async (t) => {
  // Until VmletError's constructor takes an ErrorCode, this scan is what keeps literal codes honest.
  const codes = new Set<string>();
  const re = /new (?:VmletError|QmpError|ValidationError)\(\s*'([A-Z][A-Z0-9_]+)'/g;
  for (const file of sources(path.join(root, 'src'))) {
    for (const m of fs.readFileSync(file, 'utf8').matchAll(re)) codes.add(m[1]!);
  }
  t.ok(codes.size > 50, `found ${codes.size} codes in src/`);
  t.same([...codes].filter((c) => !isErrorCode(c)).sort(), [], `codes thrown in src/ but not registered (${HINT})`);
});

t.test("the API's HTTP mapping gives every registered code the registry's status", async (t) => {
  // REQUEST_TIMEOUT is written by the connection layer with an explicit 408, never mapped through the table.
  const explicit = new Set(['REQUEST_TIMEOUT']);
  const differ = errorCodes()
    .filter((c) => !explicit.has(c) && httpStatusFor(c) !== ERROR_CODES[c].http)
    .map((c) => `${c}: status.ts ${httpStatusFor(c)}, registry ${ERROR_CODES[c].http}`);
  t.same(differ, [], 'src/daemon/status.ts agrees with src/error-codes.ts');
  t.equal(httpStatusOf('NOT_A_CODE'), 500, 'an unregistered code is a 500');
});
