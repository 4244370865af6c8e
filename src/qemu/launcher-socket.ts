// Binds and closes the unix sockets launchers connect to, and sets a socket's mode without following a symlink (a pod may own the folder).
import { constants as fsc } from 'node:fs';
import { chmod, open, unlink, type FileHandle } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import type { Logger } from 'pino';
import { VmletError } from '../errors.js';

// O_PATH (asm-generic value, as on x86_64 and arm64): a handle on the socket inode itself, which open() without it refuses.
const O_PATH = 0o10000000;

/** Listens on `socketPath`, replacing a stale file there; socket errors after that are logged. */
export async function bindLauncherSocket(socketPath: string, onConnection: (sock: net.Socket) => void, logger: Logger | undefined): Promise<net.Server> {
  await unlink(socketPath).catch((e: NodeJS.ErrnoException) => {
    if (e.code !== 'ENOENT') throw new VmletError('LAUNCHER_LISTEN_FAILED', `cannot remove stale ${socketPath}`, { cause: e });
  });
  const server = net.createServer(onConnection);
  await new Promise<void>((resolve, reject) => {
    server.once('error', (cause) => reject(new VmletError('LAUNCHER_LISTEN_FAILED', `cannot listen on ${socketPath}`, { cause })));
    server.listen(socketPath, () => resolve());
  });
  server.on('error', (err) => logger?.error({ err, socket: socketPath }, 'launcher socket error'));
  return server;
}

/** Stops a server (Node removes its socket file); resolves once it no longer accepts. */
export function closeServer(server: net.Server | undefined): Promise<void> {
  return server ? new Promise<void>((resolve) => server.close(() => resolve())) : Promise.resolve();
}

/**
 * chmod of a socket file that a symlink swapped in after bind() cannot redirect: the file is opened with
 * O_PATH|O_NOFOLLOW, checked to be a socket, and changed through PROCROOT/self/fd/N.
 */
export async function chmodSocketNoFollow(file: string, mode: number, procRoot: string): Promise<void> {
  let fh: FileHandle | undefined;
  try {
    fh = await open(file, O_PATH | fsc.O_NOFOLLOW);
    if (!(await fh.stat()).isSocket()) throw new VmletError('LAUNCHER_LISTEN_FAILED', `${file} is not a socket any more`);
    await chmod(path.join(procRoot, 'self', 'fd', String(fh.fd)), mode);
  } catch (cause) {
    if (cause instanceof VmletError) throw cause;
    throw new VmletError('LAUNCHER_LISTEN_FAILED', `cannot set the mode of ${file}`, { cause });
  } finally {
    await fh?.close();
  }
}
