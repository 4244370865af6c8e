// Resolves an image archive's index or manifest.json to one image: its digest, names and layers in order, checking the digest of every manifest and config it reads.
import { createHash } from 'node:crypto';
import { VmletError } from '../errors.js';
import { nameKey } from '../api/image-reference.js';

export type ArchiveKind = 'oci-archive' | 'docker-archive';
/** How a layer blob is stored: `detect` (docker archives) looks for the gzip magic. */
export type Compression = 'gzip' | 'none' | 'detect';

export interface LayerPlan {
  /** The layer's entry in the archive (links followed). */
  entry: string;
  /** The layer's name in messages: its digest, else its path. */
  label: string;
  compression: Compression;
  /** sha256 of the blob as stored (OCI descriptors). */
  blobDigest: string | undefined;
  /** sha256 of the uncompressed tar (the config's rootfs.diff_ids). */
  diffId: string | undefined;
}

export interface ArchivePlan {
  kind: ArchiveKind;
  /** `sha256:…` of the image manifest (OCI) or of the config (docker: the image id). */
  digest: string;
  names: string[];
  layers: LayerPlan[];
}

/** What the first read of an archive keeps: small JSON-looking files, every file entry and every link. */
export interface ArchiveListing {
  files: ReadonlyMap<string, Buffer>;
  entries: ReadonlySet<string>;
  /** link entry → the entry it points to (both archive paths) */
  links: ReadonlyMap<string, string>;
}

export interface Platform {
  os: string;
  architecture: string;
}

type Json = Record<string, unknown>;

const INDEX_TYPES = new Set(['application/vnd.oci.image.index.v1+json', 'application/vnd.docker.distribution.manifest.list.v2+json']);
const MANIFEST_TYPES = new Set(['application/vnd.oci.image.manifest.v1+json', 'application/vnd.docker.distribution.manifest.v2+json']);
const LAYER_TYPES: Record<string, Compression> = {
  'application/vnd.oci.image.layer.v1.tar': 'none',
  'application/vnd.oci.image.layer.v1.tar+gzip': 'gzip',
  'application/vnd.oci.image.layer.nondistributable.v1.tar': 'none',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip': 'gzip',
  'application/vnd.docker.image.rootfs.diff.tar': 'none',
  'application/vnd.docker.image.rootfs.diff.tar.gzip': 'gzip',
};
const ARCHES: Partial<Record<string, string>> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' };
const MAX_NESTING = 4;
const MAX_LINK_HOPS = 16;

/** The platform whose image to pick from a multi-platform index: linux and this machine's architecture. */
export function hostPlatform(): Platform {
  return { os: 'linux', architecture: ARCHES[process.arch] ?? process.arch };
}

export function sha256Digest(data: Buffer): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

/** Resolve the one image of an archive. Throws VmletError IMAGE_ARCHIVE_INVALID, IMAGE_DIGEST_MISMATCH or IMAGE_LAYER_UNSUPPORTED. */
export function planArchive(listing: ArchiveListing, what: string, platform: Platform = hostPlatform()): ArchivePlan {
  const r = new LayoutReader(listing, what, platform);
  // docker 25+ writes both an OCI layout and manifest.json: the index is the richer of the two.
  if (r.has('index.json')) return r.oci();
  if (r.has('manifest.json')) return r.docker();
  throw r.invalid('it has neither index.json (OCI layout) nor manifest.json (docker archive)');
}

class LayoutReader {
  constructor(
    private readonly listing: ArchiveListing,
    private readonly what: string,
    private readonly platform: Platform,
  ) {}

  invalid(why: string): VmletError {
    return new VmletError('IMAGE_ARCHIVE_INVALID', `${this.what} is not a usable image archive: ${why}`);
  }

  has(p: string): boolean {
    return this.resolve(p) !== undefined;
  }

  /** The entry `p` names after following links, or undefined when it is missing. */
  resolve(p: string): string | undefined {
    let cur = p;
    for (let hop = 0; hop <= MAX_LINK_HOPS; hop++) {
      const next = this.listing.links.get(cur);
      if (next === undefined) return this.listing.entries.has(cur) ? cur : undefined;
      cur = next;
    }
    return undefined;
  }

  file(p: string, what: string): Buffer {
    const entry = this.resolve(p);
    if (entry === undefined) throw this.invalid(`${what} (${p}) is missing`);
    const data = this.listing.files.get(entry);
    if (data === undefined) throw this.invalid(`${what} (${p}) is not a JSON document of at most 4 MiB`);
    return data;
  }

  json(data: Buffer, what: string): Json {
    let v: unknown;
    try {
      v = JSON.parse(data.toString('utf8'));
    } catch (e) {
      throw new VmletError('IMAGE_ARCHIVE_INVALID', `${this.what}: ${what} is not valid JSON`, { cause: e });
    }
    const o = asObject(v);
    if (o === undefined) throw this.invalid(`${what} is not a JSON object`);
    return o;
  }

