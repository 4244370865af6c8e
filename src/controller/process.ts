// The `vmlet controller` verb: runs the controller in the foreground with JSON logs until SIGTERM/SIGINT, then gives up the leader Lease.
import pino from 'pino';
import { parseApiGroup } from '../daemon/config.js';
import { isVmletError } from '../errors.js';
import { runController } from './main.js';

export async function runControllerProcess(opts: { kubeconfig?: string }): Promise<void> {
  const logger = pino({ level: process.env.VMLET_LOG_LEVEL ?? 'info', base: { component: 'controller', pod: process.env.POD_NAME } });
  const fail = (err: unknown): never => {
    logger.fatal({ err }, 'the controller could not start');
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`vmlet controller: ${isVmletError(err) ? `${err.code}: ` : ''}${message}\n`);
    process.exit(1);
  };
  // VMLET_WEBHOOK=off and VMLET_HEALTH_PORT serve benchmarks and tests that run several controllers on one host.
  const healthPort = Number(process.env.VMLET_HEALTH_PORT ?? 8080);
  // VMLET_API_GROUP (set by deploy/components/kubevirt-compat, as on the DaemonSet) wins over apiGroup of the cluster config.
  let group: { group: string; version: string } | undefined;
  try {
    group = process.env.VMLET_API_GROUP ? parseApiGroup(process.env.VMLET_API_GROUP, '$VMLET_API_GROUP') : undefined;
  } catch (err) {
    fail(err);
  }
  const ctl = await runController({ ...opts, ...group, logger, webhook: process.env.VMLET_WEBHOOK !== 'off', healthPort }).catch(fail);
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
