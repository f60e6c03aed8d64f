//! Packets from the guest: checked, then dispatched to the connection
//! they belong to (or a new connection to a host socket).

use super::*;

impl Vsock {
    pub(super) fn bad(&mut self, e: &str) {
        self.handle
            .stats
            .bad_packets
            .fetch_add(1, Ordering::Relaxed);
        self.log(e);
    }

    pub(super) fn packet_from_guest(
        &mut self,
        r: &mut Reader<'_, impl vm_memory::bitmap::BitmapSlice>,
    ) {
        let n = r.available_bytes();
        let mut hb = [0u8; HDR_LEN];
        if n < HDR_LEN || r.read_exact(&mut hb).is_err() {
            return self.bad(&packet::BadHeader::Short(n).to_string());
        }
        let h = Header::decode(&hb);
        if let Err(e) = h.check_from_guest(self.cid, n - HDR_LEN) {
            return self.bad(&format!("TX packet dropped: {e}"));
        }
        let len = h.len as usize;
        if len > 0 && r.read_exact(&mut self.scratch[..len]).is_err() {
            return self.bad("TX payload unreadable");
        }
        self.handle_guest(&h);
    }

    /// Acts on one checked packet from the guest (payload in scratch).
    fn handle_guest(&mut self, h: &Header) {
        let key = (h.dst_port, h.src_port);
        let Some(&token) = self.by_ports.get(&key) else {
            match h.op {
                op::REQUEST => self.guest_connect(h),
                op::RST => {}
                _ => self.control.push_back(Header::to_guest(
                    self.cid,
                    h.dst_port,
                    h.src_port,
                    op::RST,
                )),
            }
            return;
        };
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        c.update_peer(h);
        let connecting = matches!(c.state, State::HostConnecting { .. });
        match h.op {
            op::RESPONSE if connecting => {
                c.state = State::Established;
                let line = format!("OK {}\n", c.local_port);
                // A fresh socket has room for a line; one without is
                // broken.
                if c.stream.write_all(line.as_bytes()).is_err() {
                    return self.reset_conn(token);
                }
                self.handle
                    .stats
                    .host_connections
                    .fetch_add(1, Ordering::Relaxed);
                self.sync_interest(token);
                self.mark_ready(token);
            }
            op::RST if connecting => {
                // Nobody listens in the guest: the host's stream closes
                // without an answer.
                self.handle.stats.refused.fetch_add(1, Ordering::Relaxed);
                self.remove(token);
            }
            op::RST => {
                self.remove(token);
            }
            _ if connecting => self.reset_conn(token),
            op::RW => {
                let len = h.len as usize;
                self.handle
                    .stats
                    .tx_bytes
                    .fetch_add(len as u64, Ordering::Relaxed);
                let r = c.take_from_guest(&self.scratch[..len]);
                match r {
                    Ok(()) => {}
                    Err(GuestWrite::CreditExceeded { len, room }) => {
                        self.handle
                            .stats
                            .credit_violations
                            .fetch_add(1, Ordering::Relaxed);
                        self.log(&format!(
                            "guest sent {len} bytes with {room} of credit left: connection reset"
                        ));
                        return self.reset_conn(token);
                    }
                    Err(GuestWrite::Closed(_)) => return self.reset_conn(token),
                }
                if self
                    .conns
                    .get(&token)
                    .is_some_and(|c| c.credit_update_due())
                {
                    self.queue_control(token, op::CREDIT_UPDATE, 0);
                }
                // Its header may have brought credit back too.
                self.mark_ready(token);
                self.sync_interest(token);
            }
            op::CREDIT_REQUEST => {
                self.queue_control(token, op::CREDIT_UPDATE, 0);
                self.mark_ready(token);
                self.sync_interest(token);
            }
            op::CREDIT_UPDATE => {
                // Credit may have come back: read again.
                self.mark_ready(token);
                self.sync_interest(token);
            }
            op::SHUTDOWN => {
                c.guest_shutdown |= h.flags;
                let both = SHUTDOWN_RCV | SHUTDOWN_SEND;
                if c.guest_shutdown & both == both
                    || (c.guest_shutdown & SHUTDOWN_SEND != 0 && c.host_eof)
                {
                    // Nothing more either way: what waits is written if
                    // the socket takes it now, then the connection ends.
                    let _ = c.flush();
                    return self.reset_conn(token);
                }
                if h.flags & SHUTDOWN_SEND != 0 {
                    c.shut_write_pending = true;
                    if c.flush().is_err() {
                        return self.reset_conn(token);
                    }
                }
                self.sync_interest(token);
            }
            // REQUEST or RESPONSE on an open connection.
            _ => self.reset_conn(token),
        }
    }

    /// The guest connects to host port `h.dst_port`: `<socket>_<port>`.
    fn guest_connect(&mut self, h: &Header) {
        let refuse = |s: &mut Self| {
            s.handle.stats.refused.fetch_add(1, Ordering::Relaxed);
            s.control
                .push_back(Header::to_guest(s.cid, h.dst_port, h.src_port, op::RST));
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            return refuse(self);
        }
        let mut path = self.socket.clone().into_os_string();
        path.push(format!("_{}", h.dst_port));
        let Ok(stream) = connect_nonblocking(Path::new(&path)) else {
            return refuse(self);
        };
        let mut c = Conn::new(stream, h.dst_port, h.src_port, State::Established);
        c.update_peer(h);
        if let Some(t) = self.add_conn(c) {
            self.handle
                .stats
                .guest_connections
                .fetch_add(1, Ordering::Relaxed);
            self.queue_control(t, op::RESPONSE, 0);
        } else {
            refuse(self);
        }
    }
}
