// A cache of one kind of Kubernetes object kept current by list+watch, restarted with backoff after any error (client-node's informer stops on errors other than 410).
import { ListWatch, Watch, type KubeConfig, type KubernetesListObject, type KubernetesObject } from '@kubernetes/client-node';
import type { Logger } from 'pino';

export type InformerEvent = 'add' | 'update' | 'delete';

export interface KubeInformerOptions<T extends KubernetesObject> {
  kubeConfig: KubeConfig;
  /** The watch path, e.g. `/api/v1/pods` or `/apis/coordination.k8s.io/v1/namespaces/vmlet/leases`. */
  path: string;
  /** Lists with the same selectors as the watch. */
  list: () => Promise<KubernetesListObject<T>>;
  labelSelector?: string;
  fieldSelector?: string;
  /** Called for every change, and with 'add' for every object of each (re)list. */
  onChange: (event: InformerEvent, obj: T) => void;
  logger: Logger;
  /** First and longest pause before a restart (default 500 ms … 30 s, doubling). */
  backoffMs?: { min: number; max: number };
}

/** `start()` resolves after the first list; the cache then follows the server until `stop()`. */
export class KubeInformer<T extends KubernetesObject> {
  private lw: ListWatch<T> | undefined;
  private stopped = true;
  private delayMs: number;
  private timer: NodeJS.Timeout | undefined;
  private failing = false;

  constructor(private readonly o: KubeInformerOptions<T>) {
    this.delayMs = o.backoffMs?.min ?? 500;
  }

  async start(): Promise<void> {
    this.stopped = false;
    const lw = new ListWatch<T>(this.o.path, new Watch(this.o.kubeConfig), this.o.list, false, this.o.labelSelector, this.o.fieldSelector);
    lw.on('add', (obj) => this.o.onChange('add', obj));
    lw.on('update', (obj) => this.o.onChange('update', obj));
    lw.on('delete', (obj) => this.o.onChange('delete', obj));
    lw.on('connect', () => {
      if (this.failing) this.o.logger.info({ path: this.o.path }, 'watch resumed');
      this.failing = false;
      this.delayMs = this.o.backoffMs?.min ?? 500;
    });
    lw.on('error', (err: unknown) => this.restartLater(err));
    this.lw = lw;
    try {
      await lw.start();
    } catch (err) {
      this.restartLater(err);
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.lw?.stop();
  }

  get(name: string, namespace?: string): T | undefined {
    return this.lw?.get(name, namespace);
  }

  list(namespace?: string): readonly T[] {
    return this.lw?.list(namespace) ?? [];
  }

  private restartLater(err: unknown): void {
    if (this.stopped) return;
    if (!this.failing) this.o.logger.warn({ err, path: this.o.path }, 'watch failed; retrying with backoff');
    this.failing = true;
    const delay = this.delayMs;
    this.delayMs = Math.min(this.delayMs * 2, this.o.backoffMs?.max ?? 30_000);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      if (this.stopped) return;
      // The old cache keeps serving reads until the new list replaces it.
      this.lw?.start().catch((e: unknown) => this.restartLater(e));
    }, delay);
  }
}
