// The KVM device plugin against a fake kubelet that is a real gRPC server on a unix socket: Register, ListAndWatch, Allocate, health changes, and registering again after the kubelet restarts.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import t from 'tap';
import { KvmDevicePlugin } from '../../src/daemon/device-plugin.js';
import {
  allocateResponse,
  kvmDevices,
  loadDevicePluginApi,
  preferredAllocation,
  protoCandidates,
  type DevicePluginApi,
} from '../../src/daemon/device-plugin-api.js';

const api: DevicePluginApi = loadDevicePluginApi();
const log = pino({ level: process.env.VMLET_TEST_LOG ?? 'silent' });

async function until<T>(what: string, fn: () => T | undefined, ms = 10_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** The kubelet's side: a Registration server on kubelet.sock that records each Register. */
class FakeKubelet {
  readonly requests: Array<Record<string, unknown>> = [];
  private server: grpc.Server | undefined;
  constructor(readonly dir: string) {}
  get socket(): string {
    return path.join(this.dir, 'kubelet.sock');
  }
  async start(): Promise<void> {
    const server = new grpc.Server();
    server.addService(api.registration, {
      Register: (call: grpc.ServerUnaryCall<Record<string, unknown>, object>, cb: grpc.sendUnaryData<object>) => {
        this.requests.push(call.request);
        cb(null, {});
      },
    });
    await new Promise<void>((res, rej) => server.bindAsync(`unix://${this.socket}`, grpc.ServerCredentials.createInsecure(), (e) => (e ? rej(e) : res())));
    this.server = server;
  }
  /** Like a real kubelet restart: stop, delete every socket in the folder, serve kubelet.sock anew. */
  async restart(): Promise<void> {
    this.server?.forceShutdown();
    for (const f of fs.readdirSync(this.dir)) if (f.endsWith('.sock')) fs.rmSync(path.join(this.dir, f));
    await new Promise((r) => setTimeout(r, 50));
    await this.start();
  }
  stop(): void {
    this.server?.forceShutdown();
  }
}

/** The kubelet's client side of the plugin. */
function pluginClient(socket: string): {
  unary: (method: string, req: object) => Promise<Record<string, unknown>>;
  listAndWatch: () => { updates: Array<Array<{ ID: string; health: string }>>; cancel: () => void };
  close: () => void;
} {
  const client = new grpc.Client(`unix://${socket}`, grpc.credentials.createInsecure());
  const def = (name: string) => {
    const m = api.devicePlugin[name];
    if (!m) throw new Error(`no method ${name}`);
    return m;
  };
  return {
    unary: (method, req) =>
      new Promise((res, rej) => {
        const m = def(method);
        client.makeUnaryRequest(m.path, m.requestSerialize, m.responseDeserialize, req, (e, v) => (e ? rej(e) : res(v as Record<string, unknown>)));
      }),
    listAndWatch: () => {
      const m = def('ListAndWatch');
      const updates: Array<Array<{ ID: string; health: string }>> = [];
      const call = client.makeServerStreamRequest(m.path, m.requestSerialize, m.responseDeserialize, {});
      call.on('data', (d: { devices: Array<{ ID: string; health: string }> }) => updates.push(d.devices));
      call.on('error', () => {});
      return { updates, cancel: () => call.cancel() };
    },
    close: () => client.close(),
  };
}

t.test('pure parts', async (t) => {
  t.ok(
    protoCandidates().some((p) => fs.existsSync(p)),
    'the .proto is found next to the module',
  );
  t.ok(
    protoCandidates('file:///opt/vmlet/dist/daemon/device-plugin-api.js').includes('/opt/vmlet/src/daemon/proto/deviceplugin-v1beta1.proto'),
    'from dist/ the src/ copy is a candidate',
  );
  t.throws(() => loadDevicePluginApi('/nonexistent/x.proto'), { code: 'DEVICE_PLUGIN_PROTO_MISSING' });
  const d = kvmDevices(3, true);
  t.same(d, [
    { ID: 'kvm-0', health: 'Healthy' },
    { ID: 'kvm-1', health: 'Healthy' },
    { ID: 'kvm-2', health: 'Healthy' },
  ]);
  t.ok(
    kvmDevices(5, false).every((x) => x.health === 'Unhealthy'),
    'without KVM: all unhealthy',
  );
  t.equal(new Set(kvmDevices(1000, true).map((x) => x.ID)).size, 1000, 'IDs are unique');
  const a = allocateResponse({ container_requests: [{ devices_ids: ['kvm-1'] }, { devices_ids: ['kvm-2', 'kvm-3'] }] }, '/dev/kvm-test');
  t.equal(a.container_responses.length, 2, 'one answer per container');
  t.same(
    a.container_responses[1]?.devices,
    [{ container_path: '/dev/kvm', host_path: '/dev/kvm-test', permissions: 'rw' }],
    'one device node, however many shares',
  );
  t.same(allocateResponse({}, '/dev/kvm').container_responses, []);
  t.same(preferredAllocation({ container_requests: [{ available_deviceIDs: ['a', 'b', 'c'], must_include_deviceIDs: ['c'], allocation_size: 2 }] }), {
    container_responses: [{ deviceIDs: ['c', 'a'] }],
  });
});

t.test('the plugin with a fake kubelet', async (t) => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-dp-'));
  const dir = path.join(tmp, 'device-plugins');
  fs.mkdirSync(dir);
  const kubelet = new FakeKubelet(dir);
  const plugin = new KvmDevicePlugin({ kubeletRootDir: tmp, kvmUsable: true, count: 4, devicePath: '/dev/kvm-fake', checkIntervalMs: 200, logger: log });
  t.teardown(async () => {
    await plugin.stop();
    kubelet.stop();
    fs.rmSync(tmp, { recursive: true, force: true });
  });
  t.notOk(fs.existsSync(plugin.socketPath), 'the constructor does nothing');

  await t.test('waits for the kubelet, then registers with the right fields', async (t) => {
    await plugin.start();
    t.ok(fs.existsSync(plugin.socketPath), 'serves on <root>/device-plugins/vmlet-kvm.sock');
    t.equal(plugin.registered, false, 'no kubelet yet');
    t.match(plugin.lastError, undefined);
    await kubelet.start();
    await until('a Register', () => kubelet.requests[0]);
    t.match(kubelet.requests[0], {
      version: 'v1beta1',
      endpoint: 'vmlet-kvm.sock',
      resource_name: 'devices.vmlet.io/kvm',
      options: { pre_start_required: false, get_preferred_allocation_available: true },
    });
    await until('registered', () => plugin.registered || undefined);
    t.equal(plugin.registrations, 1);
  });

  await t.test('ListAndWatch streams the devices and their health changes', async (t) => {
    const c = pluginClient(plugin.socketPath);
    const w = c.listAndWatch();
    await until('the first list', () => w.updates[0]);
    t.same(
      w.updates[0]?.map((d) => d.ID),
      ['kvm-0', 'kvm-1', 'kvm-2', 'kvm-3'],
    );
    t.ok(
      w.updates[0]?.every((d) => d.health === 'Healthy'),
      'all healthy',
    );
    plugin.setKvmUsable(false);
    await until('an update', () => w.updates[1]);
    t.ok(
      w.updates[1]?.every((d) => d.health === 'Unhealthy'),
      'all unhealthy once KVM is not usable',
    );
    plugin.setKvmUsable(true);
    await until('an update', () => w.updates[2]);
    t.ok(w.updates[2]?.every((d) => d.health === 'Healthy'));
    w.cancel();
    c.close();
  });

  await t.test('Allocate, GetDevicePluginOptions, GetPreferredAllocation, PreStartContainer', async (t) => {
    const c = pluginClient(plugin.socketPath);
    const a = await c.unary('Allocate', { container_requests: [{ devices_ids: ['kvm-2'] }] });
    t.match(a, { container_responses: [{ devices: [{ container_path: '/dev/kvm', host_path: '/dev/kvm-fake', permissions: 'rw' }] }] });
    t.match(await c.unary('GetDevicePluginOptions', {}), { pre_start_required: false, get_preferred_allocation_available: true });
    t.match(await c.unary('GetPreferredAllocation', { container_requests: [{ available_deviceIDs: ['kvm-1', 'kvm-3'], allocation_size: 1 }] }), {
      container_responses: [{ deviceIDs: ['kvm-1'] }],
    });
    t.same(await c.unary('PreStartContainer', { devices_ids: ['kvm-1'] }), {});
    c.close();
  });

  await t.test('a kubelet restart (sockets deleted, kubelet.sock new): serves and registers again', async (t) => {
    const before = kubelet.requests.length;
    const oldIno = fs.statSync(plugin.socketPath).ino;
    await kubelet.restart();
    await until('a second Register', () => kubelet.requests[before]);
    t.not(fs.statSync(plugin.socketPath).ino, oldIno, 'our socket was deleted and made anew');
    t.equal(kubelet.requests[before]?.endpoint, 'vmlet-kvm.sock');
    await until('registered', () => plugin.registered || undefined);
    t.equal(plugin.registrations, 2);
    const c = pluginClient(plugin.socketPath);
    const w = c.listAndWatch();
    await until('a list from the new server', () => w.updates[0]);
    t.equal(w.updates[0]?.length, 4, 'the new server answers');
    w.cancel();
    c.close();
  });

  await t.test('only our socket removed: serves and registers again', async (t) => {
    const before = kubelet.requests.length;
    fs.rmSync(plugin.socketPath);
    await until('another Register', () => kubelet.requests[before]);
    t.ok(fs.existsSync(plugin.socketPath), 'serving again');
    // The kubelet has the request; the plugin counts it once the answer is back.
    await until('registered a third time', () => (plugin.registrations >= 3 ? true : undefined));
    t.equal(plugin.registrations, 3);
  });

  await t.test('stop removes the socket and ends the streams', async (t) => {
    const c = pluginClient(plugin.socketPath);
    const w = c.listAndWatch();
    await until('a list', () => w.updates[0]);
    await plugin.stop();
    t.notOk(fs.existsSync(plugin.socketPath), 'socket removed');
    t.equal(plugin.registered, false);
    const before = kubelet.requests.length;
    await kubelet.restart();
    await new Promise((r) => setTimeout(r, 600));
    t.equal(kubelet.requests.length, before, 'a stopped plugin does not register again');
    c.close();
  });
});

