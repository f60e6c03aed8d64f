#!/bin/sh
# /init of L1 (the emulated machine that runs Tern on a real /dev/kvm).
# Loads kvm-amd, then runs the checks (or the boot benchmark) and ends L1
# with a reset, which ends QEMU (-no-reboot). Results go out on the serial
# console as TIER-* lines (see l1-checks.sh); the host script parses them.
export PATH=/bin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o size=2g tmpfs /tmp
exec </dev/console >/dev/console 2>&1
# L1's own kernel messages would interleave with the result lines.
dmesg -n 1
ip link set lo up

mode=checks
only=
for arg in $(cat /proc/cmdline); do
  case $arg in
    tier.mode=*) mode=${arg#tier.mode=} ;;
    tier.only=*) only=${arg#tier.only=} ;;
    tier.reps=*) reps=${arg#tier.reps=} ;;
  esac
done

for m in irqbypass ccp kvm kvm_amd; do
  insmod "/lib/modules/$m.ko" 2>/tmp/insmod.err || echo "TIER-INFO insmod $m failed: $(cat /tmp/insmod.err)"
done
echo "TIER-INFO L1 $(uname -r), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
echo "TIER-INFO L1 kvm: $(dmesg | grep -i 'kvm_amd\|svm' | tr '\n' ' ')"
if [ -c /dev/kvm ]; then
  echo "TIER-INFO L1 /dev/kvm present; kvm_amd nested=$(cat /sys/module/kvm_amd/parameters/nested 2>/dev/null) npt=$(cat /sys/module/kvm_amd/parameters/npt 2>/dev/null)"
  kvm=1
else
  kvm=0
fi

case $mode in
  bench) KVM=$kvm REPS=${reps:-5} /tier/l1-bench.sh ;;
  *) KVM=$kvm ONLY=$only /tier/l1-checks.sh ;;
esac
echo "TIER-END"
sync
reboot -f
