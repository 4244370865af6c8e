// A stand-in for systemd's notify socket: a real AF_UNIX datagram socket (koffi; Node's dgram has none) that records each message with the time it was read.
import { rmSync } from 'node:fs';
import { closeFd, errno, errnoName, libc } from '../../src/sys/libc.js';

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const EAGAIN = 11;

const socketFn = libc.func('int socket(int, int, int)');
const bindFn = libc.func('int bind(int fd, void *addr, uint32_t len)');
const recvFn = libc.func('intptr_t recv(int fd, void *buf, size_t len, int flags)');

export interface Notification {
  /** Date.now() when the receiver read it (at most `pollMs` after it arrived). */
  at: number;
  text: string;
}

export interface NotifyReceiver {
  /** NOTIFY_SOCKET's value: the path, or `@name` for an abstract socket. */
  address: string;
  messages: Notification[];
  /** Messages whose text has a line equal to `line` (e.g. `READY=1`). */
  withLine(line: string): Notification[];
  /** Resolves with the first message (from now on, or already received if `past`) that has `line`. */
  waitLine(line: string, timeoutMs: number, opts?: { past?: boolean }): Promise<Notification>;
  close(): void;
}

/** Binds `address` (a path, or `@name`: abstract) and reads every `pollMs` in this thread's event loop. */
export function notifyReceiver(address: string, pollMs = 5): NotifyReceiver {
  const abstract = address.startsWith('@');
  const name = Buffer.from(abstract ? `\0${address.slice(1)}` : address);
  const addr = Buffer.alloc(2 + name.length + (abstract ? 0 : 1));
  addr.writeUInt16LE(AF_UNIX, 0);
  name.copy(addr, 2);
  const fd = socketFn(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0) as number;
  if (fd < 0) throw new Error(`socket: ${errnoName(errno())}`);
  if ((bindFn(fd, addr, addr.length) as number) !== 0) {
    const e = errnoName(errno());
    closeFd(fd);
    throw new Error(`bind ${address}: ${e}`);
  }
  const messages: Notification[] = [];
  const buf = Buffer.alloc(4096);
  const drain = (): void => {
    for (;;) {
      const n = Number(recvFn(fd, buf, buf.length, 0));
      if (n < 0) {
        const e = errno();
        if (e !== EAGAIN) throw new Error(`recv: ${errnoName(e)}`);
        return;
      }
      messages.push({ at: Date.now(), text: buf.subarray(0, n).toString('utf8') });
    }
  };
  const timer = setInterval(drain, pollMs);
  const withLine = (line: string): Notification[] => messages.filter((m) => m.text.split('\n').includes(line));
  let closed = false;
  return {
    address,
    messages,
    withLine,
    waitLine(line, timeoutMs, opts = {}) {
      const from = opts.past ? 0 : messages.length;
      return new Promise((resolve, reject) => {
        const end = Date.now() + timeoutMs;
        const look = (): void => {
          const m = messages.slice(from).find((x) => x.text.split('\n').includes(line));
          if (m) resolve(m);
          else if (Date.now() > end) reject(new Error(`no ${line} within ${timeoutMs} ms (got ${JSON.stringify(messages.slice(from).map((x) => x.text))})`));
          else setTimeout(look, pollMs);
        };
        look();
      });
    },
    close() {
      if (closed) return;
      closed = true;
      clearInterval(timer);
      drain();
      closeFd(fd);
      if (!abstract) rmSync(address, { force: true });
    },
  };
}
