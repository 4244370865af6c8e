// The `vmlet controller` verb: runs the controller in the foreground with JSON logs until SIGTERM/SIGINT, then gives up the leader Lease.
import pino from 'pino';
import { runController } from './main.js';

export async function runControllerProcess(opts: { kubeconfig?: string }): Promise<void> {
  const logger = pino({ level: process.env.VMLET_LOG_LEVEL ?? 'info', base: { component: 'controller', pod: process.env.POD_NAME } });
  // VMLET_WEBHOOK=off and VMLET_HEALTH_PORT serve benchmarks and tests that run several controllers on one host.
  const healthPort = Number(process.env.VMLET_HEALTH_PORT ?? 8080);
  const ctl = await runController({ ...opts, logger, webhook: process.env.VMLET_WEBHOOK !== 'off', healthPort }).catch((err: unknown) => {
    logger.fatal({ err }, 'the controller could not start');
    process.stderr.write(`vmlet controller: ${(err as Error).message}\n`);
    process.exit(1);
  });
  await new Promise<void>((resolve) => {
    const stop = (signal: string): void => {
      logger.info({ signal }, 'stopping the controller');
      void ctl.close().finally(resolve);
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  process.exit(0);
}
