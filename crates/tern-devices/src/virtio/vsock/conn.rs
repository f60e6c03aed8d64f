//! One vsock connection between a guest port and a host UNIX stream: its
//! state, and the credit both ends grant each other (virtio 1.2
//! §5.10.6.3).
//!
//! Host to guest: the guest's last header says how big its receive buffer
//! for the connection is (`buf_alloc`) and how much it has consumed
//! (`fwd_cnt`); the device sends no more than `buf_alloc - (tx_cnt -
//! fwd_cnt)` bytes, so a guest that reads slowly only stops its own
//! connection's socket from being read. Guest to host: the device grants
//! [`BUF_ALLOC`] bytes; what the host socket does not take at once waits
//! in the connection's buffer, and the guest may not send more than the
//! room left (a guest that does is reset). Bytes count as forwarded once
//! the host socket took them, so a slow host reader holds up only the
//! guest's sender on this connection.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::packet::Header;

/// Receive buffer the device grants each connection, guest to host.
pub const BUF_ALLOC: u32 = 256 << 10;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// The host asked for a guest port (`CONNECT`); the REQUEST waits for
    /// the guest's RESPONSE or RST.
    HostConnecting {
        /// When the host asked.
        since: Instant,
    },
    /// Data flows both ways (until a shutdown).
    Established,
}

/// Why data from the guest was not taken.
#[derive(Debug)]
pub enum GuestWrite {
    /// The guest sent more than the credit it was given.
    CreditExceeded {
        /// Bytes sent.
        len: usize,
        /// Room that was left.
        room: usize,
    },
    /// The host end is gone (or failed).
    Closed(std::io::Error),
}

/// What reading the host socket for the guest gave.
#[derive(Debug)]
pub enum HostRead {
    /// This many bytes.
    Data(usize),
    /// Nothing now.
    WouldBlock,
    /// The host will send no more.
    Eof,
    /// The socket failed.
    Failed(std::io::Error),
}

/// One connection.
#[derive(Debug)]
pub struct Conn {
    /// The host end.
    pub stream: UnixStream,
    /// The host's port (the guest sees it as the peer's port).
    pub local_port: u32,
    /// The guest's port.
    pub peer_port: u32,
    /// Where it is.
    pub state: State,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes sent to the guest (wrapping, like the counters it is
    /// compared with).
    tx_cnt: u32,
    /// Bytes from the guest the host socket has not taken yet.
    pending: VecDeque<u8>,
    /// Bytes from the guest the host socket took (wrapping).
    fwd_cnt: u32,
    /// `fwd_cnt` as last told to the guest.
    fwd_cnt_sent: u32,
    /// SHUTDOWN flags the guest sent.
    pub guest_shutdown: u32,
    /// The host side shut its writing half (or closed): no more to read.
    pub host_eof: bool,
    /// The host closed both halves (EPOLLHUP): what is still in the
    /// socket is read, then the connection is reset.
    pub host_gone: bool,
    /// The host socket's write half is to be shut once `pending` drains
    /// (the guest sent SHUTDOWN with SEND).
    pub shut_write_pending: bool,
    /// On the device's ready list.
    pub queued: bool,
}

impl Conn {
    /// A connection over `stream` between host port `local_port` and
    /// guest port `peer_port`.
    pub fn new(stream: UnixStream, local_port: u32, peer_port: u32, state: State) -> Conn {
        Conn {
            stream,
            local_port,
            peer_port,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            pending: VecDeque::new(),
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            guest_shutdown: 0,
            host_eof: false,
            host_gone: false,
            shut_write_pending: false,
            queued: false,
        }
    }

    /// Takes the credit the guest's header announces.
    pub fn update_peer(&mut self, h: &Header) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = h.fwd_cnt;
    }

    /// Bytes the guest can take now. A guest whose counters say it holds
    /// more than its buffer (it shrank it, or lies) gets nothing.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether the host socket should be read for the guest now.
    pub fn wants_read(&self) -> bool {
        self.state == State::Established
            && !self.host_eof
            && self.guest_shutdown & super::packet::SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
    }

