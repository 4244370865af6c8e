// The object source seam: the one interface through which the daemon and the controller read, write and watch objects, whatever holds them (the local store today, the API server in cluster mode).

/** The kinds a source holds. */
export type Kind = 'VirtualMachine' | 'VirtualMachineInstance' | 'Event';

/**
 * Metadata of a stored object. uid, resourceVersion, generation and the timestamps are the source's; callers
 * set name, namespace, labels, annotations and finalizers. (A type, not an interface, so that it is assignable
 * to index-signature shapes such as the API's `KubeObject`.)
 */
export type ObjectMeta = {
  name: string;
  namespace: string;
  uid: string;
  /** A decimal string; see `Source` for what may be done with it. */
  resourceVersion: string;
  generation: number;
  creationTimestamp: string;
  deletionTimestamp?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  finalizers?: string[];
};

/** An object as a source holds it. `spec`/`status` are opaque here: callers narrow them. Events carry their fields at the top level, as in Kubernetes. */
export type KubeObject<K extends Kind = Kind> = {
  apiVersion: string;
  kind: K;
  metadata: ObjectMeta;
  spec?: unknown;
  status?: unknown;
};

/** What `create` takes: system metadata (uid, resourceVersion, generation, timestamps) is assigned by the source and ignored if present. */
export interface NewObject<K extends string = string> {
  apiVersion: string;
  kind: K;
  metadata: {
    name: string;
    namespace: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
    finalizers?: string[];
  };
  spec?: unknown;
  status?: unknown;
}

/** A list and the resourceVersion it was read at: a watch from that resourceVersion misses nothing and repeats nothing. */
export interface ObjectList<K extends Kind = Kind> {
  items: Array<KubeObject<K>>;
  resourceVersion: string;
}

export interface ObjectReference {
  kind: string;
  namespace: string;
  name: string;
  uid: string;
  apiVersion?: string;
}

export type EventType = 'Normal' | 'Warning';

/** A `v1` Event, fields at the top level as `kubectl get events -o json` shows them. */
export interface EventObject extends KubeObject<'Event'> {
  involvedObject: ObjectReference;
  type: EventType;
  reason: string;
  message: string;
  count: number;
  firstTimestamp: string;
  lastTimestamp: string;
  source: { component: string };
}

export interface RecordEventInput {
  involvedObject: ObjectReference;
  type: EventType;
  reason: string;
  message: string;
  /** Reporting component; default 'vmlet'. */
  source?: string;
}

export interface ListEventsOptions {
  /** Only events whose involvedObject has this kind. */
  kind?: string;
}

export type WatchEventType = 'ADDED' | 'MODIFIED' | 'DELETED';

/** A change as watchers see it. `object` is deep-frozen and may be shared between watchers: copy it before changing it. */
export interface WatchEvent<K extends Kind = Kind> {
  type: WatchEventType;
  object: KubeObject<K>;
}

export interface WatchOptions {
  /** Most events that may wait for this watcher before it is closed with STORE_WATCH_OVERFLOW (default: the source's). */
  bufferSize?: number;
  /** Start with a synthetic ADDED event for each matching object (a consistent snapshot), then the changes after it. */
  sendInitialEvents?: boolean;
  /**
   * Start after this resourceVersion (from a list or an earlier event): every change with a higher resourceVersion
   * is delivered, in order. When the source no longer holds all of them the watch fails with STORE_WATCH_OVERFLOW
   * (Kubernetes' 410 Gone): list again and watch from the list's resourceVersion. Not with `sendInitialEvents`.
   */
  resourceVersion?: string;
}

/** An async iterable of changes. Iteration throws STORE_WATCH_OVERFLOW when the consumer fell too far behind, and ends when the watch or the source is closed. */
export interface SourceWatch<K extends Kind = Kind> extends AsyncIterableIterator<WatchEvent<K>> {
  close(): void;
  readonly closed: boolean;
}

export interface UpdateOptions {
  /** Fail with STORE_CONFLICT unless the stored object still has this resourceVersion. */
  expectedResourceVersion?: string;
}

export interface DeleteOptions {
  expectedResourceVersion?: string;
  /** Fail with STORE_CONFLICT unless the stored object has this uid (guards against deleting a re-created namesake). */
  expectedUid?: string;
}

/**
 * Where objects live. Semantics are Kubernetes': resourceVersion is opaque to callers except that a watch can start
 * from it; update replaces everything but status and system metadata; status changes only through updateStatus;
 * delete of an object with finalizers only marks it (metadata.deletionTimestamp) until an update removes the last
 * one. Failures are VmletErrors with stable codes: STORE_NOT_FOUND, STORE_ALREADY_EXISTS, STORE_CONFLICT,
 * STORE_INVALID_KEY, STORE_INVALID_OBJECT, STORE_WATCH_OVERFLOW, STORE_CLOSED, STORE_WRITE_FAILED. The contract is
 * test/support/source-contract.ts; every implementation runs it.
 */
export interface StatusWriteOptions {
  /**
   * The change shows only once this resolves; if it rejects, nothing is written and the write rejects with its
   * reason. A local store computes, writes and syncs the new file meanwhile (holding the object's lock), so what is
   * left after `after` is the rename; an API server gets the write after it.
   */
  after?: Promise<unknown>;
}

export interface Source {
  /** A private copy, or undefined when absent. */
  get<K extends Kind>(kind: K, namespace: string, name: string): Promise<KubeObject<K> | undefined>;
  /** Objects of `kind` (in `namespace` if given), sorted by namespace then name. */
  list<K extends Kind>(kind: K, namespace?: string): Promise<Array<KubeObject<K>>>;
  /** Like `list`, with the resourceVersion to watch from. */
  listWithVersion<K extends Kind>(kind: K, namespace?: string): Promise<ObjectList<K>>;
  /** STORE_ALREADY_EXISTS when the name is taken. */
  create<K extends Kind>(obj: NewObject<K>): Promise<KubeObject<K>>;
  /** Spec and user metadata; STORE_NOT_FOUND, STORE_CONFLICT (stale expectedResourceVersion, or another metadata.uid). */
  update<K extends Kind>(obj: KubeObject<K>, opts?: UpdateOptions): Promise<KubeObject<K>>;
  /** `mutate` gets a private copy of the current status and returns the new one; serialised with every other write to the object. */
  updateStatus<S = unknown, K extends Kind = Kind>(
    kind: K,
    namespace: string,
    name: string,
    mutate: (status: S | undefined) => S | undefined,
    opts?: StatusWriteOptions,
  ): Promise<KubeObject<K>>;
  /** Returns the last state (removed) or the marked object (finalizers left). STORE_NOT_FOUND, STORE_CONFLICT. */
  delete<K extends Kind>(kind: K, namespace: string, name: string, opts?: DeleteOptions): Promise<KubeObject<K>>;
  /** Synchronous: no change committed after the call is missed. */
  watch<K extends Kind>(kind: K, namespace?: string, name?: string, opts?: WatchOptions): SourceWatch<K>;
  /** Records (or aggregates into) an Event about an object. */
  recordEvent(input: RecordEventInput): Promise<EventObject>;
  /** Events in `namespace` about objects named `objectName` (all if omitted), oldest first. */
  listEvents(namespace?: string, objectName?: string, opts?: ListEventsOptions): Promise<EventObject[]>;
}
