// The NetManager's use of the ip and nft programs: plain, JSON and batch invocations on the host or inside a netns (batches of the planners' forms over rtnetlink instead), and the one test of a failure's stderr.
import { VmletError } from '../errors.js';
import { toBatch } from './commands.js';
import { execRunner, type CommandResult, type CommandRunner } from './exec.js';
import { netlinkSupports, runIpBatchNetlink } from './ip-netlink.js';
import type { IpCommand } from './types.js';

export interface IpToolBins {
  ip: string;
  nft: string;
  /** only for runners that cannot start a program inside a netns themselves */
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

/** `ip -batch` ends the error of each failed line with this (iproute2's ip.c). */
const FAILED_LINE = /^Command failed -:(\d+)$/;

/**
 * Splits the outcome of an `ip -force -batch -` run by line: null for a line that worked, else a
 * NET_COMMAND_FAILED carrying only that line's stderr. When the failure cannot be attributed (ip
 * did not start, or printed no line numbers) every line gets the whole error.
 */
export function splitBatchFailure(cmds: readonly IpCommand[], err: unknown): (VmletError | null)[] {
  if (!(err instanceof VmletError) || err.exitCode !== 1 || err.stderr === undefined) return cmds.map(() => toError(err));
  const failed = new Map<number, string[]>();
  let pending: string[] = [];
  for (const line of err.stderr.split('\n')) {
    const m = FAILED_LINE.exec(line.trim());
    if (m) {
      failed.set(Number(m[1]) - 1, pending);
      pending = [];
    } else if (line.trim() !== '') {
      pending.push(line.trim());
    }
  }
  if (failed.size === 0) return cmds.map(() => err);
  return cmds.map((c, i) => {
    const lines = failed.get(i);
    if (lines === undefined) return null;
    const stderr = lines.join('\n');
    return new VmletError('NET_COMMAND_FAILED', `ip ${c.join(' ')}: ${lines.slice(0, 6).join('; ') || 'failed'}`, { exitCode: 1, stderr, cause: err });
  });
}

export interface IpToolsOptions {
  /**
   * ipBatch sends batches of the planners' forms (netlinkSupports) as rtnetlink requests instead
   * of starting ip. Default: on with the real runner, off with any other (tests that record see
   * every command).
   */
  netlink?: boolean;
  /** where `netns NAME` of such a batch is looked up (ip's own directory); default /run/netns */
  netnsDir?: string;
}

function toError(e: unknown): VmletError {
  return e instanceof VmletError ? e : new VmletError('NET_COMMAND_FAILED', (e as Error).message, { cause: e });
}

export class IpTools {
  private readonly netlink: boolean;
  private readonly netnsDir: string;

  constructor(
    private readonly run: CommandRunner,
    private readonly bin: IpToolBins,
    opts: IpToolsOptions = {},
  ) {
    this.netlink = opts.netlink ?? run === execRunner;
    this.netnsDir = opts.netnsDir ?? '/run/netns';
  }

  /** `bin args` on the host, or inside the netns at `netnsPath`: started there by the runner when it can, else through nsenter. */
  private exec(bin: string, args: string[], input: string | undefined, netnsPath: string | undefined): Promise<CommandResult> {
    if (netnsPath === undefined) return this.run(bin, args, input);
    if (this.run.inNetns) return this.run.inNetns(netnsPath, bin, args, input);
    return this.run(this.bin.nsenter, [`--net=${netnsPath}`, '--', bin, ...args], input);
  }

  async ip(args: string[], netnsPath?: string): Promise<string> {
    return (await this.exec(this.bin.ip, args, undefined, netnsPath)).stdout;
  }

  /** `ip -json …`, parsed; empty output is an empty list. */
  async ipJson<T>(args: string[], netnsPath?: string): Promise<T> {
    const out = await this.ip(['-json', ...args], netnsPath);
    return (out.trim() === '' ? [] : JSON.parse(out)) as T;
  }

  /**
   * Several reads in one `ip -json [opts] -batch -` process: ip prints one JSON document per line
   * and command, parsed here in order. `opts` (e.g. `-details`) apply to every command.
   */
  async ipJsonBatch<T extends unknown[]>(cmds: IpCommand[], opts: string[] = [], netnsPath?: string): Promise<T> {
    const out = (await this.exec(this.bin.ip, ['-json', ...opts, '-batch', '-'], toBatch(cmds), netnsPath)).stdout;
    const docs = out.split('\n').filter((l) => l.trim() !== '');
    if (docs.length !== cmds.length) {
      throw new VmletError('NET_COMMAND_FAILED', `ip -json -batch printed ${docs.length} documents for ${cmds.length} commands`, { stderr: '' });
    }
    return docs.map((d) => JSON.parse(d) as unknown) as T;
  }

  /**
   * All commands on the host or inside the netns at `netnsPath`, stopping at the first failure:
   * as rtnetlink requests when netlinkSupports them (no process), else one `ip -batch -` process.
   */
  async ipBatch(cmds: IpCommand[], netnsPath?: string): Promise<void> {
    if (cmds.length === 0) return;
    if (this.netlink && netlinkSupports(cmds)) {
      toBatch(cmds); // the same token check as for ip, so both paths refuse the same input
      // the work below is synchronous: yield once, so what the caller starts beside it (the sandbox's nft process) is under way first
      await Promise.resolve();
      runIpBatchNetlink(cmds, netnsPath, { netnsDir: this.netnsDir });
      return;
    }
    await this.exec(this.bin.ip, ['-batch', '-'], toBatch(cmds), netnsPath);
  }

  /**
   * One `ip -force -batch -` process for commands that may each fail on their own (deletions of
   * what may be gone already): per command, null or its own NET_COMMAND_FAILED (for isGone).
   */
  async ipEach(cmds: IpCommand[], netnsPath?: string): Promise<(VmletError | null)[]> {
    if (cmds.length === 0) return [];
    try {
      await this.exec(this.bin.ip, ['-force', '-batch', '-'], toBatch(cmds), netnsPath);
      return cmds.map(() => null);
    } catch (e) {
      return splitBatchFailure(cmds, e);
    }
  }

  /** A read such as `nft -j list counters table …` on the host or inside the netns at `netnsPath`: its stdout. */
  async nftRead(args: string[], netnsPath?: string): Promise<string> {
    return (await this.exec(this.bin.nft, args, undefined, netnsPath)).stdout;
  }

  /** Loads an nftables ruleset (`nft -f -`) on the host or inside the netns at `netnsPath`. */
  async nft(ruleset: string, netnsPath?: string): Promise<void> {
    await this.exec(this.bin.nft, ['-f', '-'], ruleset, netnsPath);
  }
}
