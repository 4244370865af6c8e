// The node daemon's kubelet device plugin for `devices.vmlet.io/kvm`: serves the v1beta1 DevicePlugin service on its socket, registers with the kubelet, and serves and registers again when the kubelet restarts.
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { VmletError } from '../errors.js';
import {
  allocateResponse,
  DEFAULT_KVM_DEVICE_COUNT,
  KUBELET_SOCKET_NAME,
  KVM_RESOURCE_NAME,
  KVM_SOCKET_NAME,
  kvmDevices,
  loadDevicePluginApi,
  preferredAllocation,
  registerRequest,
  type DevicePluginApi,
} from './device-plugin-api.js';

export interface KvmDevicePluginOptions {
  /** The kubelet's --root-dir (config `kubeletRootDir`); the plugin folder defaults to `<it>/device-plugins`. */
  kubeletRootDir: string;
  /**
   * The folder of `kubelet.sock`. The kubelet compiles this in as /var/lib/kubelet/device-plugins and does
   * not move it with --root-dir, so a kubelet with another root needs this set (docs/node-registration.md).
   */
  devicePluginDir?: string;
  /** Whether the daemon's start-up probe found KVM usable. */
  kvmUsable: boolean;
  /** The device node handed to containers (default /dev/kvm). */
  devicePath?: string;
  /** How many shares of the device to advertise (default 1000). */
  count?: number;
  resourceName?: string;
  socketName?: string;
  /** How often the sockets are checked besides the folder watch (default 2000 ms). */
  checkIntervalMs?: number;
  /** How long a Register call may take (default 5000 ms). */
  registerTimeoutMs?: number;
  protoPath?: string;
  logger: Logger;
}

type ListAndWatchCall = grpc.ServerWritableStream<object, object>;

/** Inode of a path, or undefined when it is not there. */
function inode(p: string): number | undefined {
  try {
    return fs.statSync(p).ino;
  } catch {
    return undefined;
  }
}

export class KvmDevicePlugin {
  readonly socketPath: string;
  readonly kubeletSocketPath: string;
  readonly resourceName: string;
  private readonly dir: string;
  private readonly socketName: string;
  private readonly devicePath: string;
  private readonly count: number;
  private readonly checkIntervalMs: number;
  private readonly registerTimeoutMs: number;
  private readonly log: Logger;
  private readonly protoPath: string | undefined;
  private api: DevicePluginApi | undefined;
  private usable: boolean;
  private server: grpc.Server | undefined;
  private servedIno: number | undefined;
  private registeredKubeletIno: number | undefined;
  private readonly streams = new Set<ListAndWatchCall>();
  private watcher: fs.FSWatcher | undefined;
  private timer: NodeJS.Timeout | undefined;
  private checking: Promise<void> = Promise.resolve();
  private running = false;
  /** What the plugin is waiting for or failing at, logged once until it changes. */
  private trouble = '';
  private registrationCount = 0;
  private lastErr: VmletError | undefined;

  constructor(opts: KvmDevicePluginOptions) {
    this.dir = opts.devicePluginDir ?? path.join(opts.kubeletRootDir, 'device-plugins');
    this.socketName = opts.socketName ?? KVM_SOCKET_NAME;
    this.socketPath = path.join(this.dir, this.socketName);
    this.kubeletSocketPath = path.join(this.dir, KUBELET_SOCKET_NAME);
    this.resourceName = opts.resourceName ?? KVM_RESOURCE_NAME;
    this.devicePath = opts.devicePath ?? '/dev/kvm';
    this.count = opts.count ?? DEFAULT_KVM_DEVICE_COUNT;
    this.checkIntervalMs = opts.checkIntervalMs ?? 2000;
    this.registerTimeoutMs = opts.registerTimeoutMs ?? 5000;
    this.protoPath = opts.protoPath;
    this.usable = opts.kvmUsable;
    this.log = opts.logger.child({ component: 'device-plugin', resource: this.resourceName });
  }

  /** How many times the kubelet accepted a registration (a kubelet restart adds one). */
  get registrations(): number {
    return this.registrationCount;
  }

  /** Whether the current kubelet has accepted this plugin. */
  get registered(): boolean {
    return this.registeredKubeletIno !== undefined && this.registeredKubeletIno === inode(this.kubeletSocketPath);
  }

  /** The last serve or register failure (cleared by the next success). */
  get lastError(): VmletError | undefined {
    return this.lastErr;
  }

  /** Serves and registers; resolves after the first attempt. A missing kubelet is waited for in the background. */
  async start(): Promise<void> {
    if (this.running) return;
    this.api = loadDevicePluginApi(this.protoPath);
    this.running = true;
    this.watch();
    this.timer = setInterval(() => void this.check(), this.checkIntervalMs);
    this.timer.unref();
    await this.check();
  }

  /** Stops serving and removes the socket; the kubelet then marks the devices unhealthy. */
  async stop(): Promise<void> {
    if (!this.running) return;
    this.running = false;
    clearInterval(this.timer);
    this.watcher?.close();
    this.watcher = undefined;
    await this.checking;
    this.shutdownServer();
    if (this.servedIno !== undefined && inode(this.socketPath) === this.servedIno) fs.rmSync(this.socketPath, { force: true });
    this.servedIno = undefined;
    this.registeredKubeletIno = undefined;
  }

  /** KVM became usable or unusable: every open ListAndWatch stream gets the new device list. */
  setKvmUsable(usable: boolean): void {
    if (usable === this.usable) return;
    this.usable = usable;
    this.log.info({ usable }, 'KVM health changed');
    for (const call of this.streams) call.write({ devices: kvmDevices(this.count, usable) });
  }

