// The structural logger type the clients accept (pino and its child loggers fit it) and a no-op default.

type LogFn = (obj: object, msg?: string) => void;

/** Any pino-compatible logger: methods take (object, message). */
export interface QmpLogger {
  trace: LogFn;
  debug: LogFn;
  info: LogFn;
  warn: LogFn;
  error: LogFn;
}

const noop: LogFn = () => {};
export const silentLogger: QmpLogger = { trace: noop, debug: noop, info: noop, warn: noop, error: noop };
