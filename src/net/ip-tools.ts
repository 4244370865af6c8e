// The NetManager's use of the ip and nft programs: plain, JSON and batch invocations on the host or inside a netns (through nsenter), and the one test of a failure's stderr.
import { VmletError } from '../errors.js';
import { toBatch } from './commands.js';
import type { CommandRunner } from './exec.js';
import type { IpCommand } from './types.js';

export interface IpToolBins {
  ip: string;
  nft: string;
  nsenter: string;
}

/**
 * `ip` tells "already gone" (no such link, netns or device) only in words: it exits 1 for every
 * failure and prints the kernel's errno as text. So this is the one place that reads a command's
 * stderr, deliberately: the `stderr` field of a NET_COMMAND_FAILED error (never a message).
 */
const GONE_STDERR = /Cannot find device|No such file|does not exist|not found|No such device/i;

/** Whether a failed `ip … del`/`show` failed only because the object does not exist. */
export function isGone(e: unknown): boolean {
  return e instanceof VmletError && e.code === 'NET_COMMAND_FAILED' && e.stderr !== undefined && GONE_STDERR.test(e.stderr);
}

export class IpTools {
  constructor(
    private readonly run: CommandRunner,
    private readonly bin: IpToolBins,
  ) {}

  async ip(args: string[]): Promise<string> {
    return (await this.run(this.bin.ip, args)).stdout;
  }

  /** `ip -json …`, parsed; empty output is an empty list. */
  async ipJson<T>(args: string[]): Promise<T> {
    const out = await this.ip(['-json', ...args]);
    return (out.trim() === '' ? [] : JSON.parse(out)) as T;
  }

  /** One `ip -batch -` process for all commands, on the host or inside the netns at `netnsPath`. */
  async ipBatch(cmds: IpCommand[], netnsPath?: string): Promise<void> {
    if (cmds.length === 0) return;
    const text = toBatch(cmds);
    if (netnsPath === undefined) await this.run(this.bin.ip, ['-batch', '-'], text);
    else await this.run(this.bin.nsenter, [`--net=${netnsPath}`, '--', this.bin.ip, '-batch', '-'], text);
  }

  /** Loads an nftables ruleset (`nft -f -`) on the host or inside the netns at `netnsPath`. */
  async nft(ruleset: string, netnsPath?: string): Promise<void> {
    if (netnsPath === undefined) await this.run(this.bin.nft, ['-f', '-'], ruleset);
    else await this.run(this.bin.nsenter, [`--net=${netnsPath}`, '--', this.bin.nft, '-f', '-'], ruleset);
  }
}
