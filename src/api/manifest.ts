// Parses manifest text (YAML or JSON, several `---` documents, kubectl-style Lists) into plain objects.

import { parseAllDocuments, YAMLError } from 'yaml';
import { VmletError } from '../errors.js';
import { isRecord } from './vocabulary.js';

/** `details` of a MANIFEST_PARSE error: the 1-based document, and where in the text the problem is when known. */
export interface ManifestErrorDetails {
  document: number;
  line: number | undefined;
  col: number | undefined;
}

function parseError(message: string, e: YAMLError | undefined, docIndex: number): VmletError {
  const pos = e?.linePos?.[0];
  const where = pos !== undefined ? ` at line ${pos.line}, column ${pos.col}` : '';
  const details: ManifestErrorDetails = { document: docIndex + 1, line: pos?.line, col: pos?.col };
  return new VmletError('MANIFEST_PARSE', `malformed manifest (document ${docIndex + 1})${where}: ${message}`, { cause: e, details });
}

/**
 * Parses YAML or JSON text holding one or more documents. Empty documents are skipped; a
 * `kind: *List` document with `items` is flattened into its items. Throws MANIFEST_PARSE (its
 * `details` are ManifestErrorDetails: `line` and `col` set when known) for malformed text or a document that is not an object.
 */
export function parseManifests(text: string): unknown[] {
  const docs = parseAllDocuments(text, { uniqueKeys: true, prettyErrors: true });
  const list = Array.isArray(docs) ? docs : [docs];
  const out: unknown[] = [];
  list.forEach((doc, i) => {
    const first = doc.errors[0];
    if (first !== undefined) {
      const msg = (first.message.split('\n')[0] ?? first.message).replace(/\s+at line \d+, column \d+:?\s*$/, '');
      throw parseError(msg, first, i);
    }
    let value: unknown;
    try {
      value = doc.toJS({ maxAliasCount: 100 });
    } catch (cause) {
      throw parseError(cause instanceof Error ? cause.message : String(cause), cause instanceof YAMLError ? cause : undefined, i);
    }
    if (value === null || value === undefined) return;
    if (!isRecord(value)) throw parseError('a document must be an object (a mapping)', undefined, i);
    const kind = value['kind'];
    if (typeof kind === 'string' && kind.endsWith('List') && Array.isArray(value['items'])) {
      for (const item of value['items']) {
        if (!isRecord(item)) throw parseError('every item of a List must be an object', undefined, i);
        out.push(item);
      }
      return;
    }
    out.push(value);
  });
  return out;
}
