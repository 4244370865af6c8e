// Loads the CRD validators that `npm run build` generated next to this module, if they came from the CRD files on disk.

import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ValidateFunction } from 'ajv';
import type { CompiledSchemas, JsonSchema, SchemaKind } from './schema.js';
import type { VirtualMachine, VirtualMachineInstance } from './types.js';
import { isRecord } from './vocabulary.js';

/** Bumped when the generated module's shape or the way it is generated changes, so older files are ignored. */
export const PREBUILT_FORMAT = 1;

/** The generated module (scripts/gen-validators.mjs), next to dist/api/schema-prebuilt.js. */
export const DEFAULT_PREBUILT_FILE = fileURLToPath(new URL('./crd-validators.cjs', import.meta.url));

/** What crd-validators.cjs exports. */
export interface PrebuiltModule {
  digest: string;
  VirtualMachine: ValidateFunction<VirtualMachine>;
  VirtualMachineInstance: ValidateFunction<VirtualMachineInstance>;
}

function isPrebuiltModule(m: unknown): m is PrebuiltModule {
  return isRecord(m) && typeof m['digest'] === 'string' && typeof m['VirtualMachine'] === 'function' && typeof m['VirtualMachineInstance'] === 'function';
}

/** sha256 over the CRD files' names and contents (in the order given) and PREBUILT_FORMAT. */
export function crdDigest(dir: string, files: readonly string[]): string {
  const h = createHash('sha256').update(`vmlet-crd-validators/${PREBUILT_FORMAT}\n`);
  for (const f of files) {
    const bytes = readFileSync(join(dir, f));
    h.update(`${f}\n${bytes.length}\n`).update(bytes);
  }
  return h.digest('hex');
}

export interface PrebuiltOptions {
  crdDir: string;
  crdFiles: readonly string[];
  /** Reads the runtime schemas, only if someone asks for `schemas` (the validators do not need them). */
  loadSchemas: (dir: string) => Record<SchemaKind, JsonSchema>;
  /** Default: DEFAULT_PREBUILT_FILE. */
  file?: string;
  /** Told why the file is not used (absent, stale, unloadable): the caller compiles instead. */
  onIgnored?: (reason: string) => void;
}

/**
 * The prebuilt validators, or undefined when there are none (running from src/) or they are stale (a CRD file
 * changed since the build, or an older format): the caller then compiles at runtime. Never loads ajv's compiler.
 */
export function loadPrebuiltSchemas(opts: PrebuiltOptions): CompiledSchemas | undefined {
  const file = opts.file ?? DEFAULT_PREBUILT_FILE;
  const ignore = (reason: string): undefined => {
    opts.onIgnored?.(reason);
    return undefined;
  };
  if (!existsSync(file)) return ignore(`${file} is absent`);
  let digest: string;
  try {
    digest = crdDigest(opts.crdDir, opts.crdFiles);
  } catch (e) {
    return ignore(`cannot read the CRDs: ${String(e)}`); // the runtime compile reports SCHEMA_LOAD
  }
  const req = createRequire(import.meta.url);
  let mod: unknown;
  try {
    mod = req(file);
  } catch (e) {
    return ignore(`cannot load ${file}: ${String(e)}`);
  }
  if (!isPrebuiltModule(mod) || mod.digest !== digest) {
    delete req.cache[req.resolve(file)]; // let a stale module's code be collected
    return ignore(isPrebuiltModule(mod) ? `${file} was generated from other CRD files` : `${file} is not a validators module`);
  }
  const { crdDir, loadSchemas } = opts;
  let schemas: Record<SchemaKind, JsonSchema> | undefined;
  return {
    dir: crdDir,
    validators: { VirtualMachine: mod.VirtualMachine, VirtualMachineInstance: mod.VirtualMachineInstance },
    get schemas() {
      schemas ??= loadSchemas(crdDir);
      return schemas;
    },
    origin: 'prebuilt',
  };
}
