#!/bin/sh
# /init of the L2 guest (the Linux guest Tern boots inside L1): the in-guest
# side of the nested tier's checks. Everything it reports is a line on the
# serial console starting with L2-; L1's check script reads them.
# What to do comes from the kernel command line: tier.mode=MODE.
#   bench    report /init reached and power off at once
#   blk      write and read back every virtio-blk disk, then power off
#   blklive  wait for vda to grow (the host resizes it), then time direct
#            reads of vda (no limit) and vdb (a QoS cap), then power off
#   counter  a process printing a counter every second, and a shell
#   shell    a shell on the console (the console-input check types into it)
#   poweroff power off at once (ACPI S5: the worker exits 0)
#   reboot   reboot at once (the worker exits with its reboot status, 80)
#   button   wait for the ACPI power button, then power off
# Every mode but reboot ends with `poweroff -f` (ACPI S5 through Tern's
# sleep control register), which ends the worker with status 0.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

mode=
for arg in $(cat /proc/cmdline); do
  case $arg in tier.mode=*) mode=${arg#tier.mode=} ;; esac
done
read -r up _ </proc/uptime
echo "L2-INIT mode=$mode up=$up nproc=$(nproc) cpuinfo=$(grep -c ^processor /proc/cpuinfo)"

# virtio-mmio is a module here; it binds the LNRO0005 devices of Tern's DSDT.
load_virtio() {
  insmod /lib/modules/virtio_ring.ko
  insmod /lib/modules/virtio.ko
  insmod /lib/modules/virtio_mmio.ko
  insmod /lib/modules/virtio_blk.ko
}

# wait_dev NAME: up to 20 s for /dev/NAME.
wait_dev() {
  i=0
  while [ ! -b "/dev/$1" ] && [ $i -lt 200 ]; do usleep 100000; i=$((i + 1)); done
  [ -b "/dev/$1" ]
}

sha() { sha256sum | cut -d' ' -f1; }

# blk_check DEV: 8 MiB of random data at offset 0 and at 40 MiB (past the
# first 32 MiB VHDX block), read back with O_DIRECT so the device is read,
# not the page cache. Reports the sizes and the digests.
blk_check() {
  d=$1
  if ! wait_dev "$d"; then
    echo "L2-BLK dev=$d missing"
    return
  fi
  sectors=$(cat "/sys/block/$d/size")
  dd if=/dev/urandom of=/tmp/pat bs=1M count=8 2>/dev/null
  w=$(sha </tmp/pat)
  dd if=/tmp/pat of="/dev/$d" bs=1M conv=fsync 2>/dev/null || echo "L2-BLK-ERR dev=$d write@0"
  dd if=/tmp/pat of="/dev/$d" bs=1M seek=40 conv=fsync 2>/dev/null || echo "L2-BLK-ERR dev=$d write@40M"
  blockdev --flushbufs "/dev/$d"
  r0=$(dd if="/dev/$d" bs=1M count=8 iflag=direct 2>/dev/null | sha)
  r40=$(dd if="/dev/$d" bs=1M skip=40 count=8 iflag=direct 2>/dev/null | sha)
  echo "L2-BLK dev=$d sectors=$sectors wrote=$w read0=$r0 read40=$r40"
  rm -f /tmp/pat
}

case $mode in
  bench)
    ;;
  blk)
    load_virtio
    usleep 500000
    echo "L2-VIRTIO devices=$(ls /sys/bus/virtio/devices | wc -l)"
    for d in vda vdb; do blk_check "$d"; done
    sync
    echo "L2-BLK-DONE"
    ;;
  blklive)
    load_virtio
    usleep 500000
    if wait_dev vda && wait_dev vdb; then
      s0=$(cat /sys/block/vda/size)
      echo "L2-LIVE-READY sectors=$s0"
      i=0
      while [ "$(cat /sys/block/vda/size)" = "$s0" ] && [ $i -lt 600 ]; do usleep 100000; i=$((i + 1)); done
      echo "L2-RESIZE sectors=$(cat /sys/block/vda/size) waited=$((i / 10))s"
      for d in vda vdb; do
        read -r t0 _ </proc/uptime
        dd if=/dev/$d of=/dev/null bs=64k count=128 iflag=direct 2>/dev/null || echo "L2-BLK-ERR dev=$d read"
        read -r t1 _ </proc/uptime
        echo "L2-RATE dev=$d bytes=8388608 t0=$t0 t1=$t1"
      done
    else
      echo "L2-BLK missing vda or vdb"
    fi
    echo "L2-BLK-DONE"
    ;;
  counter)
    # One process, one counter: after a save/restore or a migration the
    # same pid must go on from the number it had reached.
    cat >/bin/counter <<'EOF'
#!/bin/sh
n=0
while :; do
  n=$((n + 1))
  read -r up _ </proc/uptime
  echo "L2-TICK pid=$$ n=$n up=$up"
  sleep 1
done
EOF
    chmod +x /bin/counter
    /bin/counter &
    echo "L2-SHELL-READY"
    sh
    ;;
  shell)
    echo "L2-SHELL-READY"
    sh
    ;;
  poweroff)
    ;;
  reboot)
    echo "L2-REBOOT"
    reboot -f
    ;;
  button)
    insmod /lib/modules/evdev.ko
    insmod /lib/modules/button.ko
    ev=$(grep -A6 'Name="Power Button"' /proc/bus/input/devices | sed -n 's/.*Handlers=.*\(event[0-9]*\).*/\1/p' | head -1)
    if [ -z "$ev" ] || [ ! -c "/dev/input/$ev" ]; then
      echo "L2-BUTTON-MISSING $(grep -c . /proc/bus/input/devices) lines in /proc/bus/input/devices"
    else
      echo "L2-BUTTON-READY dev=$ev"
      # One input event (24 bytes on x86-64): the key press.
      dd if="/dev/input/$ev" of=/dev/null bs=24 count=1 2>/dev/null
      echo "L2-BUTTON-PRESSED"
    fi
    ;;
  *)
    echo "L2-UNKNOWN-MODE '$mode'"
    ;;
esac
echo "L2-POWEROFF"
poweroff -f
