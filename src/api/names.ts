// Name and text rules every check shares: DNS-1123 labels and subdomains, control characters, normalised host paths.
import { posix } from 'node:path';

const DNS_LABEL_RE = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
// C0 and C1 control characters, DEL, and the Unicode line/paragraph separators.
const CONTROL_RE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;

/** True if `name` is a DNS-1123 label (lower-case alphanumerics and '-', at most 63 characters). */
export function isDnsLabel(name: string): boolean {
  return name.length <= 63 && DNS_LABEL_RE.test(name);
}

/** A DNS-1123 subdomain: dot-separated labels, at most 253 characters (names of most Kubernetes objects). */
export function isDnsSubdomain(name: string): boolean {
  return name.length <= 253 && name.split('.').every((part) => isDnsLabel(part));
}

/** True if `s` contains a control character (C0 including NUL, CR, LF, TAB; DEL; C1; U+2028/2029). */
export function hasControlChars(s: string): boolean {
  return CONTROL_RE.test(s);
}

/** Checks an absolute, normalised host path (no NUL, no `.`/`..`, no `//`, no trailing `/`). */
export function hostPathProblem(p: string): string | undefined {
  if (p.includes('\0')) return 'must not contain NUL';
  if (hasControlChars(p)) return 'must not contain control characters';
  if (!p.startsWith('/')) return 'must be an absolute path';
  if (p.length > 1 && p.endsWith('/')) return 'must name a file, not end in "/"';
  if (p === '/' || posix.normalize(p) !== p || p.split('/').some((s) => s === '.' || s === '..')) {
    return 'must be a normalised path (no "//", "." or "..")';
  }
  return undefined;
}