  blobPath(digest: unknown, what: string): string {
    if (typeof digest !== 'string' || !/^sha256:[0-9a-f]{64}$/.test(digest)) throw this.invalid(`${what} has no sha256 digest (got ${JSON.stringify(digest)})`);
    return `blobs/sha256/${digest.slice('sha256:'.length)}`;
  }

  /** A JSON blob named by a descriptor, checked against the descriptor's digest. */
  blob(desc: Json, what: string): Json {
    const p = this.blobPath(desc.digest, what);
    const data = this.file(p, what);
    const got = sha256Digest(data);
    if (got !== desc.digest)
      throw new VmletError('IMAGE_DIGEST_MISMATCH', `${this.what}: ${what} ${String(desc.digest)} hashes to ${got}; the archive is damaged`);
    return this.json(data, what);
  }

  oci(): ArchivePlan {
    const index = this.json(this.file('index.json', 'index.json'), 'index.json');
    const tops = this.pick(asArray(index.manifests).map(asObject), 'index.json', true);
    const images = new Map<string, { manifest: Json; names: string[] }>();
    for (const desc of tops) {
      const found = this.manifestOf(desc, 'the manifest of index.json', 0);
      const image = images.get(found.digest) ?? { manifest: found.manifest, names: [] };
      image.names.push(...ociNames(desc));
      images.set(found.digest, image);
    }
    const [first, ...others] = [...images.entries()];
    if (first === undefined) throw this.invalid('index.json names no image manifest');
    if (others.length > 0) throw this.invalid(`it holds ${images.size} images (${[...images.keys()].join(', ')}); save one image per archive`);
    const [digest, { manifest, names }] = first;
    return { kind: 'oci-archive', digest, names: validNames(names), layers: this.ociLayers(manifest, digest) };
  }

  // Descriptors worth following: not attestations, and of our platform when they say which.
  pick(descs: (Json | undefined)[], where: string, top: boolean): Json[] {
    const all = descs.filter((d): d is Json => d !== undefined);
    const images = all.filter((d) => asObject(d.annotations)?.['vnd.docker.reference.type'] !== 'attestation-manifest');
    const fits = images.filter((d) => {
      const p = asObject(d.platform);
      return p === undefined || (p.os === this.platform.os && p.architecture === this.platform.architecture);
    });
    if (fits.length === 0 && images.length > 0) {
      const have = images.map((d) => `${String(asObject(d.platform)?.os)}/${String(asObject(d.platform)?.architecture)}`);
      throw this.invalid(`${where} has no ${this.platform.os}/${this.platform.architecture} image (it has ${have.join(', ')})`);
    }
    // A nested index is one image for several platforms: take the first that fits.
    return top ? fits : fits.slice(0, 1);
  }

  manifestOf(desc: Json, what: string, depth: number): { digest: string; manifest: Json } {
    if (depth > MAX_NESTING) throw this.invalid(`indexes nest deeper than ${MAX_NESTING}`);
    const doc = this.blob(desc, what);
    const type = typeof desc.mediaType === 'string' ? desc.mediaType : doc.mediaType;
    const isIndex = typeof type === 'string' ? INDEX_TYPES.has(type) : Array.isArray(doc.manifests);
    if (isIndex) {
      const [inner] = this.pick(asArray(doc.manifests).map(asObject), `index ${String(desc.digest)}`, false);
      if (inner === undefined) throw this.invalid(`index ${String(desc.digest)} names no manifest`);
      return this.manifestOf(inner, `the manifest of index ${String(desc.digest)}`, depth + 1);
    }
    if (typeof type === 'string' && !MANIFEST_TYPES.has(type))
      throw this.invalid(`${what} ${String(desc.digest)} has media type ${type}, not an image manifest`);
    return { digest: String(desc.digest), manifest: doc };
  }

  ociLayers(manifest: Json, digest: string): LayerPlan[] {
    const configDesc = asObject(manifest.config);
    if (configDesc === undefined) throw this.invalid(`manifest ${digest} has no config`);
    const diffIds = this.diffIds(this.blob(configDesc, `the config of manifest ${digest}`), `config ${String(configDesc.digest)}`);
    const layers = asArray(manifest.layers).map(asObject);
    if (diffIds !== undefined && diffIds.length !== layers.length)
      throw this.invalid(`manifest ${digest} has ${layers.length} layers but its config ${diffIds.length}`);
    return layers.map((desc, i) => {
      if (desc === undefined) throw this.invalid(`layer ${i} of manifest ${digest} is not a descriptor`);
      const label = `layer ${String(desc.digest)}`;
      const p = this.blobPath(desc.digest, label);
      const compression = layerCompression(desc.mediaType, label);
      const entry = this.resolve(p);
      if (entry === undefined) throw this.invalid(`${label} (${p}) is missing`);
      return { entry, label, compression, blobDigest: String(desc.digest), diffId: diffIds?.[i] };
    });
  }

