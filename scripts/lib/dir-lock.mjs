// A lock between builds of one cache folder (say set-up and a test): a lock directory holding the owner's pid; a dead owner's lock is taken over.
import fs from 'node:fs';
import path from 'node:path';

/** Whether a process with `pid` exists (EPERM: it does, as another user's). */
export function pidAlive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return /** @type {{code?: string}} */ (e).code === 'EPERM';
  }
}

/**
 * Runs `fn` while holding `lockDir`. Waits for a live owner, polling every `pollMs`; takes over the
 * lock of a dead one (or of one that never wrote its pid within 10 s); after `timeoutMs` throws
 * `timeoutError(pid)`. `what` names the build in the one waiting line logged.
 * @template T
 * @param {string} lockDir
 * @param {{ what: string, timeoutMs: number, pollMs: number, log: (msg: string) => void, timeoutError: (pid: number) => Error }} o
 * @param {() => T | Promise<T>} fn
 * @returns {Promise<T>}
 */
export async function withDirLock(lockDir, o, fn) {
  const deadline = Date.now() + o.timeoutMs;
  let said = false;
  for (;;) {
    try {
      fs.mkdirSync(lockDir);
      fs.writeFileSync(path.join(lockDir, 'pid'), String(process.pid));
      break;
    } catch (e) {
      if (/** @type {{code?: string}} */ (e).code !== 'EEXIST') throw e;
      let pid = NaN;
      try {
        pid = Number(fs.readFileSync(path.join(lockDir, 'pid'), 'utf8'));
      } catch {
        /* being written or gone */
      }
      let alive;
      if (Number.isInteger(pid) && pid > 0) alive = pidAlive(pid);
      else {
        try {
          alive = Date.now() - fs.statSync(lockDir).mtimeMs < 10_000;
        } catch {
          alive = false;
        }
      }
      if (!alive) {
        fs.rmSync(lockDir, { recursive: true, force: true });
        continue;
      }
      if (Date.now() > deadline) throw o.timeoutError(pid);
      if (!said) o.log(`waiting for another ${o.what} (pid ${pid})`);
      said = true;
      await new Promise((r) => setTimeout(r, o.pollMs));
    }
  }
  try {
    return await fn();
  } finally {
    fs.rmSync(lockDir, { recursive: true, force: true });
  }
}
