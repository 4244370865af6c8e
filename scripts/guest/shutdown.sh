#!/bin/sh
# shutdown for qemu-ga (guest-shutdown runs "shutdown -P|-H|-r +0 msg"): hands over to PID 1 like busybox halt/poweroff/reboot.
action=poweroff
for a in "$@"; do
  case "$a" in
    -r) action=reboot ;;
    -H|-h) action=halt ;;
    -P) action=poweroff ;;
  esac
done
"$action"
