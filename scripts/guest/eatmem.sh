#!/bin/sh
# eatmem MB [SECONDS]: allocates MB MiB of anonymous memory in 16 MiB chunks, writes every page and
# holds it (for SECONDS, default until killed or Ctrl-C). Prints, each on its own line:
#   "eatmem: allocating MB MiB", then "eatmem: holding MB MiB" once all of it is resident,
#   "eatmem: released" when SECONDS are over, or "eatmem: killed" if the guest's OOM killer (or anyone)
#   killed a chunk, "eatmem: failed: ..." if a chunk could not be allocated at all.
case "$1" in ''|*[!0-9]*) echo "usage: eatmem MB [SECONDS]" >&2; exit 2 ;; esac
mb=$1
hold=${2:-}
fifo=/tmp/eatmem.$$
err=/tmp/eatmem.$$.err
# each chunk is one dd that reads /dev/zero into a buffer of the chunk's size, then blocks writing it
# into a pipe nobody reads: the memory stays resident until the pipe's reader (this script) goes away.
# The pipe is opened (read-write, so no open blocks) and unlinked before any dd starts: a dd that
# opened the path after the unlink would write a regular file and exit, which looked like "failed".
mkfifo "$fifo" || exit 1
exec 3<>"$fifo"
rm -f "$fifo"
: > "$err"
chunks=
left=$mb
while [ "$left" -gt 0 ]; do
  c=16
  [ "$left" -lt "$c" ] && c=$left
  dd if=/dev/zero bs=$((c * 1048576)) count=1 2>>"$err" >&3 &
  chunks="$chunks $!:$c"
  left=$((left - c))
done
pids=
for pc in $chunks; do pids="$pids ${pc%%:*}"; done
cleanup() { kill $pids 2>/dev/null; rm -f "$err"; }
trap 'cleanup; exit 0' INT TERM
echo "eatmem: allocating $mb MiB"
gone() {
  if [ -s "$err" ]; then echo "eatmem: failed: $(head -n 1 "$err")"; else echo "eatmem: killed"; fi
  cleanup
  exit 1
}
while :; do
  short=0
  for pc in $chunks; do
    p=${pc%%:*}
    c=${pc#*:}
    kill -0 "$p" 2>/dev/null || gone
    r=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null)
    [ "${r:-0}" -ge $((c * 1024)) ] || short=1
  done
  [ "$short" = 0 ] && break
  usleep 100000
done
echo "eatmem: holding $mb MiB"
if [ -n "$hold" ]; then
  end=$(( $(cut -d. -f1 /proc/uptime) + hold ))
  while [ "$(cut -d. -f1 /proc/uptime)" -lt "$end" ]; do
    for p in $pids; do kill -0 "$p" 2>/dev/null || gone; done
    sleep 1
  done
  cleanup
  echo "eatmem: released"
  exit 0
fi
while :; do
  for p in $pids; do kill -0 "$p" 2>/dev/null || gone; done
  sleep 1
done
