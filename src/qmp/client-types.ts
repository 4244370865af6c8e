// Options and call signatures of the QMP client: what a QmpClient is configured with and how execute() is typed per command.
import type { Socket } from 'node:net';
import type { QmpLogger } from './logger.js';
import type { QmpCommandMap, QmpCommandName, QmpEvent } from './types.js';

export interface QmpClientOptions {
  /** Path of QEMU's `-qmp unix:PATH,server=on,wait=off` socket. */
  path: string;
  /** How long connect() keeps retrying while the socket is missing or refuses (QEMU still starting). Default 10 000. */
  connectTimeoutMs?: number;
  /** Pause between connect attempts. Default 10: a refused connect on a unix socket costs microseconds, and QEMU creates its socket any moment after exec. */
  retryIntervalMs?: number;
  /** How long to wait for the greeting after connecting, and again for the qmp_capabilities reply. Default 5 000. */
  greetingTimeoutMs?: number;
  /** Per-command timeout overrides by name, on top of the default table (docs/qmp.md). */
  timeouts?: Record<string, number>;
  /** Longest accepted line from QEMU, in bytes. Default 16 MiB (query-qmp-schema is about 200 KiB). */
  maxLineBytes?: number;
  /** Default buffer size of each events() iterator. Default 1 000. */
  eventBufferSize?: number;
  /**
   * What a command timeout does to the connection. true (default): the connection is closed and every
   * other pending command fails with QMP_DISCONNECTED; QEMU's monitor is serial, so one stuck command
   * blocks everything behind it anyway, and a fresh connection is an unambiguous state.
   * false: only the timed-out command fails; its late reply is recognised by id and dropped.
   */
  closeOnTimeout?: boolean;
  /** Ask for the `oob` capability when QEMU offers it. Default true. */
  enableOob?: boolean;
  logger?: QmpLogger;
  /** Clock for deadlines; injectable for tests. Default Date.now. */
  now?: () => number;
  /**
   * The SCM_RIGHTS sender; default is src/sys/scm.ts (loaded on first use). Injectable for tests. It
   * reports a full socket buffer as an error with `errno` (or `code`) `EAGAIN`, and a short write as
   * an error whose `details` are `{written, length}`.
   */
  sendWithFds?: (socketFd: number, data: Buffer, fds: number[]) => void;
  /** Finds the OS fd of the socket; default is src/sys/scm.ts socketFd. */
  socketFd?: (sock: Socket) => number;
}

export interface ConnectCallOptions {
  signal?: AbortSignal;
  /** Resolve once qmp_capabilities is sent, not answered (see QmpClient.connect). */
  pipelined?: boolean;
}

export interface ExecuteOptions {
  /** Overrides the default timeout of this command. */
  timeoutMs?: number;
  /** File descriptors sent with the command's bytes in one sendmsg (getfd, add-fd need exactly one). */
  fds?: number[];
  /** Aborting rejects the call with QMP_ABORTED; QEMU may still run the command, its reply is dropped. */
  signal?: AbortSignal;
  /** Send as `exec-oob` (only for commands QEMU allows out-of-band, and only if oob was negotiated). */
  oob?: boolean;
}

type ArgsOf<N extends QmpCommandName> = QmpCommandMap[N]['args'];
/** The parameters after the command name: typed for known commands, a plain object otherwise. */
export type ExecuteParams<N extends string> = N extends QmpCommandName
  ? ArgsOf<N> extends undefined
    ? [args?: undefined, opts?: ExecuteOptions]
    : object extends ArgsOf<N>
      ? [args?: ArgsOf<N>, opts?: ExecuteOptions]
      : [args: ArgsOf<N>, opts?: ExecuteOptions]
  : [args?: Record<string, unknown>, opts?: ExecuteOptions];
export type ExecuteResult<N extends string> = N extends QmpCommandName ? QmpCommandMap[N]['ret'] : unknown;

export type QmpEventListener<N extends string> = (data: QmpEvent<N>['data'], event: QmpEvent<N>) => void;

export type QmpState = 'idle' | 'connecting' | 'ready' | 'closed';