  private watch(): void {
    try {
      this.watcher = fs.watch(this.dir, (_event, name) => {
        if (name === KUBELET_SOCKET_NAME || name === this.socketName) void this.check();
      });
      this.watcher.on('error', () => {
        // the folder went away: the interval check keeps going and watches again when it is back
        this.watcher?.close();
        this.watcher = undefined;
      });
    } catch {
      this.watcher = undefined;
    }
  }

  /** One pass, never two at once: serve again if our socket is gone, register again if kubelet.sock is new. */
  private check(): Promise<void> {
    this.checking = this.checking.then(() => this.checkOnce()).catch((e: unknown) => this.log.error({ err: e }, 'device plugin check failed'));
    return this.checking;
  }

  private async checkOnce(): Promise<void> {
    if (!this.running) return;
    if (!fs.existsSync(this.dir)) return this.note(`waiting for the kubelet's device plugin folder ${this.dir}`);
    if (!this.watcher) this.watch();
    if (this.server === undefined || inode(this.socketPath) !== this.servedIno) {
      if (this.server) this.log.info({ socket: this.socketPath }, 'our socket is gone (kubelet restarted?): serving again');
      if (!(await this.serve())) return;
    }
    const kubeletIno = inode(this.kubeletSocketPath);
    if (kubeletIno === undefined) {
      this.registeredKubeletIno = undefined;
      return this.note(`waiting for ${this.kubeletSocketPath}`);
    }
    if (kubeletIno === this.registeredKubeletIno) return;
    try {
      await this.register();
      this.registeredKubeletIno = kubeletIno;
      this.registrationCount++;
      this.lastErr = undefined;
      this.trouble = '';
      this.log.info({ socket: this.socketPath, count: this.count, kvmUsable: this.usable }, 'registered with the kubelet');
    } catch (e) {
      this.lastErr = new VmletError('DEVICE_PLUGIN_REGISTER_FAILED', `registration with ${this.kubeletSocketPath} failed`, { cause: e });
      this.note(this.lastErr.message, e);
    }
  }

  /** Logs a waiting or failing state once, not on every pass. */
  private note(what: string, err?: unknown): void {
    if (what === this.trouble) return;
    this.trouble = what;
    this.log.warn(err === undefined ? {} : { err }, `${what}; retrying every ${this.checkIntervalMs} ms`);
  }

  private shutdownServer(): void {
    for (const call of this.streams) call.end();
    this.streams.clear();
    this.server?.forceShutdown();
    this.server = undefined;
  }

  private implementation(): grpc.UntypedServiceImplementation {
    return {
      GetDevicePluginOptions: (_call: grpc.ServerUnaryCall<object, object>, cb: grpc.sendUnaryData<object>) =>
        cb(null, { pre_start_required: false, get_preferred_allocation_available: true }),
      ListAndWatch: (call: ListAndWatchCall) => {
        this.streams.add(call);
        const drop = (): void => void this.streams.delete(call);
        call.on('cancelled', drop);
        call.on('close', drop);
        call.on('error', drop);
        call.write({ devices: kvmDevices(this.count, this.usable) });
      },
      GetPreferredAllocation: (call: grpc.ServerUnaryCall<object, object>, cb: grpc.sendUnaryData<object>) => cb(null, preferredAllocation(call.request)),
      Allocate: (call: grpc.ServerUnaryCall<object, object>, cb: grpc.sendUnaryData<object>) => {
        this.log.debug({ request: call.request }, 'Allocate');
        cb(null, allocateResponse(call.request, this.devicePath));
      },
      PreStartContainer: (_call: grpc.ServerUnaryCall<object, object>, cb: grpc.sendUnaryData<object>) => cb(null, {}),
    };
  }

  /** (Re)binds our socket; false (logged once) when that failed. */
  private async serve(): Promise<boolean> {
    if (!this.api) return false;
    this.shutdownServer();
    this.registeredKubeletIno = undefined;
    const server = new grpc.Server();
    server.addService(this.api.devicePlugin, this.implementation());
    try {
      fs.rmSync(this.socketPath, { force: true });
      await new Promise<void>((resolve, reject) =>
        server.bindAsync(`unix://${this.socketPath}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
      );
    } catch (e) {
      server.forceShutdown();
      this.lastErr = new VmletError('DEVICE_PLUGIN_SERVE_FAILED', `could not serve on ${this.socketPath}`, { cause: e });
      this.note(this.lastErr.message, e);
      return false;
    }
    this.server = server;
    this.servedIno = inode(this.socketPath);
    this.log.info({ socket: this.socketPath }, 'serving');
    return true;
  }

  private register(): Promise<void> {
    const api = this.api;
    if (!api) return Promise.reject(new Error('not started'));
    const method = api.registration.Register;
    if (!method) return Promise.reject(new Error('the Registration service has no Register method'));
    const client = new grpc.Client(`unix://${this.kubeletSocketPath}`, grpc.credentials.createInsecure());
    return new Promise<void>((resolve, reject) => {
      client.makeUnaryRequest(
        method.path,
        method.requestSerialize,
        method.responseDeserialize,
        registerRequest(this.socketName, this.resourceName),
        new grpc.Metadata(),
        { deadline: Date.now() + this.registerTimeoutMs },
        (err) => (err ? reject(err) : resolve()),
      );
    }).finally(() => client.close());
  }
}
