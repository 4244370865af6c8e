// A raw unix-socket connection for tests that hold connections open: what the server sent so far, and when it closed.
import net from 'node:net';

export interface RawConnection {
  sock: net.Socket;
  /** Everything the server sent so far. */
  got: () => string;
  closed: Promise<void>;
}

/** Connects to `socketPath`; rejects on a connect error. */
export function connectRaw(socketPath: string): Promise<RawConnection> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(socketPath);
    let text = '';
    sock.on('data', (b: Buffer) => (text += b.toString('utf8')));
    const closed = new Promise<void>((r) => sock.on('close', () => r()));
    sock.once('error', reject);
    sock.once('connect', () => resolve({ sock, got: () => text, closed }));
  });
}
