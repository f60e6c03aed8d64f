//! `net`: brings up a NIC with smoltcp at the step's address, answers
//! ARP and ping (smoltcp's own echo reply), and echoes every byte sent to
//! TCP port `port`, one connection after another, until the VMM sends
//! STOP. Polls without pause: the probe has no interrupts.

use super::Ctx;
use crate::net::{Net, SOCKET_AREA};
use crate::report::report;
use crate::{boot, clock, status};
use smoltcp::iface::{Config, Interface, SocketSet, SocketStorage};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};
use tern_probe_abi::workload::Step;

/// Each TCP socket buffer (receive and send).
const SOCKET_BUF: usize = 256 << 10;
/// Bytes moved from the receive to the send buffer at once.
const CHUNK: usize = 4096;

struct Mac([u8; 6]);

impl core::fmt::Display for Mac {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// Runs `net` until the VMM sends STOP.
pub(super) fn net(ctx: &Ctx, step: &Step) -> bool {
    let hz = ctx.ticks_per_sec().max(1);
    let mut dev = match Net::open(boot::info(), step.nic, hz) {
        Ok(d) => d,
        Err(e) => {
            report!("net nic={} result=fail {e}", step.nic);
            return false;
        }
    };
    let now = || {
        let us = u128::from(clock::now()) * 1_000_000 / u128::from(hz);
        Instant::from_micros(i64::try_from(us).unwrap_or(i64::MAX))
    };
    let mac = dev.mac();
    let mut cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
    cfg.random_seed = clock::now();
    let mut iface = Interface::new(cfg, &mut dev, now());
    let ip = Ipv4Address::from(step.ip);
    iface.update_ip_addrs(|a| {
        // One address into an empty list always fits.
        let _ = a.push(IpCidr::new(IpAddress::Ipv4(ip), step.prefix));
    });
    // SAFETY: the socket area is device memory reserved for this driver's
    // step (see `crate::net`), 2 * SOCKET_BUF plus the storage fit below
    // DATA_BASE (checked here), and nothing else refers to it while the
    // step runs; the slices are dropped before the step returns.
    let (rx_buf, tx_buf, storage) = unsafe {
        const STORAGE: u64 = SOCKET_AREA + 2 * SOCKET_BUF as u64;
        const _: () = assert!(
            STORAGE + 4096 <= tern_probe_abi::DATA_BASE,
            "socket area overflows"
        );
        const _: () = assert!(core::mem::size_of::<[SocketStorage<'static>; 1]>() <= 4096);
        let storage = STORAGE as *mut [SocketStorage<'static>; 1];
        storage.write([SocketStorage::EMPTY]);
        (
            core::slice::from_raw_parts_mut(SOCKET_AREA as *mut u8, SOCKET_BUF),
            core::slice::from_raw_parts_mut(
                (SOCKET_AREA + SOCKET_BUF as u64) as *mut u8,
                SOCKET_BUF,
            ),
            &mut *storage,
        )
    };
    let mut sockets = SocketSet::new(&mut storage[..]);
    let mut sock = tcp::Socket::new(
        tcp::SocketBuffer::new(rx_buf),
        tcp::SocketBuffer::new(tx_buf),
    );
    // An echo answers at once: no Nagle, no delayed ACKs.
    sock.set_nagle_enabled(false);
    sock.set_ack_delay(None);
    let handle = sockets.add(sock);
    let [a, b, c, d] = step.ip.to_be_bytes();
    report!(
        "net up nic={} mac={} ip={a}.{b}.{c}.{d}/{} port={}",
        step.nic,
        Mac(mac),
        step.prefix,
        step.port
    );
    let (mut echoed, mut conns) = (0u64, 0u64);
    let mut was_open = false;
    let mut chunk = [0u8; CHUNK];
    loop {
        iface.poll(now(), &mut dev, &mut sockets);
        let s = sockets.get_mut::<tcp::Socket>(handle);
        if !s.is_open() {
            if was_open {
                was_open = false;
            }
            // Listening on a port that is not 0 on a closed socket cannot fail.
            let _ = s.listen(step.port);
        } else if s.is_active() && !was_open {
            was_open = true;
            conns += 1;
        }
        let mut moved = false;
        while s.can_recv() && s.can_send() {
            let room = s.send_capacity() - s.send_queue();
            let n = room.min(CHUNK);
            if n == 0 {
                break;
            }
            let Ok(k) = s.recv_slice(&mut chunk[..n]) else {
                break;
            };
            if k == 0 {
                break;
            }
            // Fits: `room` bytes were free.
            let _ = s.send_slice(&chunk[..k]);
            echoed += k as u64;
            moved = true;
        }
        if s.state() == tcp::State::CloseWait && s.recv_queue() == 0 {
            s.close();
        }
        if moved {
            iface.poll(now(), &mut dev, &mut sockets);
        }
        dev.flush();
        if status::take_stop() {
            break;
        }
    }
    let n = dev.counters();
    report!(
        "net rx_frames={} tx_frames={} bad_used={} tx_full={} notifies={} connections={conns} echoed={echoed} result=pass",
        n.rx,
        n.tx,
        n.bad_used,
        n.tx_full,
        n.notifies
    );
    true
}
