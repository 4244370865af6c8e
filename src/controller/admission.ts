// The validating admission webhook's decision: an AdmissionReview (admission.k8s.io/v1) in, the review with its response out, by vmlet's own validation (pure).
import { isDeepStrictEqual } from 'node:util';
import { ValidationError, type FieldError } from '../api/field-errors.js';
import { joinPath } from '../api/schema-errors.js';
import type { CompiledSchemas } from '../api/schema.js';
import { validateVM, validateVMI } from '../api/validate.js';
import { isRecord } from '../api/vocabulary.js';
import { VmletError } from '../errors.js';

export const ADMISSION_API_VERSION = 'admission.k8s.io/v1';

/** The group/version pairs whose VirtualMachine and VirtualMachineInstance the webhook judges (kubevirt.io/v1: the compat overlay). */
export const ADMITTED_VERSIONS: readonly { group: string; version: string }[] = [
  { group: 'vmlet.io', version: 'v1alpha1' },
  { group: 'kubevirt.io', version: 'v1' },
];

export interface AdmissionOptions {
  /** Compiled CRD schemas; default: those of validateVMI / validateVM. */
  schemas?: CompiledSchemas;
}

export interface AdmissionStatus {
  code: number;
  /** vmlet's error code (ValidationError's first detail's code, VMI_SPEC_IMMUTABLE, WEBHOOK_BAD_REVIEW, …). */
  reason: string;
  /** `CODE: field: message; …`: what kubectl prints after "denied the request:". */
  message: string;
}

export interface AdmissionResponse {
  uid: string;
  allowed: boolean;
  status?: AdmissionStatus;
}

export interface AdmissionReviewResponse {
  apiVersion: typeof ADMISSION_API_VERSION;
  kind: 'AdmissionReview';
  response: AdmissionResponse;
}

const KINDS = ['VirtualMachine', 'VirtualMachineInstance'] as const;
type AdmittedKind = (typeof KINDS)[number];

/** The `CODE: field: message; …` line of a list of field errors; a detail whose code differs from the first one carries its own. */
export function formatFieldErrors(details: readonly FieldError[]): string {
  const first = details[0];
  if (first === undefined) return 'INVALID_FIELD: invalid';
  const parts = details.map((d, i) => `${i > 0 && d.code !== first.code ? `${d.code}: ` : ''}${d.field === '' ? '' : `${d.field}: `}${d.message}`);
  return `${first.code}: ${parts.join('; ')}`;
}

function review(uid: string, allowed: boolean, status?: AdmissionStatus): AdmissionReviewResponse {
  const response: AdmissionResponse = status === undefined ? { uid, allowed } : { uid, allowed, status };
  return { apiVersion: ADMISSION_API_VERSION, kind: 'AdmissionReview', response };
}

function refuse(uid: string, code: number, reason: string, message: string): AdmissionReviewResponse {
  return review(uid, false, { code, reason, message });
}

function badReview(uid: string, message: string): AdmissionReviewResponse {
  return refuse(uid, 400, 'WEBHOOK_BAD_REVIEW', `WEBHOOK_BAD_REVIEW: ${message}`);
}

/**
 * The object as vmlet's validation sees it: the API server adds metadata that standalone never has
 * (managedFields, generation, creationTimestamp, generateName, …) and validates it itself, so only
 * the metadata vmlet checks is kept.
 */
function forValidation(obj: Record<string, unknown>): Record<string, unknown> {
  const meta = isRecord(obj['metadata']) ? obj['metadata'] : {};
  const kept: Record<string, unknown> = {};
  for (const key of ['name', 'namespace', 'labels', 'annotations']) if (meta[key] !== undefined) kept[key] = meta[key];
  return { ...obj, metadata: kept };
}

function validate(kind: AdmittedKind, obj: Record<string, unknown>, opts: AdmissionOptions): { spec: unknown } {
  const vopts = opts.schemas === undefined ? undefined : { schemas: opts.schemas };
  return kind === 'VirtualMachine' ? validateVM(forValidation(obj), vopts) : validateVMI(forValidation(obj), vopts);
}

/** The first path below `path` where `a` and `b` differ (`spec.domain.memory.guest`), or undefined when equal. */
export function firstDifference(a: unknown, b: unknown, path: string): string | undefined {
  if (isDeepStrictEqual(a, b)) return undefined;
  if (Array.isArray(a) && Array.isArray(b)) {
    if (a.length !== b.length) return path;
    for (let i = 0; i < a.length; i++) {
      const d = firstDifference(a[i], b[i], joinPath(path, i));
      if (d !== undefined) return d;
    }
    return path;
  }
  if (isRecord(a) && isRecord(b)) {
    const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])].sort();
    for (const k of keys) {
      const d = firstDifference(a[k], b[k], joinPath(path, k));
      if (d !== undefined) return d;
    }
    return path;
  }
  return path;
}

