/* IMPORTANT
 * This snapshot file is auto-generated, but designed for humans.
 * It should be checked into source control and tracked carefully.
 * Re-generate by setting TAP_SNAPSHOT=1 and running tests.
 * Make sure to inspect the output below.  Do not ignore changes!
 */
'use strict'
exports[`test/unit/controller-launcher-pod.test.ts > TAP > the rendered pod with one containerDisk and one Filesystem claim (docs/cluster-mode.md shows it) > launcher pod YAML 1`] = `
apiVersion: v1
kind: Pod
metadata:
  name: vmlet-launcher-web-x7k2p
  namespace: apps
  labels:
    app: web
    vmlet.io/component: launcher
    vmlet.io/vmi-name: web
    vmlet.io/vmi-uid: 1b4e28ba-2fa1-11d2-883f-0016d3cca427
  ownerReferences:
    - apiVersion: vmlet.io/v1alpha1
      kind: VirtualMachineInstance
      name: web
      uid: 1b4e28ba-2fa1-11d2-883f-0016d3cca427
      controller: true
      blockOwnerDeletion: true
spec:
  nodeName: node-1
  securityContext:
    runAsNonRoot: true
    runAsUser: 107
    runAsGroup: 107
    fsGroup: 107
    seccompProfile:
      type: RuntimeDefault
  automountServiceAccountToken: false
  enableServiceLinks: false
  restartPolicy: Never
  hostname: web
  terminationGracePeriodSeconds: 195
  imagePullSecrets:
    - name: quay-pull
  initContainers:
    - name: vmlet-bin
      image: ghcr.io/vmlet/vmlet:1.0
      imagePullPolicy: IfNotPresent
      command:
        - /bin/cp
        - /usr/libexec/vmlet/vmlet-disk-wait
        - /var/run/vmlet-bin/vmlet-disk-wait
      volumeMounts:
        - name: vmlet-bin
          mountPath: /var/run/vmlet-bin
      securityContext:
        allowPrivilegeEscalation: false
        capabilities:
          drop:
            - ALL
        runAsNonRoot: true
      resources:
        requests:
          cpu: 1m
          memory: 16Mi
        limits:
          memory: 16Mi
  containers:
    - name: compute
      image: ghcr.io/vmlet/vmlet:1.0
      imagePullPolicy: IfNotPresent
      command:
        - /usr/libexec/vmlet/vmlet-launch
      args:
        - --uid
        - 1b4e28ba-2fa1-11d2-883f-0016d3cca427
        - --socket
        - /var/run/vmlet/launcher.sock
        - --run-dir
        - /var/run/vmlet
        - --linger
        - "600"
      securityContext:
        allowPrivilegeEscalation: false
        capabilities:
          drop:
            - ALL
        runAsNonRoot: true
      resources:
        requests:
          cpu: 200m
          memory: 1152Mi
          devices.vmlet.io/kvm: "1"
        limits:
          memory: 1152Mi
          devices.vmlet.io/kvm: "1"
      volumeMounts:
        - name: vmlet-run
          mountPath: /var/run/vmlet
        - name: pvc-data
          mountPath: /var/run/vmlet-pvc/data
    - name: volume-0
      image: quay.io/containerdisks/debian:12
      imagePullPolicy: IfNotPresent
      command:
        - /var/run/vmlet-bin/vmlet-disk-wait
        - root
      volumeMounts:
        - name: vmlet-bin
          mountPath: /var/run/vmlet-bin
          readOnly: true
      securityContext:
        allowPrivilegeEscalation: false
        capabilities:
          drop:
            - ALL
        runAsNonRoot: true
      resources:
        requests:
          cpu: 1m
          memory: 16Mi
        limits:
          memory: 16Mi
  volumes:
    - name: vmlet-run
      emptyDir: {}
    - name: vmlet-bin
      emptyDir: {}
    - name: pvc-data
      persistentVolumeClaim:
        claimName: web-data

`
