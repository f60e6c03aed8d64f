#!/bin/sh
# Boot benchmark, run by L1's /init: wall time from starting the VMM to the
# L2 kernel running its /init (the L2-INIT line on the serial console), for
# Tern and for QEMU with KVM (-machine microvm and q35, -kernel boot), same
# kernel, initramfs, command line, memory and vCPUs. Runs are interleaved;
# each result is one JSON line: TIER-BENCH {...}.
# Environment: KVM=1 when /dev/kvm exists; REPS (default 5).
. /tier/env
K=/tier/vmlinuz
I=/tier/l2.cpio
MEM=256M
REPS=${REPS:-5}
CMD="$L2_CMDLINE tier.mode=bench"

if [ "$KVM" != 1 ]; then
  echo "TIER-BENCH-SKIP no /dev/kvm in L1"
  exit 0
fi

# L1's clock in milliseconds (/proc/uptime has centiseconds).
now_ms() {
  read -r up _ </proc/uptime
  w=${up%.*}
  f=${up#*.}
  f=${f#0}
  echo $((w * 1000 + f * 10))
}

# one VMM ARGS...: one boot; prints "MS GUEST_UPTIME" or "fail".
one() {
  rm -f /tmp/bench.fifo /tmp/bench.out
  mkfifo /tmp/bench.fifo
  t0=$(now_ms)
  "$@" </dev/null >/tmp/bench.fifo 2>&1 &
  pid=$!
  # A watchdog (about 400 s) that ends by itself when the VMM is gone (its
  # output must not hold the caller's command substitution open).
  (
    i=0
    while [ $i -lt 4000 ] && kill -0 $pid 2>/dev/null; do usleep 100000; i=$((i + 1)); done
    kill -9 $pid 2>/dev/null
  ) >/dev/null 2>&1 &
  dog=$!
  # tee keeps the console (for the guest's uptime); the time is taken the
  # moment grep sees the marker, and the VMM is stopped there.
  rm -f /tmp/bench.t1
  tee /tmp/bench.out </tmp/bench.fifo | {
    grep -q -m1 '^L2-INIT' && now_ms >/tmp/bench.t1
    kill -9 $pid 2>/dev/null
  }
  wait $pid 2>/dev/null
  if [ -s /tmp/bench.t1 ]; then
    up=$(tr -d '\r' </tmp/bench.out | grep -a -m1 '^L2-INIT' | sed -n 's/.* up=\([0-9.]*\).*/\1/p')
    echo "$(($(cat /tmp/bench.t1) - t0)) ${up:-0}"
  else
    tail -5 /tmp/bench.out | sed 's/^/TIER-INFO bench: /' >&2
    echo fail
  fi
  wait $dog 2>/dev/null
}

tern_boot() {
  one tern run --kernel $K --initrd $I --cmdline "$CMD" --memory $MEM --vcpus 1 \
    --serial stdout --control /tmp/bench.ctl
}

qemu_boot() {
  one qemu-system-x86_64 -machine "$1" -accel kvm -cpu host -m $MEM -smp 1 \
    -nodefaults -no-user-config -display none -serial stdio -no-reboot \
    -L /usr/share/qemu -kernel $K -initrd $I -append "$CMD"
}

# median of the numbers on stdin
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print "null" }'; }

for vmm in tern qemu-microvm qemu-q35; do : >/tmp/bench.$vmm; done
r=1
while [ $r -le "$REPS" ]; do
  for vmm in tern qemu-microvm qemu-q35; do
    case $vmm in
      tern) res=$(tern_boot) ;;
      qemu-microvm) res=$(qemu_boot microvm) ;;
      qemu-q35) res=$(qemu_boot q35) ;;
    esac
    echo "TIER-INFO bench $vmm run $r: $res"
    echo "$res" >>/tmp/bench.$vmm
  done
  r=$((r + 1))
done

for vmm in tern qemu-microvm qemu-q35; do
  ok=$(grep -vc fail /tmp/bench.$vmm)
  runs=$(grep -v fail /tmp/bench.$vmm | cut -d' ' -f1 | paste -sd, -)
  med=$(grep -v fail /tmp/bench.$vmm | cut -d' ' -f1 | median)
  gmed=$(grep -v fail /tmp/bench.$vmm | cut -d' ' -f2 | median)
  echo "TIER-BENCH {\"bench\":\"boot-to-init\",\"vmm\":\"$vmm\",\"runs\":$REPS,\"ok\":$ok,\"wall_ms\":[$runs],\"median_wall_ms\":$med,\"median_guest_uptime_s\":$gmed,\"memory\":\"$MEM\",\"vcpus\":1}"
done
