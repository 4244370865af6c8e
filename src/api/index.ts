// Public surface of the api module: VM/VMI types, manifest parsing, validation and quantities.

export * from './types.js';
export { parseManifests } from './manifest.js';
export { formatBytes, parseMilliQuantity, parseQuantity, parseQuantityExact, type Rational } from './quantity.js';
export {
  CRD_FILES,
  DEFAULT_CRD_DIR,
  compileSchemas,
  defaultSchemas,
  readCrdSchema,
  runtimeSchema,
  strictify,
  type CompiledSchemas,
  type JsonSchema,
  type SchemaKind,
} from './schema.js';
export { MAX_CPU_MILLIS, MAX_VCPUS, validateObject, validateVM, validateVMI, type ValidateOptions } from './validate.js';
export { MAX_DISK_BYTES, MAX_MEMORY_BYTES, MIN_MEMORY_BYTES } from './field-checks.js';
export { hasControlChars, hostPathProblem, isDnsLabel } from './names.js';
export { ValidationError, type FieldError } from './field-errors.js';
export { joinPath, mapSchemaErrors } from './schema-errors.js';
export { diskKind } from './disk-kind.js';
