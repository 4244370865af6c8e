// `vmlet console`: joins the terminal (raw mode on a TTY) or piped stdin/stdout to a VMI's serial console; Ctrl+] detaches.
import type net from 'node:net';
import type { CliIo } from './io.js';

export const ESCAPE_BYTE = 0x1d; // Ctrl+]

/**
 * Pumps bytes both ways until the user detaches (Ctrl+]), stdin ends (piped input: the write side is closed and
 * the daemon's remaining output is read until it closes), or the daemon closes the console. Resolves with the exit code.
 */
export function runConsole(socket: net.Socket, head: Buffer, io: CliIo): Promise<number> {
  const { stdin, stdout } = io;
  const tty = stdin.isTTY === true && typeof stdin.setRawMode === 'function';
  if (head.length > 0) stdout.write(head);
  if (tty) stdin.setRawMode?.(true);
  return new Promise<number>((resolve) => {
    let done = false;
    const finish = (): void => {
      if (done) return;
      done = true;
      stdin.off('data', onInput);
      stdin.off('end', onEnd);
      if (tty) stdin.setRawMode?.(false);
      stdin.pause();
      socket.off('data', onOutput);
      resolve(0);
    };
    const onOutput = (d: Buffer): void => {
      stdout.write(d);
    };
    const onInput = (chunk: Buffer | string): void => {
      const d = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
      const i = d.indexOf(ESCAPE_BYTE);
      if (i < 0) {
        socket.write(d);
        return;
      }
      if (i > 0) socket.write(d.subarray(0, i));
      if (tty) io.stderr.write('\r\n');
      // Detach: close our side; the daemon releases the writer lock when it sees the end.
      socket.end();
      setTimeout(() => socket.destroy(), 500).unref();
      finish();
    };
    const onEnd = (): void => {
      socket.end();
    };
    socket.on('data', onOutput);
    socket.on('close', finish);
    socket.on('error', () => undefined);
    stdin.on('data', onInput);
    stdin.on('end', onEnd);
    stdin.resume();
  });
}