    /// Whether bytes wait for the host socket.
    pub fn wants_write(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Bytes waiting for the host socket.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Fills in the device's credit fields of `h` (every packet to the
    /// guest carries them) and remembers what the guest was told.
    pub fn stamp(&mut self, h: &mut Header) {
        h.buf_alloc = BUF_ALLOC;
        h.fwd_cnt = self.fwd_cnt;
        self.fwd_cnt_sent = self.fwd_cnt;
    }

    /// Whether the guest should be told about forwarded bytes now: once a
    /// quarter of the buffer was forwarded since it last heard, so a
    /// sender that only sends never runs dry.
    pub fn credit_update_due(&self) -> bool {
        self.fwd_cnt.wrapping_sub(self.fwd_cnt_sent) >= BUF_ALLOC / 4
    }

    /// Takes `data` the guest sent: straight into the host socket when
    /// nothing waits before it, the rest into the buffer.
    pub fn take_from_guest(&mut self, data: &[u8]) -> Result<(), GuestWrite> {
        let room = BUF_ALLOC as usize - self.pending.len().min(BUF_ALLOC as usize);
        if data.len() > room {
            return Err(GuestWrite::CreditExceeded {
                len: data.len(),
                room,
            });
        }
        let mut done = 0;
        if self.pending.is_empty() {
            done = write_some(&mut self.stream, data).map_err(GuestWrite::Closed)?;
            self.fwd_cnt = self.fwd_cnt.wrapping_add(done as u32);
        }
        self.pending.extend(&data[done..]);
        Ok(())
    }

    /// Writes what waits to the host socket until it would block; then
    /// shuts the socket's write half if the guest asked for it.
    pub fn flush(&mut self) -> std::io::Result<()> {
        while !self.pending.is_empty() {
            let n = write_some(&mut self.stream, self.pending.make_contiguous())?;
            self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
            if n == 0 {
                break;
            }
            self.pending.drain(..n);
        }
        if self.pending.is_empty() && self.shut_write_pending {
            self.shut_write_pending = false;
            // The peer may have gone already; nothing is lost then.
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }

    /// Reads up to `buf.len()` bytes (the caller keeps it within the
    /// guest's credit) for the guest; counts them as sent.
    pub fn read_for_guest(&mut self, buf: &mut [u8]) -> HostRead {
        loop {
            return match self.stream.read(buf) {
                Ok(0) => {
                    self.host_eof = true;
                    HostRead::Eof
                }
                Ok(n) => {
                    self.tx_cnt = self.tx_cnt.wrapping_add(n as u32);
                    HostRead::Data(n)
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => HostRead::WouldBlock,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => HostRead::Failed(e),
            };
        }
    }
}

/// Writes what `stream` takes now (a non-blocking socket).
fn write_some(stream: &mut UnixStream, data: &[u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < data.len() {
        match stream.write(&data[done..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Longest `CONNECT <port>\n` line a host may send.
pub const MAX_CONNECT_LINE: usize = 32;

/// Parses the host's `CONNECT <port>` line (without its newline).
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let port = text.strip_prefix("CONNECT ")?.trim_end_matches('\r');
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

/// A host connection that has not finished its `CONNECT` line.
#[derive(Debug)]
pub struct HostHandshake {
    /// The host end.
    pub stream: UnixStream,
    /// What it sent so far.
    pub line: Vec<u8>,
    /// When it connected.
    pub since: Instant,
}

/// What reading a handshake gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Handshake {
    /// Not finished yet.
    More,
    /// `CONNECT <port>`.
    Port(u32),
    /// A line that is not `CONNECT <port>`, too long, or the host left.
    Bad,
}

impl HostHandshake {
    /// Reads what the host sent, one byte at a time so nothing after the
    /// newline (the stream's data) is taken here.
    pub fn read(&mut self) -> Handshake {
        let mut b = [0u8; 1];
        loop {
            match self.stream.read(&mut b) {
                Ok(0) => return Handshake::Bad,
                Ok(_) if b[0] == b'\n' => {
                    return parse_connect(&self.line).map_or(Handshake::Bad, Handshake::Port)
                }
                Ok(_) if self.line.len() >= MAX_CONNECT_LINE => return Handshake::Bad,
                Ok(_) => self.line.push(b[0]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Handshake::More,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Handshake::Bad,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::vsock::packet::{op, SHUTDOWN_RCV};

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
        for bad in [
            &b"CONNECT"[..],
            b"CONNECT ",
            b"CONNECT -1",
            b"CONNECT 99999999999",
            b"connect 5",
            b"CONNECT 5 6",
            b"\xff",
        ] {
            assert_eq!(parse_connect(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn credit_limits_both_directions() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut c = Conn::new(a, 1, 2, State::Established);
        // Nothing before the guest said how big its buffer is.
        assert_eq!(c.peer_credit(), 0);
        assert!(!c.wants_read());
        let mut h = Header::to_guest(3, 1, 2, op::CREDIT_UPDATE);
        h.buf_alloc = 100;
        c.update_peer(&h);
        assert_eq!(c.peer_credit(), 100);
        b.write_all(&[7u8; 150]).unwrap();
        let mut buf = [0u8; 60];
        assert!(matches!(c.read_for_guest(&mut buf), HostRead::Data(60)));
        assert_eq!(c.peer_credit(), 40);
        h.fwd_cnt = 60;
        c.update_peer(&h);
        assert_eq!(c.peer_credit(), 100);
        // A guest claiming to have consumed more than was sent gets none.
        h.fwd_cnt = 1000;
        c.update_peer(&h);
        assert_eq!(c.peer_credit(), 0);
        h.fwd_cnt = 60;
        c.update_peer(&h);
        c.guest_shutdown = SHUTDOWN_RCV;
        assert!(!c.wants_read());

        // Guest to host: what the socket does not take waits, up to the
        // credit; beyond it the guest is refused.
        let chunk = vec![1u8; 64 << 10];
        let mut sent = 0usize;
        loop {
            match c.take_from_guest(&chunk) {
                Ok(()) => sent += chunk.len(),
                Err(GuestWrite::CreditExceeded { room, .. }) => {
                    assert!(room < chunk.len());
                    break;
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        assert!(c.pending_len() > 0 && c.pending_len() <= BUF_ALLOC as usize);
        let mut h2 = Header::default();
        c.stamp(&mut h2);
        assert_eq!(h2.buf_alloc, BUF_ALLOC);
        assert_eq!(h2.fwd_cnt as usize, sent - c.pending_len());
        // The host reads: the buffer drains into the socket.
        b.set_nonblocking(true).unwrap();
        let mut sink = vec![0u8; 1 << 20];
        let mut got = 0;
        while c.wants_write() || got < sent {
            c.flush().unwrap();
            match b.read(&mut sink) {
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, sent);
        assert!(c.credit_update_due());
    }
}
