// Decoding of QMP messages beyond framing: recognising the greeting and turning an event line into a typed QmpEvent, by checks rather than casts.
import type { JsonObject } from './framing.js';
import type { QmpEvent, QmpGreeting, QmpTimestamp } from './types.js';

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The `QMP` member of a greeting: a version with a `qemu` triple and a capability list. */
export function isGreetingBody(v: unknown): v is QmpGreeting['QMP'] {
  if (!isRecord(v)) return false;
  const version = v['version'];
  return isRecord(version) && isRecord(version['qemu']) && Array.isArray(v['capabilities']);
}

export function isEventMessage(msg: JsonObject): msg is JsonObject & { event: string } {
  return typeof msg['event'] === 'string';
}

/** An event message as a QmpEvent: `data` is `{}` when QEMU sent none. */
export function toEvent(msg: JsonObject & { event: string }): QmpEvent {
  const data = msg['data'];
  const ts = msg['timestamp'];
  const timestamp: QmpTimestamp =
    isRecord(ts) && typeof ts['seconds'] === 'number' && typeof ts['microseconds'] === 'number'
      ? { seconds: ts['seconds'], microseconds: ts['microseconds'] }
      : { seconds: 0, microseconds: 0 };
  return { event: msg.event, data: isRecord(data) ? data : {}, timestamp };
}
