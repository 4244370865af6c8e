// Human-readable daemon logs: pino-pretty run in-process and synchronously, one line per entry naming the component, the VM and the error's code.
import type { DestinationStream } from 'pino';
import pinoPretty from 'pino-pretty';

type Log = Record<string, unknown>;

function isRecord(v: unknown): v is Log {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The object a line is about: a VMI's `namespace/name` (bound by its child logger) or a VM's key. */
function subjectOf(log: Log): string | undefined {
  const vmi = log['vmi'];
  if (isRecord(vmi) && typeof vmi['name'] === 'string') return typeof vmi['namespace'] === 'string' ? `${vmi['namespace']}/${vmi['name']}` : vmi['name'];
  if (typeof log['vm'] === 'string') return log['vm'];
  return undefined;
}

/** An error as serialised by pino (`message` already holds the causes' messages), as `message (CODE)`. */
function errorText(err: unknown): string | undefined {
  if (err === undefined || err === null) return undefined;
  if (!isRecord(err)) return String(err);
  const message = typeof err['message'] === 'string' && err['message'] !== '' ? err['message'] : typeof err['type'] === 'string' ? err['type'] : 'error';
  const code = typeof err['code'] === 'string' ? ` (${err['code']})` : '';
  return `${message.replace(/\s*\n\s*/g, ' ')}${code}`;
}

/** Keys shown in the message itself (or of no use to a person), left out of the trailing `{...}`. */
const SHOWN = 'pid,hostname,node,component,vmi,vm,err';

type Colors = { bold(s: string): string; cyan(s: string): string };

/** `[component] namespace/name: message: error message (CODE)`. Exported for tests. */
export function formatMessage(log: Log, messageKey: string, colors?: Colors): string {
  const component = typeof log['component'] === 'string' ? `[${log['component']}] ` : '';
  const subject = subjectOf(log);
  const who = subject === undefined ? '' : `${colors ? colors.bold(colors.cyan(subject)) : subject}: `;
  const msg = typeof log[messageKey] === 'string' ? (log[messageKey] as string) : '';
  const err = errorText(log['err']);
  return `${component}${who}${msg}${err === undefined ? '' : `${msg === '' ? '' : ': '}${err}`}`;
}

export interface TextLogOptions {
  /** Where lines go; written synchronously (process.stdout is synchronous for files, pipes and terminals on Linux). */
  out: { write(line: string): unknown };
  colorize: boolean;
}

/**
 * A pino destination that turns each JSON line into one text line:
 * `[12:00:01.234] WARN: [node] default/web: VMI failed: QEMU exited with status 1 (QEMU_EXITED) {"reason":"QemuExited"}`.
 * It formats in the caller's thread (no worker transport), so lines logged just before process.exit are not lost.
 */
export function textLogDestination(opts: TextLogOptions): DestinationStream {
  const pretty = pinoPretty.prettyFactory({
    colorize: opts.colorize,
    singleLine: true,
    translateTime: 'SYS:HH:MM:ss.l',
    ignore: SHOWN,
    messageFormat: (log, messageKey, _levelLabel, extras) => formatMessage(log, messageKey, opts.colorize ? extras.colors : undefined),
  });
  return {
    write(line: string): void {
      const text = pretty(line);
      if (text) opts.out.write(text);
    },
  };
}
