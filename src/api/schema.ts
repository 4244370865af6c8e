// Loads the CRD OpenAPI schemas from deploy/crds as strict, defaulting validators: generated at build time, else compiled with ajv.

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Ajv, ErrorObject, Options, ValidateFunction } from 'ajv';
import { parse as parseYaml } from 'yaml';
import { VmletError } from '../errors.js';
import { loadPrebuiltSchemas } from './schema-prebuilt.js';
import type { VirtualMachine, VirtualMachineInstance } from './types.js';

/** deploy/crds of this checkout: src/api/schema.ts and dist/api/schema.js both sit two levels below the repo root. */
export const DEFAULT_CRD_DIR = fileURLToPath(new URL('../../deploy/crds/', import.meta.url));

export const CRD_FILES = {
  VirtualMachine: 'virtualmachines.yaml',
  VirtualMachineInstance: 'virtualmachineinstances.yaml',
} as const;

export type SchemaKind = keyof typeof CRD_FILES;
export type JsonSchema = { [key: string]: unknown };

/** Schema keywords that Kubernetes understands and ajv should accept as annotations. */
export const K8S_KEYWORDS = [
  'x-kubernetes-preserve-unknown-fields',
  'x-kubernetes-int-or-string',
  'x-kubernetes-embedded-resource',
  'x-kubernetes-list-type',
  'x-kubernetes-list-map-keys',
  'x-kubernetes-map-type',
  'x-kubernetes-validations',
];

const STRING_MAP: JsonSchema = { type: 'object', additionalProperties: { type: 'string' } };

/**
 * ObjectMeta as vmlet accepts it. Kubernetes does not let a CRD describe metadata (the API server
 * validates it itself), so this part of the schema lives here and is put in at load time.
 */
export const OBJECT_META_SCHEMA: JsonSchema = {
  type: 'object',
  required: ['name'],
  properties: {
    name: { type: 'string' },
    namespace: { type: 'string', default: 'default' },
    labels: STRING_MAP,
    annotations: STRING_MAP,
    uid: { type: 'string' },
    resourceVersion: { type: 'string' },
    creationTimestamp: { type: 'string', nullable: true },
    generation: { type: 'integer' },
    deletionTimestamp: { type: 'string', nullable: true },
    deletionGracePeriodSeconds: { type: 'integer' },
    finalizers: { type: 'array', items: { type: 'string' } },
    ownerReferences: {
      type: 'array',
      items: {
        type: 'object',
        required: ['apiVersion', 'kind', 'name', 'uid'],
        properties: {
          apiVersion: { type: 'string' },
          kind: { type: 'string' },
          name: { type: 'string' },
          uid: { type: 'string' },
          controller: { type: 'boolean' },
          blockOwnerDeletion: { type: 'boolean' },
        },
      },
    },
    managedFields: { type: 'array', items: { type: 'object', 'x-kubernetes-preserve-unknown-fields': true } },
  },
};

