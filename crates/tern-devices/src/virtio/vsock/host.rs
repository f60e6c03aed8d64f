//! The host side of the vsock device: the listener, new host streams
//! and their `CONNECT <port>` lines, and readiness of established streams.

use super::*;

impl Vsock {
    /// Handles what the epoll set reports now: new host streams, their
    /// CONNECT lines, streams readable (marked ready) or writable
    /// (flushed), streams the host closed.
    pub(super) fn poll_host(&mut self) {
        let mut events = Vec::with_capacity(64);
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        if let Err(e) = epoll::wait(
            &*self.epoll,
            rustix::buffer::spare_capacity(&mut events),
            Some(&zero),
        ) {
            if e != rustix::io::Errno::INTR {
                self.log(&format!("epoll_wait failed: {e}"));
            }
        }
        for ev in &events {
            let token = ev.data.u64();
            let flags = ev.flags;
            self.handle.stats.progress.fetch_add(1, Ordering::Relaxed);
            if token == LISTENER {
                self.accept();
            } else if self.handshakes.contains_key(&token) {
                self.handshake(token);
            } else if self.conns.contains_key(&token) {
                self.host_event(token, flags);
            }
        }
    }

    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and the like: the host retries; the backlog
                    // keeps it meanwhile.
                    self.log(&format!("accept on {} failed: {e}", self.socket.display()));
                    return;
                }
            };
            if self.handshakes.len() >= MAX_HANDSHAKES
                || self.conns.len() >= MAX_CONNECTIONS
                || stream.set_nonblocking(true).is_err()
            {
                self.handle.stats.refused.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let token = self.token();
            if epoll::add(
                &*self.epoll,
                &stream,
                epoll::EventData::new_u64(token),
                epoll::EventFlags::IN,
            )
            .is_err()
            {
                continue;
            }
            self.handshakes.insert(
                token,
                HostHandshake {
                    stream,
                    line: Vec::new(),
                    since: Instant::now(),
                },
            );
            // The line may be there already.
            self.handshake(token);
        }
    }

    /// Reads a host stream's CONNECT line; once complete, asks the guest.
    fn handshake(&mut self, token: u64) {
        let Some(h) = self.handshakes.get_mut(&token) else {
            return;
        };
        let port = match h.read() {
            Handshake::More => return,
            Handshake::Bad => {
                self.handle.stats.refused.fetch_add(1, Ordering::Relaxed);
                if let Some(h) = self.handshakes.remove(&token) {
                    let _ = epoll::delete(&*self.epoll, &h.stream);
                }
                return;
            }
            Handshake::Port(p) => p,
        };
        let Some(h) = self.handshakes.remove(&token) else {
            return;
        };
        let _ = epoll::delete(&*self.epoll, &h.stream);
        if self.conns.len() >= MAX_CONNECTIONS {
            self.handle.stats.refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let local = self.local_port(port);
        let c = Conn::new(
            h.stream,
            local,
            port,
            State::HostConnecting {
                since: Instant::now(),
            },
        );
        if let Some(t) = self.add_conn(c) {
            self.queue_control(t, op::REQUEST, 0);
        }
    }

    /// A host stream of an open connection is readable, writable or gone.
    fn host_event(&mut self, token: u64, flags: epoll::EventFlags) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        if flags.intersects(epoll::EventFlags::HUP | epoll::EventFlags::ERR) && !c.host_gone {
            // Reported whatever the interest: take the stream out of the
            // set and read what is left in it (as the guest's credit
            // allows), then reset.
            c.host_gone = true;
            let _ = epoll::delete(&*self.epoll, &c.stream);
            if c.state != State::Established || c.host_eof {
                self.reset_conn(token);
                return;
            }
        }
        if flags.contains(epoll::EventFlags::OUT) {
            if c.flush().is_err() {
                self.reset_conn(token);
                return;
            }
            if !c.wants_write() {
                // The buffer drained: say so, the guest may be waiting.
                self.queue_control(token, op::CREDIT_UPDATE, 0);
            }
        }
        self.mark_ready(token);
        self.sync_interest(token);
    }
}
