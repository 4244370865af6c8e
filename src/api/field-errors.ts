// A manifest's problems as data: one FieldError per field, the ValidationError that carries them all, and the collector the checks add to.
import { VmletError, type ErrorCode } from '../errors.js';

/** One problem with one field of a manifest. `field` is a path like `spec.domain.devices.disks[0].name`. */
export interface FieldError {
  field: string;
  code: ErrorCode;
  message: string;
}

/** A manifest was refused. `code` is the first detail's code; `details` lists every problem found. */
export class ValidationError extends VmletError {
  override readonly details: readonly FieldError[];
  constructor(subject: string, details: readonly FieldError[], options?: { cause?: unknown }) {
    const first = details[0];
    const list = details.map((d) => (d.field === '' ? d.message : `${d.field}: ${d.message}`)).join('; ');
    super(first?.code ?? 'INVALID_FIELD', `${subject} is invalid: ${list}`, options);
    this.name = 'ValidationError';
    this.details = details;
  }
}
/** Gathers field errors without duplicates; see `check` for how checks run after a schema error. */
export class Collector {
  readonly details: FieldError[] = [];
  /**
   * `schemaFailed`: the schema refused the object, so the semantic checks run on shapes they cannot rely on.
   * Each check still runs, so that every problem is reported at once; one that trips over a malformed
   * shape is skipped (the schema error already names that field).
   */
  constructor(private readonly schemaFailed = false) {}
  add(field: string, code: ErrorCode, message: string): void {
    if (!this.details.some((d) => d.field === field && d.message === message)) this.details.push({ field, code, message });
  }
  /** Runs one semantic check; after a schema error, a crash of the check on a malformed shape skips it. */
  check(run: () => void): void {
    if (!this.schemaFailed) return run();
    try {
      run();
    } catch (e) {
      if (e instanceof VmletError) throw e;
    }
  }
}

/** True if `field` is `parent` or lies below it (`parent.x`, `parent[0]`). */
function isAtOrBelow(field: string, parent: string): boolean {
  return field === parent || field.startsWith(`${parent}.`) || field.startsWith(`${parent}[`);
}

/**
 * Every problem, schema errors first (so the first code stays what it was when only those were reported),
 * then the semantic ones that are not about a field the schema already refused.
 */
export function allProblems(schema: readonly FieldError[], semantic: readonly FieldError[]): FieldError[] {
  return [...schema, ...semantic.filter((d) => !schema.some((s) => s.field !== '' && isAtOrBelow(d.field, s.field)))];
}
