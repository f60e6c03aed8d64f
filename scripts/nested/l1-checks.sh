#!/bin/sh
# The nested tier's checks, run by L1's /init (busybox sh) with Tern on L1's
# real /dev/kvm. Each check reports one line on the console:
#   TIER-CHECK NAME PASS|FAIL|SKIP DETAIL
# Every L2 console log is streamed out after its run as TIER-L2 RUN| LINE
# (the host scans them for kernel warnings); TIER-INFO lines are context.
# Environment: KVM=1 when /dev/kvm exists, ONLY=group,group (empty: all).
# The groups and check names are in checks.txt (copied to /tier).
. /tier/env
K=/tier/vmlinuz
I=/tier/l2.cpio
MEM=256M
PIDS=

check() { echo "TIER-CHECK $1 $2 $3"; }

selected() {
  [ -z "$ONLY" ] && return 0
  case ",$ONLY," in *",$1,"*) return 0 ;; esac
  return 1
}

# Every check of GROUP as SKIP, with a reason.
skip_group() {
  grep -v '^#' /tier/checks.txt | while read -r g name _; do
    [ "$g" = "$1" ] && check "$name" SKIP "$2"
  done
}

# stream RUN FILE: an L2 console log, out to the host.
stream() {
  [ -f "$2" ] || return 0
  tr -d '\r' <"$2" | sed "s/^/TIER-L2 $1| /"
  echo
}

# info RUN FILE: a worker's own messages (stderr), as context.
info_file() {
  [ -f "$2" ] || return 0
  sed "s/^/TIER-INFO $1: /" "$2"
}

# wait_for FILE PATTERN SECONDS [PID]: until FILE holds PATTERN (an extended
# regular expression); gives up early when PID has exited.
wait_for() {
  _i=0
  while [ $_i -lt $(($3 * 10)) ]; do
    grep -aqE -- "$2" "$1" 2>/dev/null && return 0
    if [ -n "$4" ] && ! kill -0 "$4" 2>/dev/null; then
      grep -aqE -- "$2" "$1" 2>/dev/null
      return
    fi
    usleep 100000
    _i=$((_i + 1))
  done
  return 1
}

# wait_exit PID SECONDS: sets RC to the exit status (124: still running after
# SECONDS, then killed).
wait_exit() {
  _i=0
  while kill -0 "$1" 2>/dev/null && [ $_i -lt $(($2 * 10)) ]; do
    usleep 100000
    _i=$((_i + 1))
  done
  if kill -0 "$1" 2>/dev/null; then
    kill -9 "$1" 2>/dev/null
    wait "$1" 2>/dev/null
    RC=124
  else
    wait "$1"
    RC=$?
  fi
}

# field LINE KEY: the value of KEY=VALUE in LINE.
field() { echo "$1" | sed -n "s/.* $2=\([^ ]*\).*/\1/p"; }

