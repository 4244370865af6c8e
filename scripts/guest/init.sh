#!/bin/sh
# vmlet test guest /init (PID 1): mounts, modules, DHCP, qemu-ga, acpid, httpd, ready marker, serial shell.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=vt100

mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o mode=0755,nosuid devtmpfs /dev 2>/dev/null || { mount -t tmpfs -o mode=0755,nosuid tmpfs /dev; mdev -s; }
mkdir -p /dev/pts /dev/shm /dev/virtio-ports
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup 2>/dev/null
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd

debug=0
console=ttyS0
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    vmlet.debug=1) debug=1 ;;
    console=*) c=${arg#console=}; console=${c%%,*} ;;
  esac
done
[ "$debug" = 1 ] && set -x
# keep later kernel messages (module probes, link up) off the console unless debugging
[ "$debug" = 1 ] || echo 1 > /proc/sys/kernel/printk

hostname -F /etc/hostname
ip link set lo up

while read -r m; do insmod "$m" 2>/dev/null; done < /etc/vmlet/modules
(while read -r m; do insmod "$m" 2>/dev/null; done < /etc/vmlet/modules.late) &

# DHCP on every ethN: at most ~3 s in the foreground, then udhcpc keeps trying in the background
dhcp_pids=
for n in /sys/class/net/eth*; do
  [ -e "$n" ] || continue
  i=${n##*/}
  udhcpc -i "$i" -s /etc/udhcpc/default.script -O mtu -b -t 3 -T 1 -A 5 -p "/run/udhcpc.$i.pid" >"/run/udhcpc.$i.log" 2>&1 &
  dhcp_pids="$dhcp_pids $!"
done

# virtio-serial ports: name them under /dev/virtio-ports as udev would (ports show up asynchronously)
virtio_serial=0
for d in /sys/bus/virtio/devices/*; do
  [ "$(cat "$d/device" 2>/dev/null)" = 0x0003 ] && virtio_serial=1
done
if [ "$virtio_serial" = 1 ]; then
  tries=0
  while [ "$tries" -lt 40 ]; do
    named=0 unnamed=0
    for p in /sys/class/virtio-ports/*; do
      [ -e "$p" ] || continue
      name=$(cat "$p/name" 2>/dev/null)
      if [ -n "$name" ]; then ln -sf "../${p##*/}" "/dev/virtio-ports/$name"; named=$((named + 1)); else unnamed=$((unnamed + 1)); fi
    done
    [ "$named" -gt 0 ] && [ "$unnamed" = 0 ] && break
    tries=$((tries + 1))
    usleep 50000
  done
fi
if [ -e /dev/virtio-ports/org.qemu.guest_agent.0 ]; then
  mkdir -p /run/qemu-ga
  setsid qemu-ga -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0 -t /run/qemu-ga -f /run/qemu-ga.pid </dev/null >/run/qemu-ga.log 2>&1 &
fi

acpid -c /etc/acpi -l /run/acpid.log -p /run/acpid.pid
httpd -p 80 -h /www

for p in $dhcp_pids; do wait "$p"; done

# shutdown, the way busybox init does it: halt/poweroff/reboot (without -f) signal PID 1
stop() {
  echo "vmlet-guest: $1"
  kill -TERM -1 2>/dev/null
  usleep 300000
  kill -KILL -1 2>/dev/null
  sync
  "$1" -f
}
trap 'stop halt' USR1
trap 'stop poweroff' USR2
trap 'stop reboot' TERM INT

read -r up _ < /proc/uptime
echo "vmlet-guest: up in ${up}s, kernel $(uname -r)"
printf '\n@READY_MARKER@\n'

# a root shell on the console, respawned when it exits
(
  while :; do
    setsid -c sh -l <"/dev/$console" >"/dev/$console" 2>&1
    usleep 200000
  done
) &

while :; do
  wait
  sleep 1
done
