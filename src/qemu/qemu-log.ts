// Reads the last lines QEMU wrote to stderr (the launcher keeps them in qemu.log in the run directory), so a failed VMI says what QEMU said.
import { open } from 'node:fs/promises';
import path from 'node:path';
import { RUN_FILES } from './launch.js';

/** How much of the end of qemu.log is read: QEMU's fatal messages are a few short lines. */
const TAIL_BYTES = 16 * 1024;

// `-msg timestamp=on` puts an ISO time before each line QEMU itself prints (not before libc's assertion text).
const TIMESTAMP = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z\s+/;
// "qemu-system-x86_64: " (any binary name or path) says nothing the reader does not know.
const PROGRAM = /^(?:\S*\/)?qemu[\w.-]*:\s+/;

/** The last `max` non-empty lines of QEMU's output, without timestamps and program name, each cut to 300 characters. Pure. */
export function qemuErrorLines(text: string, max = 3): string[] {
  const lines = text
    .split('\n')
    .map((l) => l.replace(TIMESTAMP, '').replace(PROGRAM, '').trim())
    .filter((l) => l !== '');
  return lines.slice(-max).map((l) => (l.length > 300 ? `${l.slice(0, 297)}...` : l));
}

/** QEMU's last lines from `runDir`'s qemu.log; [] when there is none. */
export async function readQemuErrors(runDir: string, max = 3): Promise<string[]> {
  let fh;
  try {
    fh = await open(path.join(runDir, RUN_FILES.qemuLog), 'r');
  } catch {
    return [];
  }
  try {
    const { size } = await fh.stat();
    const len = Math.min(size, TAIL_BYTES);
    const buf = Buffer.alloc(len);
    await fh.read(buf, 0, len, size - len);
    let text = buf.toString('utf8');
    // A cut first line is partial: drop it unless the whole file was read.
    if (len < size) text = text.slice(text.indexOf('\n') + 1);
    return qemuErrorLines(text, max);
  } finally {
    await fh.close();
  }
}