# Uptime "12.34" -> centiseconds.
cs() {
  _w=${1%.*}
  _f=${1#*.}
  _f=${_f#0}
  echo $((_w * 100 + _f))
}

probe_checks() {
  out=/tmp/probe
  mkdir -p $out
  # The CPUID dump (KVM's supported set and what the guest gets) goes out
  # with the worker's messages: the captured L1 set of the CPUID tests.
  TERN_LOG=info,tern_vmm::cpuid=debug timeout 120 tern run --guest probe:hello \
    --serial file:$out/con --control $out/ctl >$out/out 2>$out/err
  rc=$?
  info_file probe $out/err
  if [ $rc -eq 0 ]; then
    check probe-hello PASS "tern run --guest probe:hello exited 0: $(grep -a '\[probe\]' $out/err | tail -1)"
  else
    check probe-hello FAIL "tern run --guest probe:hello exited $rc: $(tail -1 $out/err)"
  fi
}

blk_checks() {
  d=/tmp/blk
  mkdir -p $d
  truncate -s 64M $d/raw.img
  if ! tern disk create --size 64M --type dynamic $d/dyn.vhdx >$d/create.out 2>&1; then
    for c in l2-boot-1vcpu blk-raw blk-vhdx vhdx-tern-check vhdx-qemu-img-check; do
      check $c FAIL "tern disk create --type dynamic failed: $(tail -1 $d/create.out)"
    done
    return
  fi
  timeout 240 tern run --kernel $K --initrd $I --cmdline "$L2_CMDLINE tier.mode=blk" --memory $MEM \
    --disk path=$d/raw.img --disk path=$d/dyn.vhdx \
    --serial file:$d/con --control $d/ctl >$d/out 2>$d/err
  rc=$?
  stream blk $d/con
  info_file blk $d/err
  init=$(tr -d '\r' <$d/con | grep -a '^L2-INIT' | head -1)
  if [ -z "$init" ]; then
    check l2-boot-1vcpu FAIL "the guest never reached /init (worker exit $rc)"
  elif [ "$(field "$init" nproc)" = 1 ]; then
    check l2-boot-1vcpu PASS "reached /init at $(field "$init" up) s of guest uptime; guest counts nproc=1"
  else
    check l2-boot-1vcpu FAIL "guest counts nproc=$(field "$init" nproc) with --vcpus 1"
  fi
  echo "TIER-INFO blk: $(tr -d '\r' <$d/con | grep -a '^L2-VIRTIO' | head -1)"
  for dev in vda vdb; do
    if [ $dev = vda ]; then name=blk-raw; file=$d/raw.img; else name=blk-vhdx; file=$d/dyn.raw; fi
    line=$(tr -d '\r' <$d/con | grep -a "^L2-BLK dev=$dev " | head -1)
    errs=$(tr -d '\r' <$d/con | grep -a "^L2-BLK-ERR dev=$dev " | tr '\n' ' ')
    if [ $dev = vdb ]; then
      # The oracle reads the VHDX back: qemu-img, not Tern.
      if ! qemu-img convert -f vhdx -O raw $d/dyn.vhdx $file >$d/convert.out 2>&1; then
        check $name FAIL "qemu-img convert of the VHDX failed: $(tail -1 $d/convert.out)"
        continue
      fi
    fi
    w=$(field "$line" wrote)
    if [ -z "$line" ] || [ -z "$w" ]; then
      check $name FAIL "no result from the guest for /dev/$dev (worker exit $rc) $errs"
      continue
    fi
    h0=$(dd if=$file bs=1M count=8 2>/dev/null | sha256sum | cut -d' ' -f1)
    h40=$(dd if=$file bs=1M skip=40 count=8 2>/dev/null | sha256sum | cut -d' ' -f1)
    sectors=$(field "$line" sectors)
    why=
    [ "$sectors" = 131072 ] || why="$why guest sees $sectors sectors, not 131072;"
    [ "$(field "$line" read0)" = "$w" ] || why="$why guest read back other data at 0;"
    [ "$(field "$line" read40)" = "$w" ] || why="$why guest read back other data at 40M;"
    [ "$h0" = "$w" ] || why="$why the file holds other data at 0 than the guest wrote;"
    [ "$h40" = "$w" ] || why="$why the file holds other data at 40M than the guest wrote;"
    [ -z "$errs" ] || why="$why $errs"
    [ $rc -eq 0 ] || why="$why worker exited $rc;"
    if [ -z "$why" ]; then
      check $name PASS "/dev/$dev: 2x8 MiB written and read back by virtio_blk, sha256 ${w%"${w#????????????}"}... matches in the guest and in the file"
    else
      check $name FAIL "/dev/$dev:$why"
    fi
  done
  # Checking a VHDX nobody wrote proves little: both checks need the guest's.
  if ! tr -d '\r' <$d/con | grep -aq "^L2-BLK dev=vdb sectors="; then
    check vhdx-tern-check FAIL "the guest wrote nothing to the VHDX (see blk-vhdx)"
    check vhdx-qemu-img-check FAIL "the guest wrote nothing to the VHDX (see blk-vhdx)"
    rm -f $d/raw.img $d/dyn.raw
    return
  fi
  if tern disk check $d/dyn.vhdx >$d/tcheck.out 2>&1; then
    check vhdx-tern-check PASS "$(tail -1 $d/tcheck.out)"
  else
    check vhdx-tern-check FAIL "$(tr '\n' ' ' <$d/tcheck.out)"
  fi
  if ! command -v qemu-img >/dev/null; then
    check vhdx-qemu-img-check SKIP "no qemu-img in L1 (the host has none)"
  elif qemu-img check -f vhdx $d/dyn.vhdx >$d/qcheck.out 2>&1; then
    check vhdx-qemu-img-check PASS "$(tail -1 $d/qcheck.out)"
  else
    check vhdx-qemu-img-check FAIL "$(tr '\n' ' ' <$d/qcheck.out)"
  fi
  rm -f $d/raw.img $d/dyn.raw
}

# The peer: QEMU with KVM boots the same L2 (kernel, initramfs, command
# line, memory) in this same L1. Its console is the host's oracle for
# l2-no-kernel-warning: a kernel warning its guest prints as well comes from
# this emulated L1, not from Tern.
peer_checks() {
  d=/tmp/peer
  mkdir -p $d
  if ! command -v qemu-system-x86_64 >/dev/null; then
    check qemu-peer-boot SKIP "no qemu-system-x86_64 in L1 (build.sh --with-qemu puts it there)"
    return
  fi
  dmesg >$d/dmesg.before
  timeout 300 qemu-system-x86_64 -machine q35 -accel kvm -cpu host -m $MEM -smp 1 \
    -nodefaults -no-user-config -display none -serial file:$d/con -no-reboot \
    -L /usr/share/qemu -kernel $K -initrd $I -append "$L2_CMDLINE tier.mode=poweroff" >$d/out 2>$d/err
  RC=$?
  # What L1's kernel logged while the peer ran is the peer's (nothing else
  # runs meanwhile): msr_check leaves it out.
  dmesg | grep -vxFf $d/dmesg.before >$d/dmesg.during
  stream peer-qemu $d/con
  info_file peer-qemu $d/err
  init=$(tr -d '\r' <$d/con | grep -a '^L2-INIT' | head -1)
  if [ -n "$init" ]; then
    check qemu-peer-boot PASS "$(qemu-system-x86_64 --version | head -1 | sed 's/ (.*//'), q35 with KVM, reached /init at $(field "$init" up) s of guest uptime (exit $RC)"
  else
    check qemu-peer-boot FAIL "QEMU's guest never reached /init (exit $RC): $(tail -1 $d/err)"
  fi
}

# The compat CPU model (docs/cpu-models.md) boots Linux: no XSAVE, no
# leaf-7 features, the x86-64-v2 baseline.
cpu_checks() {
  d=/tmp/compat
  mkdir -p $d
  timeout 300 tern run --kernel $K --initrd $I --cmdline "$L2_CMDLINE tier.mode=poweroff" --memory $MEM \
    --cpu-model compat --serial file:$d/con --control $d/ctl >$d/out 2>$d/err
  RC=$?
  stream compat $d/con
  info_file compat $d/err
  init=$(tr -d '\r' <$d/con | grep -a '^L2-INIT' | head -1)
  flags=$(tr -d '\r' <$d/con | grep -a '^L2-CPUFLAGS' | head -1)
  if [ -z "$init" ]; then
    check l2-boot-compat FAIL "--cpu-model compat: the guest never reached /init (worker exit $RC)"
  elif [ $RC -ne 0 ]; then
    check l2-boot-compat FAIL "--cpu-model compat: reached /init but the worker exited $RC"
  else
    check l2-boot-compat PASS "--cpu-model compat: /init at $(field "$init" up) s of guest uptime, powered off (exit 0)"
  fi
}

# Online resize and a QoS cap, seen from inside the guest: vda grows from
# 64 to 96 MiB while the guest runs (the control socket's disk-resize, as a
# user would send it); vdb is capped at 2 MiB/s and the guest times 8 MiB of
# direct reads on each disk.
blklive_checks() {
  d=/tmp/blklive
  mkdir -p $d
  truncate -s 64M $d/a.img $d/b.img
  cap=2097152
  tern run --kernel $K --initrd $I --cmdline "$L2_CMDLINE tier.mode=blklive" --memory $MEM \
    --disk path=$d/a.img --disk path=$d/b.img,max-bw=$cap \
    --serial file:$d/con --control $d/ctl >$d/out 2>$d/err &
  w=$!
  PIDS="$PIDS $w"
  resized=
  if wait_for $d/con '^L2-(LIVE-READY|BLK missing)' 240 $w &&
    tr -d '\r' <$d/con | grep -aq '^L2-LIVE-READY'; then
    # The worker's documented wire: one JSON request per line.
    printf '{"cmd":"disk-resize","disk":0,"size":100663296}\n' |
      socat -t 10 - UNIX-CONNECT:$d/ctl >$d/resize.out 2>&1
    resized=$(cat $d/resize.out)
  fi
  wait_for $d/con '^L2-BLK-DONE' 180 $w
  wait_exit $w 120
  stream blklive $d/con
  info_file blklive $d/err
  con=$(tr -d '\r' <$d/con)
  line=$(echo "$con" | grep -a '^L2-RESIZE ' | head -1)
  if [ "$(field "$line" sectors)" = 196608 ]; then
    check blk-resize-seen PASS "/sys/block/vda/size went 131072 -> 196608 while the guest ran ($(field "$line" waited) after the request; worker said: $resized)"
  else
    check blk-resize-seen FAIL "guest: ${line:-no L2-RESIZE line}; worker said: ${resized:-nothing (the guest never got ready)}; exit $RC"
  fi
  rate() {
    l=$(echo "$con" | grep -a "^L2-RATE dev=$1 " | head -1)
    [ -n "$l" ] || return 1
    t=$(($(cs "$(field "$l" t1)") - $(cs "$(field "$l" t0)")))
    [ $t -gt 0 ] || t=1
    echo $((8388608 * 100 / t))
  }
  free=$(rate vda)
  capped=$(rate vdb)
  if [ -z "$capped" ] || [ -z "$free" ]; then
    check blk-qos-cap FAIL "no timing from the guest (exit $RC)"
  elif [ "$free" -lt $((cap * 3 / 2)) ]; then
    check blk-qos-cap SKIP "the uncapped disk reads only $free B/s here, too close to the $cap B/s cap to tell it holds"
  elif [ "$capped" -le $((cap * 115 / 100)) ]; then
    check blk-qos-cap PASS "capped at $cap B/s: the guest read $capped B/s (uncapped disk: $free B/s)"
  else
    check blk-qos-cap FAIL "capped at $cap B/s, the guest read $capped B/s (uncapped disk: $free B/s)"
  fi
  rm -f $d/a.img $d/b.img
}

console_checks() {
  d=/tmp/console
  mkdir -p $d
  tern run --kernel $K --initrd $I --cmdline "$L2_CMDLINE tier.mode=shell" --memory $MEM \
    --serial socket:$d/sock --control $d/ctl >$d/out 2>$d/err &
  w=$!
  PIDS="$PIDS $w"
  # A reading client from the start (output before it connects is lost).
  socat -u UNIX-CONNECT:$d/sock,retry=300,interval=0.1 CREATE:$d/con 2>$d/socat.err &
  r=$!
  verdict=FAIL
  if ! wait_for $d/con '^L2-SHELL-READY' 180 $w; then
    why="the guest's shell never came up"
  else
    sleep 1
    # The guest's shell must evaluate this (the answer is not in the input).
    printf 'echo CONSOLE-$((6*7))-OK\n' | socat -u STDIN UNIX-CONNECT:$d/sock 2>>$d/socat.err
    if wait_for $d/con 'CONSOLE-42-OK' 30 $w; then
      verdict=PASS
      why="a line typed on the console socket ran in the guest's shell"
    else
      why="typed 'echo CONSOLE-\$((6*7))-OK' on the console socket; the guest never answered"
    fi
    printf 'poweroff -f\n' | socat -u STDIN UNIX-CONNECT:$d/sock 2>>$d/socat.err
  fi
  wait_exit $w 60
  [ $RC -eq 0 ] || why="$why; worker exit $RC"
  [ $RC -eq 0 ] || verdict=FAIL
  kill $r 2>/dev/null
  wait $r 2>/dev/null
  stream console $d/con
  info_file console $d/err
  check serial-console-input $verdict "$why"
}

# --- save/restore and migration: one guest lineage, a fresh boot only where
# a step failed (so each step's verdict is its own).

LC=/tmp/lc
# The lifecycle guests have 2 vCPUs: every vCPU's state (the APs' too) must
# survive a save and the migrations.
LC_VCPUS=2
# last_tick FILE: "pid n up" of the last complete counter line.
last_tick() {
  tr -d '\r' <"$1" | grep -aE '^L2-TICK pid=[0-9]+ n=[0-9]+ up=[0-9]+\.[0-9]+$' | tail -1 |
    sed 's/^L2-TICK pid=\([0-9]*\) n=\([0-9]*\) up=\([0-9.]*\)$/\1 \2 \3/'
}

# boot_counter RUN [--memfd]: a fresh counter guest; sets CUR_* (empty CUR_PID
# when it did not come up).
boot_counter() {
  run=$1
  shift
  tern run --kernel $K --initrd $I --cmdline "$L2_CMDLINE tier.mode=counter" --memory $MEM --vcpus $LC_VCPUS "$@" \
    --serial file:$LC/$run.con --control $LC/$run.ctl >$LC/$run.out 2>$LC/$run.err &
  CUR_PID=$!
  PIDS="$PIDS $CUR_PID"
  CUR_RUN=$run
  if ! wait_for $LC/$run.con '^L2-TICK pid=[0-9]+ n=3 ' 180 $CUR_PID; then
    echo "TIER-INFO counter guest $run did not come up"
    stop_current
  fi
}

stop_current() {
  [ -n "$CUR_PID" ] || return 0
  kill "$CUR_PID" 2>/dev/null
  wait_exit "$CUR_PID" 20
  stream "$CUR_RUN" "$LC/$CUR_RUN.con"
  info_file "$CUR_RUN" "$LC/$CUR_RUN.err"
  CUR_PID=
}

# continues NAME OLD_RUN NEW_RUN NEW_PID: the counter of OLD_RUN's guest
# goes on in NEW_RUN: same process, next numbers, uptime continuing, no boot.
# Reports NAME and returns 0 on PASS.
continues() {
  name=$1
  old=$LC/$2.con
  new=$LC/$3.con
  set -- $(last_tick "$old") "$4"
  p0=$1 n0=$2 up0=$3 pid=$4
  if [ -z "$up0" ]; then
    check "$name" FAIL "no counter output from the source"
    return 1
  fi
  if ! wait_for "$new" "^L2-TICK pid=$p0 n=$((n0 + 3)) " 90 "$pid"; then
    got=$(last_tick "$new")
    check "$name" FAIL "counter pid $p0 was at n=$n0; afterwards: ${got:-no counter output} (want pid $p0, n=$((n0 + 3)) within 90 s)"
    return 1
  fi
  first=$(tr -d '\r' <"$new" | grep -aE '^L2-TICK pid=[0-9]+ n=[0-9]+ up=[0-9]+\.[0-9]+$' | head -1)
  p1=$(field " $first" pid)
  n1=$(field "$first" n)
  up1=$(field "$first" up)
  why=
  [ "$p1" = "$p0" ] || why="$why first counter line is pid $p1, not $p0;"
  [ "$n1" -gt "$n0" ] && [ "$n1" -le $((n0 + 2)) ] || why="$why counter went from $n0 to $n1;"
  gap=$(($(cs "$up1") - $(cs "$up0")))
  [ $gap -ge 0 ] && [ $gap -le 6000 ] || why="$why guest uptime went from $up0 to $up1 s;"
  tr -d '\r' <"$new" | grep -aq '^L2-INIT' && why="$why the guest booted again;"
  if [ -n "$why" ]; then
    check "$name" FAIL "$why"
    return 1
  fi
  check "$name" PASS "pid $p0 counted on from n=$n0 to n=$n1 (uptime $up0 -> $up1 s) and kept counting"
}

# wait_listening RUN PID: until the --incoming worker has written its
# --listening-file (or 30 s).
wait_listening() {
  wait_for "$LC/$1.listening" 'endpoint' 30 "$2" ||
    echo "TIER-INFO $1: no listening file in 30 s; migrating anyway"
}

lifecycle_checks() {
  mkdir -p $LC

  # save and restore
  boot_counter a
  if [ -z "$CUR_PID" ]; then
    check save-restore FAIL "the counter guest did not come up (see TIER-L2 a)"
  else
    src=$CUR_PID
    if tern worker save --control $LC/a.ctl $LC/saved >$LC/save.out 2>&1; then
      wait_exit $src 60
      src_rc=$RC
      stream a $LC/a.con
      info_file a $LC/a.err
      tern run --restore $LC/saved --serial file:$LC/b.con --control $LC/b.ctl >$LC/b.out 2>$LC/b.err &
      CUR_PID=$!
      CUR_RUN=b
      PIDS="$PIDS $CUR_PID"
      if continues save-restore a b $CUR_PID; then
        [ "$src_rc" -eq 0 ] || echo "TIER-INFO saved worker exited $src_rc"
      else
        stop_current
      fi
    else
      check save-restore FAIL "tern worker save failed: $(tr '\n' ' ' <$LC/save.out)"
      stop_current
    fi
  fi

  # migration over TCP into a memfd-backed worker (the next step's source)
  [ -n "$CUR_PID" ] || boot_counter b2
  if [ -z "$CUR_PID" ]; then
    check migrate-tcp FAIL "no source guest (the counter guest did not come up)"
  else
    tern run --incoming tcp:127.0.0.1:47017 --listening-file $LC/c.listening --kernel $K --initrd $I --cmdline "$L2_CMDLINE tier.mode=counter" \
      --memory $MEM --vcpus $LC_VCPUS --memfd --serial file:$LC/c.con --control $LC/c.ctl >$LC/c.out 2>$LC/c.err &
    dst=$!
    PIDS="$PIDS $dst"
    wait_listening c $dst
    if tern migrate --control $LC/$CUR_RUN.ctl --to tcp:127.0.0.1:47017 --json >$LC/m1.out 2>&1; then
      wait_exit "$CUR_PID" 60
      stream "$CUR_RUN" "$LC/$CUR_RUN.con"
      info_file "$CUR_RUN" "$LC/$CUR_RUN.err"
      echo "TIER-INFO migrate-tcp: $(tail -1 $LC/m1.out)"
      old=$CUR_RUN
      CUR_PID=$dst
      CUR_RUN=c
      continues migrate-tcp "$old" c $dst || stop_current
    else
      check migrate-tcp FAIL "tern migrate --to tcp: failed: $(tail -2 $LC/m1.out | tr '\n' ' ')"
      stop_current
      kill $dst 2>/dev/null
      wait_exit $dst 20
      info_file c $LC/c.err
    fi
  fi

  # memfd hand-over on the same host
  [ -n "$CUR_PID" ] || boot_counter c2 --memfd
  if [ -z "$CUR_PID" ]; then
    check migrate-memfd FAIL "no source guest (the counter guest did not come up)"
  else
    tern run --incoming unix:$LC/d.mig --listening-file $LC/d.listening --kernel $K --initrd $I --cmdline "$L2_CMDLINE tier.mode=counter" \
      --memory $MEM --vcpus $LC_VCPUS --memfd --serial file:$LC/d.con --control $LC/d.ctl >$LC/d.out 2>$LC/d.err &
    dst=$!
    PIDS="$PIDS $dst"
    wait_listening d $dst
    if tern migrate --control $LC/$CUR_RUN.ctl --to unix:$LC/d.mig --json >$LC/m2.out 2>&1; then
      wait_exit "$CUR_PID" 60
      stream "$CUR_RUN" "$LC/$CUR_RUN.con"
      info_file "$CUR_RUN" "$LC/$CUR_RUN.err"
      echo "TIER-INFO migrate-memfd: $(tail -1 $LC/m2.out)"
      old=$CUR_RUN
      CUR_PID=$dst
      CUR_RUN=d
      continues migrate-memfd "$old" d $dst
    else
      check migrate-memfd FAIL "tern migrate --to unix: failed: $(tail -2 $LC/m2.out | tr '\n' ' ')"
      kill $dst 2>/dev/null
      wait_exit $dst 20
      info_file d $LC/d.err
    fi
  fi
  stop_current
}

# Two L2 boots serve the five ACPI checks (each boot costs a minute or more
# under the emulator): a 2-vCPU guest waits for its power button and then
# powers off; a 4-vCPU guest reboots through the FADT's reset register.

# count_check NAME RUN N: the guest of RUN reached /init and counts N CPUs.
count_check() {
  init=$(tr -d '\r' </tmp/$2/con | grep -a '^L2-INIT' | head -1)
  if [ -z "$init" ]; then
    check "$1" FAIL "the guest never reached /init with --vcpus $3 (worker exit $RC)"
  elif [ "$(field "$init" nproc)" = "$3" ] && [ "$(field "$init" cpuinfo)" = "$3" ]; then
    check "$1" PASS "reached /init at $(field "$init" up) s of guest uptime; guest counts nproc=$3 ($(tr -d '\r' </tmp/$2/con | grep -a 'smp: Brought up' | head -1 | sed 's/^\[[^]]*\] //'))"
  else
    check "$1" FAIL "--vcpus $3, but the guest counts nproc=$(field "$init" nproc), $(field "$init" cpuinfo) in /proc/cpuinfo"
  fi
}

acpi_checks() {
  # The power button: tern worker power-button -> GED interrupt -> _EVT ->
  # Notify(PWRB) -> the guest's button driver -> an input event; then
  # `poweroff -f` (ACPI S5): the worker exits 0.
  d=/tmp/acpi-button
  mkdir -p $d
  tern run --kernel $K --initrd $I --cmdline "$L2_CMDLINE tier.mode=button" --memory $MEM --vcpus 2 \
    --serial file:$d/con --control $d/ctl >$d/out 2>$d/err &
  w=$!
  PIDS="$PIDS $w"
  why=
  if ! wait_for $d/con '^L2-BUTTON-(READY|MISSING)' 240 $w; then
    why="the guest never got to wait for its power button"
  elif tr -d '\r' <$d/con | grep -aq '^L2-BUTTON-MISSING'; then
    why="the guest has no ACPI power button input device: $(tr -d '\r' <$d/con | grep -a '^L2-BUTTON-MISSING')"
  elif ! tern worker power-button --control $d/ctl >$d/press.out 2>&1; then
    why="tern worker power-button failed: $(tr '\n' ' ' <$d/press.out)"
  elif ! wait_for $d/con '^L2-BUTTON-PRESSED' 60 $w; then
    why="pressed the power button; the guest saw no key press"
  fi
  wait_exit $w 60
  stream acpi-button $d/con
  info_file acpi-button $d/err
  count_check l2-boot-2vcpu acpi-button 2
  if [ -z "$why" ]; then
    check l2-acpi-power-button PASS "tern worker power-button reached the guest's button driver (a KEY_POWER event on $(tr -d '\r' <$d/con | sed -n 's/^L2-BUTTON-READY dev=//p'))"
  else
    check l2-acpi-power-button FAIL "$why (worker exit $RC)"
  fi
  if ! tr -d '\r' <$d/con | grep -aq '^L2-POWEROFF'; then
    check l2-acpi-poweroff FAIL "the guest never got to poweroff (worker exit $RC)"
  elif [ $RC -eq 0 ] && grep -q 'the guest powered off' $d/err; then
    check l2-acpi-poweroff PASS "poweroff -f in a 2-vCPU guest ended the worker with status 0 (ACPI S5): $(tr -d '\r' <$d/con | grep -a 'reboot: Power down' | head -1 | sed 's/^\[[^]]*\] //')"
  else
    check l2-acpi-poweroff FAIL "poweroff -f in the guest: worker exit $RC, $(tail -1 $d/err)"
  fi

  # Reboot through the FADT's reset register (reboot=a): status 80.
  d=/tmp/acpi-reboot
  mkdir -p $d
  timeout 240 tern run --kernel $K --initrd $I --cmdline "$L2_CMDLINE reboot=a tier.mode=reboot" --memory $MEM \
    --vcpus 4 --serial file:$d/con --control $d/ctl >$d/out 2>$d/err
  RC=$?
  stream acpi-reboot $d/con
  info_file acpi-reboot $d/err
  count_check l2-boot-4vcpu acpi-reboot 4
  if ! tr -d '\r' <$d/con | grep -aq '^L2-REBOOT'; then
    check l2-acpi-reboot FAIL "the guest never got to reboot (worker exit $RC)"
  elif [ $RC -eq 80 ]; then
    check l2-acpi-reboot PASS "reboot -f in a 4-vCPU guest (reboot=a: the ACPI reset register) ended the worker with the reboot status 80"
  else
    check l2-acpi-reboot FAIL "reboot -f in the guest: worker exit $RC, not 80: $(tail -1 $d/err)"
  fi
}

# After every L2 of this L1 has run: L1's KVM logged no MSR access it could
# not handle (Tern answers them, its workers' logs say which).
msr_check() {
  # What L1's KVM logged while the QEMU peer ran is not Tern's (QEMU does
  # not answer the AMD counters).
  # (busybox grep -v -f with no pattern drops every line: one that never
  # occurs is always there.)
  { echo 'TERN: no such line'; cat /tmp/peer/dmesg.during 2>/dev/null; } >/tmp/msr.exclude
  unhandled=$(dmesg | grep -vxFf /tmp/msr.exclude | grep -iE 'unhandled (rd|wr)msr|ignored (rd|wr)msr')
  answered=$(cat /tmp/*/*err 2>/dev/null | grep -a 'answered' | sed 's/.*guest \(.*\) answered.*/\1/' | sort -u | tr '\n' ';')
  if [ -n "$unhandled" ]; then
    echo "$unhandled" | sed 's/^/TIER-INFO L1 dmesg: /'
    check l2-no-unhandled-msr FAIL "L1's KVM logged $(echo "$unhandled" | wc -l) unhandled MSR access(es), first: $(echo "$unhandled" | head -1)"
  elif ! ls /tmp/blk/con >/dev/null 2>&1; then
    check l2-no-unhandled-msr SKIP "no L2 guest ran in this L1"
  else
    check l2-no-unhandled-msr PASS "L1's KVM logged no unhandled MSR access; Tern answered: ${answered:-none}"
  fi
}

pending_checks() {
  grep -v '^#' /tier/checks.txt | while read -r g name reason; do
    [ "$g" = pending ] || continue
    check "$name" SKIP "$reason"
  done
}

# run_group GROUP FUNCTION DIR...: runs the group's checks with their
# output held back, then prints it. Under the emulated L1 a guest now and
# then dies in early boot in a triple fault that L1's KVM reports after
# resetting the vCPU (RIP 0xfff0; seen at about 1 in 20 boots, of Tern's and
# of QEMU's guests alike). A group whose checks failed with that crash runs
# once more from clean directories; the first attempt's output still comes
# out (as TIER-RETRY lines) and run.sh lists every retry loudly. A crash that
# comes back fails the group.
run_group() {
  # (sh has no locals: these names must not be any check function's.)
  _rg_group=$1
  _rg_fn=$2
  shift 2
  _rg_out=/tmp/group-$_rg_group.out
  $_rg_fn >$_rg_out 2>&1
  if grep -q '^TIER-CHECK [^ ]* FAIL' $_rg_out && grep -q 'at RIP 0xfff0: triple fault' $_rg_out; then
    echo "TIER-INFO RETRY $_rg_group: $(grep -m1 'at RIP 0xfff0: triple fault' $_rg_out | sed 's/^TIER-INFO //'); the group runs again"
    sed 's/^/TIER-RETRY /' $_rg_out
    rm -rf "$@"
    $_rg_fn >$_rg_out 2>&1
  fi
  cat $_rg_out
  rm -f $_rg_out
}

if [ "$KVM" != 1 ]; then
  for g in probe peer cpu blk blklive acpi console lifecycle; do
    selected $g && skip_group $g "no /dev/kvm in L1 (kvm_amd did not load: QEMU's -cpu max gave no SVM?)"
  done
else
  selected probe && run_group probe probe_checks /tmp/probe
  selected peer && run_group peer peer_checks /tmp/peer
  selected cpu && run_group cpu cpu_checks /tmp/compat
  selected blk && run_group blk blk_checks /tmp/blk
  selected blklive && run_group blklive blklive_checks /tmp/blklive
  selected acpi && run_group acpi acpi_checks /tmp/acpi-button /tmp/acpi-reboot
  selected console && run_group console console_checks /tmp/console
  selected lifecycle && run_group lifecycle lifecycle_checks $LC
  selected blk && msr_check
fi
selected pending && pending_checks
dmesg | grep -i 'kvm\|svm' | sed 's/^/TIER-INFO L1 dmesg: /' | tail -20
# Nothing started here may outlive the checks.
for p in $PIDS; do kill -9 "$p" 2>/dev/null; done
