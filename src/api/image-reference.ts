// Parses image references (`name[:tag][@sha256:…]`, `sha256:…`) by docker's grammar and gives each name one canonical form for comparison.
import { VmletError } from '../errors.js';

/** A reference that names an image: `name[:tag][@digest]`. */
export interface NamedReference {
  kind: 'named';
  /** The name as written, without tag or digest: `debian`, `quay.io/containerdisks/debian`. */
  name: string;
  /** The same name with docker's defaults filled in, for comparison only: `docker.io/library/debian`. */
  canonicalName: string;
  /** Undefined only when the reference has a digest and no tag (`name@sha256:…`). */
  tag: string | undefined;
  digest: string | undefined;
}

/** A bare digest: `sha256:<64 hex>`. */
export interface DigestReference {
  kind: 'digest';
  digest: string;
}

export type ImageReference = NamedReference | DigestReference;

const DEFAULT_DOMAIN = 'docker.io';
const LEGACY_DEFAULT_DOMAIN = 'index.docker.io';
const OFFICIAL_REPO_PREFIX = 'library/';
const MAX_NAME_LENGTH = 255;
const MAX_REFERENCE_LENGTH = 1024;

const DIGEST_RE = /^sha256:[0-9a-f]{64}$/;
const TAG_RE = /^[\w][\w.-]{0,127}$/;
const PATH_COMPONENT_RE = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const DOMAIN_COMPONENT = '(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])';
const HOST_RE = new RegExp(`^(?:${DOMAIN_COMPONENT}(?:\\.${DOMAIN_COMPONENT})*|\\[[a-fA-F0-9:]+\\])(?::[0-9]+)?$`);

const FORM = 'name[:tag][@sha256:<64 hex>] (a lowercase name like quay.io/containerdisks/debian:12) or sha256:<64 hex>';

function invalid(ref: string, why: string): VmletError {
  return new VmletError('IMAGE_NAME_INVALID', `"${ref}" is not an image reference: ${why}; expected ${FORM}`);
}

/** Whether `s` is a whole sha256 digest (`sha256:` and 64 lowercase hex digits). */
export function isDigest(s: string): boolean {
  return DIGEST_RE.test(s);
}

/** Parse a reference; throws VmletError IMAGE_NAME_INVALID. A reference with neither tag nor digest gets the tag `latest`. */
export function parseReference(ref: string): ImageReference {
  const problem = referenceProblem(ref);
  if (problem !== undefined) throw invalid(ref, problem);
  return parsed(ref);
}

/** Why `ref` is not a valid reference, or undefined when it is. */
export function referenceProblem(ref: string): string | undefined {
  if (ref.length === 0) return 'it is empty';
  if (ref.length > MAX_REFERENCE_LENGTH) return `it is longer than ${MAX_REFERENCE_LENGTH} characters`;
  if (ref.startsWith('sha256:') && !ref.includes('/') && !ref.includes('@')) {
    // A bare digest; `sha256:<short hex>` would otherwise read as the name "sha256" with a tag, which is never meant.
    return isDigest(ref) ? undefined : 'a digest is sha256: and 64 lowercase hex digits';
  }
  const at = ref.indexOf('@');
  const digest = at < 0 ? undefined : ref.slice(at + 1);
  if (digest !== undefined && !isDigest(digest)) return `"${digest}" is not a digest (only sha256:<64 lowercase hex> is read)`;
  const rest = at < 0 ? ref : ref.slice(0, at);
  const { name, tag } = splitTag(rest);
  if (tag !== undefined && !TAG_RE.test(tag)) return `"${tag}" is not a tag (letters, digits, _ . -, at most 128, not starting with . or -)`;
  return nameProblem(name);
}

function parsed(ref: string): ImageReference {
  if (isDigest(ref)) return { kind: 'digest', digest: ref };
  const at = ref.indexOf('@');
  const digest = at < 0 ? undefined : ref.slice(at + 1);
  const { name, tag } = splitTag(at < 0 ? ref : ref.slice(0, at));
  return { kind: 'named', name, canonicalName: canonicalName(name), tag: tag ?? (digest === undefined ? 'latest' : undefined), digest };
}

