// What `vmlet qmp` may pass to QEMU: queries and a short list of commands that touch no host file; anything else only when the daemon config allows it by name. Every passthrough marks the VMI, as libvirt taints a domain after qemu-monitor-command.
import { VmletError } from '../errors.js';
import type { VirtualMachineInstanceStatus } from '../api/types.js';
import { withCondition } from './vmi-status.js';

/**
 * Allowed without configuration: every `query-*`, and these. None opens, writes or names a host file, adds a
 * device or backend, or migrates; commands like `human-monitor-command`, `migrate`, `dump-guest-memory`,
 * `pmemsave`, `screendump`, `chardev-add`, `blockdev-add` and `object-add` do, as root.
 */
export const SAFE_QMP_COMMANDS: readonly string[] = [
  'qom-list',
  'qom-get',
  'qom-list-types',
  'stop',
  'cont',
  'system_reset',
  'system_powerdown',
  'system_wakeup',
  'inject-nmi',
  'send-key',
  'input-send-event',
  'set_link',
  'balloon',
];

/** The condition a VMI carries once anything was passed through to its QEMU. */
export const PASSTHROUGH_CONDITION = 'QmpPassthrough';

/** QMP_COMMAND_NOT_ALLOWED unless `command` is a query, on the safe list, or named in `allow` (config `qmpPassthrough.allow`). */
export function checkPassthrough(command: string, allow: readonly string[]): void {
  if (command.startsWith('query-') || SAFE_QMP_COMMANDS.includes(command) || allow.includes(command)) return;
  throw new VmletError(
    'QMP_COMMAND_NOT_ALLOWED',
    `QMP "${command}" is not passed through: it can reach host files as root or change the VM behind vmlet's back. Allowed are query-* and ${SAFE_QMP_COMMANDS.join(', ')}; an operator may allow more by name in the daemon config (qmpPassthrough: {allow: [${command}]})`,
    { details: { command } },
  );
}

/** Marks the VMI: `QmpPassthrough=True`, naming the last command sent. */
export function markedPassthrough(s: VirtualMachineInstanceStatus, command: string, now: string): VirtualMachineInstanceStatus {
  return withCondition(
    s,
    PASSTHROUGH_CONDITION,
    true,
    now,
    'CommandPassedThrough',
    `QMP "${command}" was sent through vmlet qmp; vmlet's view of this VM may be incomplete`,
  );
}
