// Error type of the QMP and guest-agent clients: a stable code, QEMU's error class/desc when QEMU sent one, and the wrapped cause.

/** Every code the clients throw; docs/errors-qmp.md says when each happens and what to do. */
export type QmpErrorCode =
  | 'QMP_CONNECT_FAILED'
  | 'QMP_GREETING_TIMEOUT'
  | 'QMP_NEGOTIATION_FAILED'
  | 'QMP_COMMAND_ERROR'
  | 'QMP_TIMEOUT'
  | 'QMP_DISCONNECTED'
  | 'QMP_PROTOCOL'
  | 'QMP_NOT_CONNECTED'
  | 'QMP_ABORTED'
  | 'QMP_SEND_FDS'
  | 'QMP_INVALID_ARGUMENT'
  | 'QGA_CONNECT_FAILED'
  | 'QGA_COMMAND_ERROR'
  | 'QGA_TIMEOUT'
  | 'QGA_DISCONNECTED'
  | 'QGA_PROTOCOL'
  | 'QGA_CLOSED'
  | 'QGA_ABORTED';

export interface QmpErrorOptions {
  cause?: unknown;
  /** The command that failed, when the error belongs to one. */
  command?: string;
  /** QEMU's error class (GenericError, CommandNotFound, DeviceNotFound, ...), for QMP_COMMAND_ERROR / QGA_COMMAND_ERROR. */
  errorClass?: string;
  /** QEMU's human-readable error description. */
  desc?: string;
}

export class QmpError extends Error {
  readonly code: QmpErrorCode;
  readonly command: string | undefined;
  readonly errorClass: string | undefined;
  readonly desc: string | undefined;

  constructor(code: QmpErrorCode, message: string, options: QmpErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'QmpError';
    this.code = code;
    this.command = options.command;
    this.errorClass = options.errorClass;
    this.desc = options.desc;
  }
}

export function isQmpError(e: unknown, code?: QmpErrorCode): e is QmpError {
  return e instanceof QmpError && (code === undefined || e.code === code);
}
