// Waits until kube-proxy (iptables mode) has programmed a Service's ClusterIP with an endpoint: before that, a packet to the ClusterIP follows the default route off the machine.
import { runStatus, waitFor } from './exec.js';

/** True once `iptables-save -t nat` sends the ClusterIP to a KUBE-SVC chain (it has a ready endpoint). */
export async function serviceProgrammed(clusterIp: string): Promise<boolean> {
  const r = await runStatus('iptables-save', ['-t', 'nat']);
  return r.stdout.split('\n').some((l) => l.includes(`-d ${clusterIp}/32`) && l.includes('-j KUBE-SVC-'));
}

/** The endpoint IPs kube-proxy sends a ClusterIP to (the DNAT targets of its KUBE-SEP chains), sorted. */
export async function serviceEndpointIps(clusterIp: string): Promise<string[]> {
  const lines = (await runStatus('iptables-save', ['-t', 'nat'])).stdout.split('\n');
  const svc = new Set<string>();
  for (const l of lines) if (l.includes(`-d ${clusterIp}/32`)) svc.add(/-j (KUBE-SVC-\S+)/.exec(l)?.[1] ?? '');
  svc.delete('');
  const seps = new Set<string>();
  for (const l of lines) {
    const m = /^-A (KUBE-SVC-\S+) .*-j (KUBE-SEP-\S+)/.exec(l);
    if (m && svc.has(m[1]!)) seps.add(m[2]!);
  }
  const ips = new Set<string>();
  for (const l of lines) {
    const m = /^-A (KUBE-SEP-\S+) .*--to-destination ([0-9.]+):/.exec(l);
    if (m && seps.has(m[1]!)) ips.add(m[2]!);
  }
  return [...ips].sort();
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