function isObject(v: unknown): v is JsonSchema {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Makes a structural Kubernetes schema strict the way Kubernetes' pruning plus strict field
 * validation behave: every object node that lists `properties` (and neither has its own
 * `additionalProperties` nor `x-kubernetes-preserve-unknown-fields: true`) refuses other fields.
 * Kubernetes forbids writing `additionalProperties: false` in a CRD, so it is added here. Pure.
 */
export function strictify(schema: unknown): unknown {
  if (Array.isArray(schema)) return schema.map(strictify);
  if (!isObject(schema)) return schema;
  const out: JsonSchema = {};
  for (const [k, v] of Object.entries(schema)) {
    if (k === 'properties' && isObject(v)) {
      const props: JsonSchema = {};
      for (const [name, sub] of Object.entries(v)) props[name] = strictify(sub);
      out[k] = props;
    } else if (k === 'default' || k === 'enum' || k === 'example') {
      out[k] = v;
    } else {
      out[k] = strictify(v);
    }
  }
  if (isObject(out['properties']) && out['additionalProperties'] === undefined && out['x-kubernetes-preserve-unknown-fields'] !== true) {
    out['additionalProperties'] = false;
  }
  return out;
}

/** Reads a CRD file and returns its v1alpha1 openAPIV3Schema as published. Throws SCHEMA_LOAD. */
export function readCrdSchema(file: string): JsonSchema {
  let doc: unknown;
  try {
    doc = parseYaml(readFileSync(file, 'utf8'));
  } catch (cause) {
    throw new VmletError('SCHEMA_LOAD', `cannot read CRD ${file}`, { cause });
  }
  const spec = isObject(doc) ? doc['spec'] : undefined;
  const versions = isObject(spec) ? spec['versions'] : undefined;
  const version = Array.isArray(versions) ? versions.find((v) => isObject(v) && v['name'] === 'v1alpha1') : undefined;
  const schemaHolder = isObject(version) ? version['schema'] : undefined;
  const schema = isObject(schemaHolder) ? schemaHolder['openAPIV3Schema'] : undefined;
  if (!isObject(schema)) throw new VmletError('SCHEMA_LOAD', `CRD ${file} has no v1alpha1 openAPIV3Schema`);
  return schema;
}

/** The schema vmlet validates with: the CRD schema, strict, with ObjectMeta put in. Pure. */
export function runtimeSchema(crdSchema: JsonSchema): JsonSchema {
  const props = isObject(crdSchema['properties']) ? crdSchema['properties'] : {};
  const withMeta: JsonSchema = { ...crdSchema, properties: { ...props, metadata: OBJECT_META_SCHEMA } };
  const strict = strictify(withMeta);
  if (!isObject(strict)) throw new VmletError('SCHEMA_LOAD', 'schema is not an object');
  return strict;
}

/** One validator per kind; each is a type guard for the kind's object once it passes. */
export interface SchemaValidators {
  VirtualMachine: ValidateFunction<VirtualMachine>;
  VirtualMachineInstance: ValidateFunction<VirtualMachineInstance>;
}

export interface CompiledSchemas {
  dir: string;
  validators: SchemaValidators;
  schemas: Record<SchemaKind, JsonSchema>;
  /** `prebuilt`: generated by `npm run build` (scripts/gen-validators.mjs); `compiled`: by ajv in this process. */
  origin: 'prebuilt' | 'compiled';
}

/** The ajv options of both the runtime compile and the build-time generator, so they validate alike. */
export const AJV_OPTIONS: Options = {
  allErrors: true,
  useDefaults: true,
  strict: true,
  coerceTypes: false,
  removeAdditional: false,
};

/** A new ajv with the K8S keywords; ajv is required here, not at module load, so a daemon on prebuilt validators never loads it. */
export function newAjv(extra: Options = {}): Ajv {
  const { Ajv: AjvClass } = createRequire(import.meta.url)('ajv') as { Ajv: typeof Ajv };
  const ajv = new AjvClass({ ...AJV_OPTIONS, ...extra });
  ajv.addVocabulary(K8S_KEYWORDS);
  return ajv;
}

/** Both kinds' runtime schemas from a directory. Throws SCHEMA_LOAD. */
export function loadRuntimeSchemas(dir: string): Record<SchemaKind, JsonSchema> {
  const load = (kind: SchemaKind): JsonSchema => runtimeSchema(readCrdSchema(join(dir, CRD_FILES[kind])));
  return { VirtualMachine: load('VirtualMachine'), VirtualMachineInstance: load('VirtualMachineInstance') };
}

/** Reads and compiles both CRD schemas from a directory (default: deploy/crds of this checkout). */
export function compileSchemas(dir: string = DEFAULT_CRD_DIR): CompiledSchemas {
  const schemas = loadRuntimeSchemas(dir);
  const ajv = newAjv();
  const compile = <T>(kind: SchemaKind, schema: JsonSchema): ValidateFunction<T> => {
    try {
      return ajv.compile<T>(schema);
    } catch (cause) {
      throw new VmletError('SCHEMA_LOAD', `cannot compile the ${kind} schema from ${dir}`, { cause });
    }
  };
  const validators: SchemaValidators = {
    VirtualMachine: compile<VirtualMachine>('VirtualMachine', schemas.VirtualMachine),
    VirtualMachineInstance: compile<VirtualMachineInstance>('VirtualMachineInstance', schemas.VirtualMachineInstance),
  };
  return { dir, validators, schemas, origin: 'compiled' };
}

let cached: CompiledSchemas | undefined;

/**
 * The schemas of the default directory, loaded on first use: the validators `npm run build` generated next to
 * this module when they match the CRD files on disk, else compiled here (from src/, or after a CRD edit).
 */
export function defaultSchemas(): CompiledSchemas {
  cached ??= loadPrebuiltSchemas({ crdDir: DEFAULT_CRD_DIR, crdFiles: Object.values(CRD_FILES), loadSchemas: loadRuntimeSchemas }) ?? compileSchemas();
  return cached;
}

export type { ErrorObject };