  diffIds(config: Json, what: string): string[] | undefined {
    const rootfs = asObject(config.rootfs);
    if (rootfs === undefined) return undefined;
    const ids = asArray(rootfs.diff_ids);
    return ids.map((id) => {
      if (typeof id !== 'string' || !/^sha256:[0-9a-f]{64}$/.test(id)) throw this.invalid(`${what} has a diff_id that is not a sha256 digest`);
      return id;
    });
  }

  docker(): ArchivePlan {
    const data = this.file('manifest.json', 'manifest.json');
    let list: unknown;
    try {
      list = JSON.parse(data.toString('utf8'));
    } catch (e) {
      throw new VmletError('IMAGE_ARCHIVE_INVALID', `${this.what}: manifest.json is not valid JSON`, { cause: e });
    }
    const entries = asArray(list).map(asObject);
    const configs = new Set(entries.map((e) => e?.Config));
    if (entries.length === 0 || entries.some((e) => e === undefined || typeof e.Config !== 'string'))
      throw this.invalid('manifest.json is not a list of images');
    if (configs.size > 1) throw this.invalid(`it holds ${configs.size} images; save one image per archive`);
    const [first] = entries;
    if (first === undefined || typeof first.Config !== 'string') throw this.invalid('manifest.json is not a list of images');
    const configPath = normaliseEntryName(first.Config);
    const configData = this.file(configPath, 'the image config');
    const digest = sha256Digest(configData);
    // The config's file name is its digest (`<hex>.json` or `blobs/sha256/<hex>`): a different content is damage.
    const named = /(?:^|\/)([0-9a-f]{64})(?:\.json)?$/.exec(configPath)?.[1];
    if (named !== undefined && `sha256:${named}` !== digest)
      throw new VmletError('IMAGE_DIGEST_MISMATCH', `${this.what}: the config ${configPath} hashes to ${digest}; the archive is damaged`);
    const diffIds = this.diffIds(this.json(configData, 'the image config'), 'the image config');
    const layerPaths = asArray(first.Layers);
    if (diffIds !== undefined && diffIds.length !== layerPaths.length)
      throw this.invalid(`manifest.json lists ${layerPaths.length} layers but the config ${diffIds.length}`);
    const layers = layerPaths.map((lp, i): LayerPlan => {
      if (typeof lp !== 'string') throw this.invalid(`layer ${i} of manifest.json is not a path`);
      const p = normaliseEntryName(lp);
      const entry = this.resolve(p);
      if (entry === undefined) throw this.invalid(`layer ${p} is missing`);
      const blobHex = /^blobs\/sha256\/([0-9a-f]{64})$/.exec(entry)?.[1];
      return { entry, label: `layer ${p}`, compression: 'detect', blobDigest: blobHex === undefined ? undefined : `sha256:${blobHex}`, diffId: diffIds?.[i] };
    });
    const names = entries.flatMap((e) => asArray(e?.RepoTags).filter((n): n is string => typeof n === 'string'));
    return { kind: 'docker-archive', digest, names: validNames(names), layers };
  }
}

function layerCompression(mediaType: unknown, what: string): Compression {
  const type = typeof mediaType === 'string' ? mediaType : '';
  const c = LAYER_TYPES[type];
  if (c !== undefined) return c;
  if (type.includes('zstd'))
    throw new VmletError('IMAGE_LAYER_UNSUPPORTED', `${what} is compressed with zstd (${type}); vmlet reads tar and gzip layers: re-save the image with gzip`);
  throw new VmletError('IMAGE_LAYER_UNSUPPORTED', `${what} has media type ${type || '(none)'}; vmlet reads tar and gzip layers`);
}

// io.containerd.image.name is always a whole name; ref.name often only a tag ("12"), so it counts only when it has a '/' or ':'.
function ociNames(desc: Json): string[] {
  const a = asObject(desc.annotations);
  if (a === undefined) return [];
  const full = a['io.containerd.image.name'];
  if (typeof full === 'string') return [full];
  const ref = a['org.opencontainers.image.ref.name'];
  return typeof ref === 'string' && /[/:]/.test(ref) ? [ref] : [];
}

function validNames(names: string[]): string[] {
  const seen = new Set<string>();
  return names.filter((n) => {
    const key = nameKey(n);
    if (key === undefined || seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

/** An archive entry's path as a key: no leading `./` or `/`, no trailing `/`. */
export function normaliseEntryName(name: string): string {
  return name.replace(/^(?:\.?\/)+/, '').replace(/\/+$/, '');
}

function asObject(v: unknown): Json | undefined {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Json) : undefined;
}

function asArray(v: unknown): unknown[] {
  return Array.isArray(v) ? (v as unknown[]) : [];
}