/** The old VMI's spec as validation normalises it (defaults in); the raw spec when it no longer validates. */
function normalisedSpec(old: Record<string, unknown>, opts: AdmissionOptions): unknown {
  try {
    return validate('VirtualMachineInstance', old, opts).spec;
  } catch {
    return old['spec'];
  }
}

function fromError(uid: string, e: unknown): AdmissionReviewResponse {
  if (e instanceof ValidationError) return refuse(uid, 422, e.code, formatFieldErrors(e.details));
  if (e instanceof VmletError) return refuse(uid, 500, e.code, `${e.code}: ${e.message}`);
  return refuse(uid, 500, 'WEBHOOK_INTERNAL', `WEBHOOK_INTERNAL: ${e instanceof Error ? e.message : String(e)}`);
}

function admittedKind(req: Record<string, unknown>): AdmittedKind | undefined {
  const gvk = req['kind'];
  if (!isRecord(gvk)) return undefined;
  const known = ADMITTED_VERSIONS.some((v) => v.group === gvk['group'] && v.version === gvk['version']);
  return known ? KINDS.find((k) => k === gvk['kind']) : undefined;
}

/**
 * Judges one AdmissionReview. CREATE and UPDATE of VirtualMachine / VirtualMachineInstance (vmlet.io/v1alpha1,
 * kubevirt.io/v1) run validateVM / validateVMI; an UPDATE of a VMI may not change its spec (VMI_SPEC_IMMUTABLE).
 * An UPDATE that leaves the spec as it was (labels, finalizers, status) and any change to an object being
 * deleted are allowed unchecked, so a tightened validation never strands an admitted object.
 * Everything else is allowed; a malformed review is refused with WEBHOOK_BAD_REVIEW. Never throws.
 */
export function reviewAdmission(input: unknown, opts: AdmissionOptions = {}): AdmissionReviewResponse {
  if (!isRecord(input)) return badReview('', 'the body must be an AdmissionReview object');
  const req = input['request'];
  const uid = isRecord(req) && typeof req['uid'] === 'string' ? req['uid'] : '';
  if (input['apiVersion'] !== ADMISSION_API_VERSION || input['kind'] !== 'AdmissionReview') {
    return badReview(
      uid,
      `expected apiVersion ${ADMISSION_API_VERSION}, kind AdmissionReview; got ${JSON.stringify(input['apiVersion'] ?? null)}, ${JSON.stringify(input['kind'] ?? null)}`,
    );
  }
  if (!isRecord(req)) return badReview(uid, 'request is missing');
  if (uid === '') return badReview(uid, 'request.uid is missing');
  const op = req['operation'];
  if (typeof op !== 'string') return badReview(uid, 'request.operation is missing');
  const kind = admittedKind(req);
  if (kind === undefined || (op !== 'CREATE' && op !== 'UPDATE')) return review(uid, true);
  // A status (or other subresource) write never changes what validation judges.
  if (typeof req['subResource'] === 'string' && req['subResource'] !== '') return review(uid, true);
  const obj = req['object'];
  if (!isRecord(obj)) return badReview(uid, `request.object of ${op} is missing`);
  try {
    if (op === 'UPDATE') {
      const old = req['oldObject'];
      if (!isRecord(old)) return badReview(uid, 'request.oldObject of UPDATE is missing');
      if (isDeepStrictEqual(obj['spec'], old['spec'])) return review(uid, true);
      const meta = old['metadata'];
      if (isRecord(meta) && meta['deletionTimestamp'] !== undefined && meta['deletionTimestamp'] !== null) return review(uid, true);
      const next = validate(kind, obj, opts);
      if (kind === 'VirtualMachineInstance') {
        const changed = firstDifference(next.spec, normalisedSpec(old, opts), 'spec');
        if (changed !== undefined) {
          return refuse(
            uid,
            422,
            'VMI_SPEC_IMMUTABLE',
            `VMI_SPEC_IMMUTABLE: ${changed}: the spec of a VirtualMachineInstance cannot change; delete it and create it again, or edit its VirtualMachine`,
          );
        }
      }
      return review(uid, true);
    }
    validate(kind, obj, opts);
    return review(uid, true);
  } catch (e) {
    return fromError(uid, e);
  }
}
