// A VM's guest agent as the supervisor sees it: looked for once when the VMI runs and again whenever the guest opens its port, its socket held only while a probe runs or once the agent answered; an answer becomes `agentAnswered`.
import { checkedGuestInterfaces } from './guest-report.js';
import path from 'node:path';
import type { VMIInterfaceStatus } from '../api/types.js';
import { VmletError } from '../errors.js';
import { GuestAgentClient } from '../qmp/guest-agent.js';
import type { GuestNetworkInterface } from '../qmp/guest-agent-types.js';
import type { CoreEvent } from './supervisor-core.js';

export interface AgentWatchOptions {
  runDir: string;
  /** Only a Running VMI's agent is looked for. */
  running(): boolean;
  dispatch(e: CoreEvent): Promise<unknown>;
  /** status.interfaces with what the guest agent reports merged in; undefined = leave them. */
  guestInterfaces?: ((guest: GuestNetworkInterface[]) => VMIInterfaceStatus[] | undefined) | undefined;
}

export class AgentWatch {
  #client: GuestAgentClient | undefined;
  /** Probes in flight: only the last one to fail lets go of the socket, so it never cuts off a newer one. */
  #probing = 0;

  constructor(private readonly opts: AgentWatchOptions) {}

  /** The agent's client while the VMI runs (it may not answer). */
  get client(): GuestAgentClient | undefined {
    return this.#client;
  }

  /** The agent may never answer; it is looked for in the background and only sets a condition. */
  /** A reboot the guest takes part in; VMI_AGENT_UNAVAILABLE when the agent does not answer (ACPI is no help there). */
  async reboot(): Promise<void> {
    const agent = this.client;
    if (!agent) throw new VmletError('VMI_AGENT_UNAVAILABLE', 'softreboot needs the guest agent, which is not connected; use reset for a hard reset');
    try {
      await agent.shutdown('reboot');
    } catch (e) {
      throw new VmletError('VMI_AGENT_UNAVAILABLE', 'the guest agent did not take the reboot; use reset for a hard reset', { cause: e });
    }
  }

  start(): void {
    this.#client = new GuestAgentClient({ path: path.join(this.opts.runDir, 'qga.sock') });
    // One try now (the agent may already be up, e.g. after a daemon restart); after that, QEMU's
    // VSERPORT_CHANGE event says when the guest opens the port, so nothing polls.
    void this.probe();
  }

  async probe(): Promise<void> {
    const agent = this.#client;
    if (!agent || !this.opts.running()) return;
    this.#probing++;
    try {
      await agent.ping({ timeoutMs: 2_000 });
    } catch {
      // Most guests never answer (no agent) or not yet: hold no socket for them; the next VSERPORT_CHANGE reconnects.
      if (--this.#probing === 0 && this.#client === agent) agent.disconnect();
      return;
    }
    this.#probing--;
    if (this.#client !== agent || !this.opts.running()) return;
    let interfaces: VMIInterfaceStatus[] | undefined;
    if (this.opts.guestInterfaces) {
      const guest = await agent.networkInterfaces({ timeoutMs: 2_000 }).catch(() => undefined);
      if (guest) interfaces = this.opts.guestInterfaces(checkedGuestInterfaces(guest));
    }
    if (this.#client === agent) await this.opts.dispatch({ type: 'agentAnswered', interfaces });
  }

  close(): void {
    void this.#client?.close().catch(() => undefined);
    this.#client = undefined;
  }
}
