// The QMP steps between QEMU's greeting and a guest that runs: the serial console, then `cont` when QEMU waits from -S (set-action only for a QEMU started without -action).
import type { QmpClient } from '../qmp/client.js';
import type { SetActionArgs } from '../qmp/types.js';
import type { SerialConsole } from './console.js';

export interface QmpResume {
  /** Connects QMP (greeting and capabilities). */
  connect(): Promise<QmpClient>;
  /** QEMU was started by this daemon just now with -S (not re-adopted). */
  fresh: boolean;
  /** Connects the serial console (when the VMI has one); connected before `cont`, so no boot output is lost. */
  console?: (() => Promise<SerialConsole>) | undefined;
  /** Settles before `cont` is sent (the rest of the network sandbox, made while QEMU started); a rejection fails the start. */
  gate?: Promise<void>;
  /** Runs before `cont` (vCPU pinning); a fresh start with it goes step by step. */
  beforeCont?: (qmp: QmpClient) => Promise<void>;
  /** Called as `cont` is sent: a status write can be prepared while QEMU acts on it. */
  onCont?: () => void;
  trace(step: string): void;
}

export interface Resumed {
  qmp: QmpClient;
  /** `cont` was sent. */
  cont: boolean;
  /** The guest is paused after all (a re-adopted QEMU that was paused). */
  paused: boolean;
  console?: SerialConsole;
}

const ACTIONS: SetActionArgs = { shutdown: 'poweroff', reboot: 'reset', panic: 'pause' };

function sendCont(qmp: QmpClient, o: QmpResume): Promise<void> {
  const answered = qmp.execute('cont').then(() => undefined);
  o.onCont?.();
  return answered;
}

/** Connects QMP and brings QEMU to running. The console is closed again when a later step fails. */
export async function resumeGuest(o: QmpResume): Promise<Resumed> {
  // A fresh QEMU's console socket was bound by the daemon: it connects while QEMU starts up.
  const early = o.fresh ? o.console?.() : undefined;
  early?.catch(() => undefined);
  let serial: SerialConsole | undefined;
  try {
    const qmp = await o.connect();
    // A fresh QEMU's connect resolves at the greeting (qmp_capabilities is answered with `cont`).
    o.trace(o.fresh && !o.beforeCont ? 'qmp.greeting' : 'qmp.connected');
    if (o.fresh && !o.beforeCont) {
      // A fresh QEMU waits in prelaunch (-S) with its actions set by -action: `cont` is all it needs.
      serial = await early;
      await o.gate;
      await sendCont(qmp, o);
      o.trace('qmp.cont');
      return { qmp, cont: true, paused: false, ...(serial ? { console: serial } : {}) };
    }
    const status = await qmp.execute('query-status');
    // A QEMU an older daemon started may lack -action: set it before the guest runs.
    if (!o.fresh && status.status === 'prelaunch') await qmp.execute('set-action', ACTIONS);
    serial = await (early ?? o.console?.());
    const cont = status.status === 'prelaunch' || (o.fresh && !status.running);
    if (cont) {
      await o.gate;
      await o.beforeCont?.(qmp);
      await sendCont(qmp, o);
      o.trace('qmp.cont');
    }
    return { qmp, cont, paused: !cont && !status.running, ...(serial ? { console: serial } : {}) };
  } catch (e) {
    if (serial) serial.close();
    else
      void early?.then(
        (c) => c.close(),
        () => undefined,
      );
    throw e;
  }
}

export interface Gate {
  /** Resolves on `open(true)`, rejects on `open(false)`; a rejection nobody waits for is no unhandled one. */
  promise: Promise<void>;
  /** Returns `ok`. */
  open(ok: boolean): boolean;
}

/** A promise to hand to a write that may show only once a later step went well (`reason`: why it did not). */
export function gate(reason: string): Gate {
  let settle: (ok: boolean) => void = () => undefined;
  const promise = new Promise<boolean>((r) => (settle = r)).then((ok) => {
    if (!ok) throw new Error(reason);
  });
  promise.catch(() => undefined);
  return {
    promise,
    open: (ok) => {
      settle(ok);
      return ok;
    },
  };
}