t.test('a kubelet that refuses: lastError, retried', async (t) => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmlet-dp-'));
  const dir = path.join(tmp, 'device-plugins');
  fs.mkdirSync(dir);
  let refuse = true;
  let calls = 0;
  const server = new grpc.Server();
  server.addService(api.registration, {
    Register: (_call: grpc.ServerUnaryCall<object, object>, cb: grpc.sendUnaryData<object>) => {
      calls++;
      if (refuse) cb({ code: grpc.status.INVALID_ARGUMENT, details: 'resource taken' });
      else cb(null, {});
    },
  });
  await new Promise<void>((res, rej) => server.bindAsync(`unix://${dir}/kubelet.sock`, grpc.ServerCredentials.createInsecure(), (e) => (e ? rej(e) : res())));
  const plugin = new KvmDevicePlugin({ kubeletRootDir: tmp, kvmUsable: false, checkIntervalMs: 100, logger: log });
  t.teardown(async () => {
    await plugin.stop();
    server.forceShutdown();
    fs.rmSync(tmp, { recursive: true, force: true });
  });
  await plugin.start();
  t.match(plugin.lastError, { code: 'DEVICE_PLUGIN_REGISTER_FAILED' });
  t.equal(plugin.registered, false);
  await until('a retry', () => (calls >= 2 ? true : undefined));
  refuse = false;
  await until('registered', () => plugin.registered || undefined);
  t.equal(plugin.lastError, undefined, 'cleared by the success');
});