// The tag is after the last ':' that follows the last '/' (so `localhost:5000/x` has none).
function splitTag(s: string): { name: string; tag: string | undefined } {
  const colon = s.lastIndexOf(':');
  if (colon < 0 || colon < s.lastIndexOf('/')) return { name: s, tag: undefined };
  return { name: s.slice(0, colon), tag: s.slice(colon + 1) };
}

function nameProblem(name: string): string | undefined {
  if (name.length === 0) return 'the name is empty';
  if (name.length > MAX_NAME_LENGTH) return `the name is longer than ${MAX_NAME_LENGTH} characters`;
  const { domain, path } = splitDomain(name);
  if (domain !== undefined && !HOST_RE.test(domain)) return `"${domain}" is not a registry host[:port]`;
  for (const component of path.split('/')) {
    if (component.length === 0) return 'the name has an empty path component';
    if (/[A-Z]/.test(component)) return 'the name must be lowercase';
    if (!PATH_COMPONENT_RE.test(component)) return `"${component}" is not a name component (lowercase letters and digits, separated by . _ __ or -)`;
  }
  if (domain === undefined && /^[0-9a-f]{64}$/.test(path)) return 'a name cannot be 64 hex digits (that is an image id)';
  return undefined;
}

// docker's rule: the first component is a registry host when it has a '.' or a ':', is `localhost`, or has capitals.
function splitDomain(name: string): { domain: string | undefined; path: string } {
  const slash = name.indexOf('/');
  if (slash < 0) return { domain: undefined, path: name };
  const first = name.slice(0, slash);
  if (first.includes('.') || first.includes(':') || first === 'localhost' || /[A-Z]/.test(first)) return { domain: first, path: name.slice(slash + 1) };
  return { domain: undefined, path: name };
}

/** `debian` → `docker.io/library/debian`, `index.docker.io/x/y` → `docker.io/x/y`; other names unchanged. */
export function canonicalName(name: string): string {
  const { domain, path } = splitDomain(name);
  const d = domain === undefined || domain === LEGACY_DEFAULT_DOMAIN ? DEFAULT_DOMAIN : domain;
  const p = d === DEFAULT_DOMAIN && !path.includes('/') ? OFFICIAL_REPO_PREFIX + path : path;
  return `${d}/${p}`;
}

/** The reference as the user wrote it, with the default tag: `debian:latest`, `x@sha256:…`, `sha256:…`. */
export function formatReference(ref: ImageReference): string {
  if (ref.kind === 'digest') return ref.digest;
  return `${ref.name}${ref.tag === undefined ? '' : `:${ref.tag}`}${ref.digest === undefined ? '' : `@${ref.digest}`}`;
}

/** The comparison key of `name:tag`: `docker.io/library/debian:12` for both `debian:12` and `docker.io/library/debian:12`. */
export function canonicalTagged(ref: NamedReference): string {
  return `${ref.canonicalName}:${ref.tag ?? 'latest'}`;
}

/**
 * Parse a name to give an image (`name[:tag]`, no digest), returning it in the user's form with the tag filled in
 * (`debian` → `debian:latest`) and its comparison key. Throws IMAGE_NAME_INVALID.
 */
export function parseImageName(s: string): { name: string; key: string } {
  const ref = parseReference(s);
  if (ref.kind === 'digest' || ref.digest !== undefined) throw invalid(s, 'a name to give an image cannot hold a digest (the image has its own)');
  return { name: formatReference(ref), key: canonicalTagged(ref) };
}

/** The comparison key of a stored name (always `name:tag`), or undefined if it is not one. */
export function nameKey(s: string): string | undefined {
  if (referenceProblem(s) !== undefined) return undefined;
  const ref = parsed(s);
  return ref.kind === 'named' && ref.digest === undefined ? canonicalTagged(ref) : undefined;
}
