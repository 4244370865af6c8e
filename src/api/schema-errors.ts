// Field paths and ajv's schema errors as FieldErrors with stable codes (pure).
import { Collector, type FieldError } from './field-errors.js';
import type { ErrorObject } from './schema.js';

const IDENT_RE = /^[A-Za-z_][A-Za-z0-9_-]*$/;

/** Appends one segment to a field path: `a.b`, `a[0]`, `a["x.y/z"]`. */
export function joinPath(base: string, seg: string | number): string {
  if (typeof seg === 'number' || /^\d+$/.test(seg)) return `${base}[${seg}]`;
  if (IDENT_RE.test(seg)) return base === '' ? seg : `${base}.${seg}`;
  return `${base}[${JSON.stringify(seg)}]`;
}

function pointerToPath(pointer: string): string {
  if (pointer === '') return '';
  return pointer
    .slice(1)
    .split('/')
    .map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'))
    .reduce<string>((acc, seg) => joinPath(acc, seg), '');
}

/** Turns ajv errors into field errors with stable codes. Pure. */
export function mapSchemaErrors(errors: readonly ErrorObject[]): FieldError[] {
  const col = new Collector();
  const anyOfPaths = errors.filter((e) => e.keyword === 'anyOf').map((e) => e.schemaPath + '/');
  for (const e of errors) {
    if (anyOfPaths.some((p) => e.schemaPath.startsWith(p))) continue;
    const at = pointerToPath(e.instancePath);
    const params = e.params as Record<string, unknown>;
    switch (e.keyword) {
      case 'additionalProperties':
        col.add(joinPath(at, String(params['additionalProperty'])), 'UNKNOWN_FIELD', 'field not supported');
        break;
      case 'required':
        col.add(joinPath(at, String(params['missingProperty'])), 'MISSING_FIELD', 'required field missing');
        break;
      case 'enum': {
        const allowed = Array.isArray(params['allowedValues']) ? params['allowedValues'].map(String).join(', ') : '';
        col.add(at, 'INVALID_FIELD', `must be one of: ${allowed}`);
        break;
      }
      case 'type':
        col.add(at, 'INVALID_FIELD', `must be ${String(params['type'])}`);
        break;
      case 'anyOf':
        col.add(at, 'INVALID_QUANTITY', 'must be a quantity (a string like "128Mi" or an integer)');
        break;
      case 'minimum':
      case 'maximum':
      case 'exclusiveMinimum':
      case 'exclusiveMaximum':
        col.add(at, 'OUT_OF_RANGE', e.message ?? 'out of range');
        break;
      case 'pattern':
        col.add(at, 'INVALID_FIELD', at.endsWith('uuid') ? 'must be a UUID' : `must match ${String(params['pattern'])}`);
        break;
      default:
        col.add(at, 'INVALID_FIELD', e.message ?? `fails ${e.keyword}`);
    }
  }
  return col.details;
}
