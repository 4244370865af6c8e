// The narrow interface between the unix-socket HTTP API and the daemon core: what the API may ask of the daemon.
import type { Kind } from '../api/vocabulary.js';

export type { Kind } from '../api/vocabulary.js';

export interface ObjectRef {
  kind: Kind;
  namespace: string;
  name: string;
}

export interface KubeObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; uid?: string; resourceVersion?: string; [k: string]: unknown };
  spec?: unknown;
  status?: unknown;
}

/**
 * One line of a watch stream. A watch begins, like a Kubernetes watch without resourceVersion, with an
 * ADDED event for every object that already exists, then reports changes. ERROR carries a Status object.
 */
export interface WatchEvent {
  type: 'ADDED' | 'MODIFIED' | 'DELETED' | 'ERROR';
  object: KubeObject;
}

export type VmiAction = 'pause' | 'unpause' | 'softreboot' | 'reset';
export type VmAction = 'start' | 'stop' | 'restart';

export interface ConsoleAttachment {
  /** Ring-buffer replay first, then live output; ends when the console or the attachment closes. */
  output: AsyncIterable<Buffer>;
  /**
   * Throws a VmletError CONSOLE_BUSY when this attachment does not hold the writer lock. false: the guest is not
   * reading its serial port; send no more until `drained()` resolves.
   */
  write(data: Buffer): boolean;
  /** Resolves once what was written has been taken (at once when nothing waits). */
  drained(): Promise<void>;
  readonly writable: boolean;
  /** Idempotent; releases the writer lock and ends `output`. */
  close(): void;
}

/**
 * Implemented by the daemon core. Every failure is a VmletError whose `code` the server maps to an HTTP
 * status (src/daemon/status.ts); a VmletError may carry `details: {field, message}[]` for per-field causes.
 */
export interface Backend {
  list(kind: Kind, namespace?: string): Promise<KubeObject[]>;
  /** NOT_FOUND when absent. */
  get(ref: ObjectRef): Promise<KubeObject>;
  /** Validates and defaults; ALREADY_EXISTS, validation codes (422). */
  create(kind: Kind, namespace: string, body: unknown): Promise<KubeObject>;
  /** Replaces spec/metadata of an existing object; NOT_FOUND, validation codes. */
  replace(ref: ObjectRef, body: unknown): Promise<KubeObject>;
  /** Returns the object as it was when deletion began. */
  delete(ref: ObjectRef): Promise<KubeObject>;
  vmiAction(ref: ObjectRef, action: VmiAction): Promise<void>;
  vmAction(ref: ObjectRef, action: VmAction): Promise<void>;
  /** Sends one QMP command (as parsed JSON) over the daemon's QMP connection; resolves with QMP's reply. */
  qmp(ref: ObjectRef, command: unknown): Promise<unknown>;
  /** CONSOLE_BUSY when `write` is asked for and another writer holds the lock. */
  console(ref: ObjectRef, opts: { write: boolean }): Promise<ConsoleAttachment>;
  /** Streams until `signal` aborts (the client went away); `name` narrows to one object. */
  watch(kind: Kind | 'Event', namespace: string | undefined, name: string | undefined, signal: AbortSignal): AsyncIterable<WatchEvent>;
  /** Events, optionally of one involved object (by name). */
  events(namespace: string | undefined, name: string | undefined): Promise<KubeObject[]>;
}
