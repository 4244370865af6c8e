// Waits until kube-proxy (iptables mode) has programmed a Service's ClusterIP with an endpoint: before that, a packet to the ClusterIP follows the default route off the machine.
import { runStatus, waitFor } from './exec.js';

/** True once `iptables-save -t nat` sends the ClusterIP to a KUBE-SVC chain (it has a ready endpoint). */
export async function serviceProgrammed(clusterIp: string): Promise<boolean> {
  const r = await runStatus('iptables-save', ['-t', 'nat']);
  return r.stdout.split('\n').some((l) => l.includes(`-d ${clusterIp}/32`) && l.includes('-j KUBE-SVC-'));
}

/** Waits for `serviceProgrammed`; CLUSTER_TIMEOUT (from waitFor) after `timeoutMs`. */
export async function waitServiceProgrammed(what: string, clusterIp: string, timeoutMs = 60_000): Promise<void> {
  await waitFor(
    `kube-proxy to program ${what} (${clusterIp}) with an endpoint`,
    timeoutMs,
    async () => ((await serviceProgrammed(clusterIp)) ? true : undefined),
    250,
  );
}
