//! One connection's full feature phase (RFC 7143 11): SCSI commands with
//! Data-In (status in the last PDU), Data-Out solicited by R2T, immediate
//! data, NOP, task management, SendTargets, Logout and Reject.
//!
//! Commands run one at a time, in arrival order: PDUs that arrive while a
//! write waits for its solicited data are queued and handled after it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use tern_scsi::target::lun_from_sam;
use tern_scsi::{NexusId, ScsiTarget, Status};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::login::{Established, SessionType, CMD_WINDOW, OUR_MAX_RECV_DATA};
use crate::pdu::{encode_text, opcode, parse_text, Digests, Pdu, PduError};
use crate::Export;

/// Why a connection ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// Reading or writing a PDU failed.
    #[error("PDU transfer failed")]
    Pdu(#[from] PduError),
    /// The initiator broke the protocol in a way that ends the connection.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A command's worker thread died.
    #[error("SCSI command execution was lost")]
    Lost,
}

/// Reject reasons (RFC 7143 11.17.1).
mod reject {
    pub const DATA_DIGEST: u8 = 0x02;
    pub const PROTOCOL: u8 = 0x04;
    pub const NOT_SUPPORTED: u8 = 0x05;
    pub const INVALID_FIELD: u8 = 0x09;
}

/// The longest transfer (tern-scsi's maximum of 512-byte blocks): room
/// for a READ's overflow residual, and the most data a write may bring.
const MAX_READ_BYTES: usize = tern_scsi::inquiry::MAX_TRANSFER_BLOCKS as usize * 512;

/// Most PDUs queued while a write collects its data.
const MAX_QUEUED: usize = 64;

/// A session in the full feature phase on one connection.
pub struct Session<S> {
    stream: S,
    target: Arc<ScsiTarget>,
    export: Arc<Export>,
    local: Option<SocketAddr>,
    est: Established,
    nexus: NexusId,
    digests: Digests,
    queued: VecDeque<Pdu>,
    next_ttt: u32,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// A session on `stream`, after its login.
    pub fn new(
        stream: S,
        target: Arc<ScsiTarget>,
        export: Arc<Export>,
        local: Option<SocketAddr>,
        est: Established,
    ) -> Session<S> {
        let nexus = NexusId::Iscsi {
            iqn: est.initiator.clone(),
            isid: est.isid,
        };
        let digests = Digests {
            header: est.params.header_digest,
            data: est.params.data_digest,
        };
        Session {
            stream,
            target,
            export,
            local,
            est,
            nexus,
            digests,
            queued: VecDeque::new(),
            next_ttt: 1,
        }
    }

    async fn read(&mut self) -> Result<Pdu, PduError> {
        if let Some(p) = self.queued.pop_front() {
            return Ok(p);
        }
        Pdu::read(&mut self.stream, self.digests, OUR_MAX_RECV_DATA as usize).await
    }

    /// Stamps the sequence numbers and sends `p`; `status` PDUs take a
    /// StatSN.
    async fn send(&mut self, mut p: Pdu, status: bool) -> Result<(), ConnError> {
        p.set_u32(24, self.est.stat_sn);
        if status {
            self.est.stat_sn = self.est.stat_sn.wrapping_add(1);
        }
        p.set_u32(28, self.est.exp_cmd_sn);
        p.set_u32(32, self.est.exp_cmd_sn.wrapping_add(CMD_WINDOW - 1));
        p.write(&mut self.stream, self.digests).await?;
        Ok(())
    }

    async fn reject(&mut self, bad: &Pdu, reason: u8) -> Result<(), ConnError> {
        let mut r = Pdu::new(opcode::REJECT);
        r.bhs[1] = 0x80;
        r.bhs[2] = reason;
        r.set_itt(0xffff_ffff);
        r.data = bad.bhs.to_vec();
        self.send(r, true).await
    }

    /// True unless `p` is a non-immediate command whose CmdSN is outside
    /// [ExpCmdSN, MaxCmdSN].
    fn in_window(&self, p: &Pdu) -> bool {
        let command = match p.opcode() {
            opcode::SCSI_CMD | opcode::TASK_MGMT | opcode::TEXT | opcode::LOGOUT => true,
            opcode::NOP_OUT => p.itt() != 0xffff_ffff,
            _ => false,
        };
        !command || p.immediate() || p.u32_at(24).wrapping_sub(self.est.exp_cmd_sn) < CMD_WINDOW
    }

    /// Counts a non-immediate command's CmdSN.
    fn take_cmd_sn(&mut self, p: &Pdu) {
        if !p.immediate() {
            let sn = p.u32_at(24);
            // Serial arithmetic (RFC 1982): only move forward.
            if sn.wrapping_sub(self.est.exp_cmd_sn) < 1 << 31 {
                self.est.exp_cmd_sn = sn.wrapping_add(1);
            }
        }
    }

    /// Runs until Logout, a closed connection or a fatal protocol error.
    pub async fn run(mut self) -> Result<(), ConnError> {
        loop {
            let p = match self.read().await {
                Ok(p) => p,
                Err(PduError::DataDigest(p)) => {
                    // The header is good: reject, the initiator retries or
                    // fails the task (RFC 7143 7.8).
                    self.reject(&p, reject::DATA_DIGEST).await?;
                    continue;
                }
                Err(PduError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Ok(())
                }
                Err(e) => return Err(e.into()),
            };
            let discovery = self.est.kind == SessionType::Discovery;
            if !self.in_window(&p) {
                // RFC 7143 4.2.2.1: a non-immediate command outside the
                // CmdSN window is silently ignored.
                continue;
            }
            match p.opcode() {
                opcode::NOP_OUT => self.nop(p).await?,
                opcode::SCSI_CMD if !discovery => {
                    self.take_cmd_sn(&p);
                    self.scsi(p).await?
                }
                opcode::TASK_MGMT if !discovery => {
                    self.take_cmd_sn(&p);
                    if self.task_mgmt(p).await? {
                        return Ok(());
                    }
                }
                opcode::TEXT => {
                    self.take_cmd_sn(&p);
                    self.text(p).await?
                }
                opcode::LOGOUT => {
                    self.take_cmd_sn(&p);
                    let mut r = Pdu::new(opcode::LOGOUT_RSP);
                    r.bhs[1] = 0x80;
                    r.set_itt(p.itt());
                    self.send(r, true).await?;
                    return Ok(());
                }
                opcode::DATA_OUT => {
                    // Data for no solicited transfer (we never take
                    // unsolicited Data-Out: InitialR2T is Yes).
                    self.reject(&p, reject::PROTOCOL).await?
                }
                opcode::LOGIN => return Err(ConnError::Protocol("login request after login")),
                _ => self.reject(&p, reject::NOT_SUPPORTED).await?,
            }
        }
    }

    async fn nop(&mut self, p: Pdu) -> Result<(), ConnError> {
        if p.itt() == 0xffff_ffff {
            // A reply to a NOP-In of ours, or a ping wanting no answer.
            return Ok(());
        }
        self.take_cmd_sn(&p);
        let mut r = Pdu::new(opcode::NOP_IN);
        r.bhs[1] = 0x80;
        r.set_lun(p.lun());
        r.set_itt(p.itt());
        r.set_u32(20, 0xffff_ffff);
        r.data = p.data;
        self.send(r, true).await
    }

    async fn text(&mut self, p: Pdu) -> Result<(), ConnError> {
        let keys = match parse_text(&p.data) {
            Ok(k) => k,
            Err(_) => return self.reject(&p, reject::INVALID_FIELD).await,
        };
        let mut reply = Vec::new();
        for (k, v) in keys {
            if k == "SendTargets" {
                let wanted = v == "All" || v == self.export.iqn || v.is_empty();
                if wanted && (v != "All" || self.est.kind == SessionType::Discovery) {
                    reply.push(("TargetName".to_string(), self.export.iqn.clone()));
                    if let Some(a) = self.local {
                        let addr = match a {
                            SocketAddr::V4(a) => format!("{}:{},1", a.ip(), a.port()),
                            SocketAddr::V6(a) => format!("[{}]:{},1", a.ip(), a.port()),
                        };
                        reply.push(("TargetAddress".to_string(), addr));
                    }
                }
            } else {
                reply.push((k, "NotUnderstood".to_string()));
            }
        }
        let mut r = Pdu::new(opcode::TEXT_RSP);
        r.bhs[1] = 0x80;
        r.set_itt(p.itt());
        r.set_u32(20, 0xffff_ffff);
        r.data = encode_text(&reply);
        self.send(r, true).await
    }

    /// Returns true when the connection must close (a cold reset).
    async fn task_mgmt(&mut self, p: Pdu) -> Result<bool, ConnError> {
        let function = p.flags() & 0x7f;
        let lun = lun_from_sam(&p.lun());
        // RFC 7143 11.6.1 response codes.
        let (response, close) = match function {
            // ABORT TASK: commands run one at a time, so the referenced
            // task has completed (or never arrived): "function complete".
            1 => (0, false),
            // ABORT TASK SET, CLEAR TASK SET: nothing is queued.
            2 | 4 => (0, false),
            // CLEAR ACA: ACA is not emulated.
            3 => (5, false),
            5 => match lun.map(|l| self.target.reset_lun(l)) {
                Some(Ok(())) => (0, false),
                _ => (2, false),
            },
            6 => {
                self.target.reset();
                (0, false)
            }
            7 => {
                self.target.reset();
                (0, true)
            }
            // TASK REASSIGN needs ErrorRecoveryLevel 2.
            8 => (4, false),
            _ => (255, false),
        };
        let mut r = Pdu::new(opcode::TASK_MGMT_RSP);
        r.bhs[1] = 0x80;
        r.bhs[2] = response;
        r.set_itt(p.itt());
        self.send(r, true).await?;
        Ok(close)
    }

    async fn scsi(&mut self, p: Pdu) -> Result<(), ConnError> {
        let flags = p.flags();
        let read = flags & 0x40 != 0;
        let write = flags & 0x20 != 0;
        let edtl = p.u32_at(20) as usize;
        let mut cdb = p.bhs[32..48].to_vec();
        // Extended CDB AHS (type 1, RFC 7143 11.2.1.3).
        let mut ahs = &p.ahs[..];
        while ahs.len() >= 4 {
            let len = u16::from_be_bytes([ahs[0], ahs[1]]) as usize;
            let total = (3 + len).div_ceil(4) * 4;
            if len == 0 || total > ahs.len() {
                return self.reject(&p, reject::INVALID_FIELD).await;
            }
            if ahs[2] == 1 {
                cdb.extend_from_slice(&ahs[4..3 + len]);
            }
            ahs = &ahs[total..];
        }
        if (read && write) || (!write && !p.data.is_empty()) || p.data.len() > edtl {
            // Bidirectional commands are not supported; data with a
            // command that takes none is a protocol error.
            return self.reject(&p, reject::INVALID_FIELD).await;
        }
        if !p.data.is_empty() && !self.est.params.immediate_data
            || p.data.len() > self.est.params.first_burst as usize
        {
            return self.reject(&p, reject::PROTOCOL).await;
        }
        if write && edtl > MAX_READ_BYTES {
            // More than any command takes (tern-scsi's maximum transfer):
            // refused before buffering it.
            return self.reject(&p, reject::INVALID_FIELD).await;
        }
        let mut data_out = Vec::new();
        let mut r2ts = 0u32;
        if write {
            data_out = p.data.clone();
            while data_out.len() < edtl {
                r2ts = self.solicit(&p, &mut data_out, edtl, r2ts).await?;
            }
        }
        let lun = lun_from_sam(&p.lun()).unwrap_or(u16::MAX);
        let target = self.target.clone();
        let nexus = self.nexus.clone();
        let data_in_len = if read { edtl } else { 0 };
        let rsp = tokio::task::spawn_blocking(move || {
            let rsp = target.execute(&nexus, lun, &cdb, &data_out, data_in_len);
            if rsp.overrun && !write {
                // RFC 7143 11.4.5.1: a READ longer than the expected
                // transfer length moves what fits and reports the rest as
                // an overflow residual. A read changes nothing, so it runs
                // again with room for the whole transfer.
                let full = target.execute(&nexus, lun, &cdb, &[], MAX_READ_BYTES);
                if !full.overrun {
                    return full;
                }
            }
            rsp
        })
        .await
        .map_err(|_| ConnError::Lost)?;
        let mut data_sn = 0u32;
        let good = rsp.status == Status::Good && rsp.sense.is_empty();
        let chunk = (self.est.params.initiator_max_recv as usize).max(512);
        let full_len = rsp.data_in.len();
        let n = full_len.min(edtl);
        let overflow = (full_len - n) as u32;
        let residual = if overflow > 0 {
            overflow
        } else if read {
            (edtl - n) as u32
        } else {
            0
        };
        let residual_flag = if overflow > 0 { 0x04 } else { 0x02 };
        let mut off = 0;
        while off < n {
            let end = (off + chunk).min(n);
            let last = end == n;
            let mut d = Pdu::new(opcode::DATA_IN);
            let collapse = last && good;
            d.bhs[1] = if last { 0x80 } else { 0 };
            if collapse {
                d.bhs[1] |= 0x01;
                d.bhs[3] = rsp.status as u8;
                if residual > 0 {
                    d.bhs[1] |= residual_flag;
                    d.set_u32(44, residual);
                }
            }
            d.set_lun(p.lun());
            d.set_itt(p.itt());
            d.set_u32(20, 0xffff_ffff);
            d.set_u32(36, data_sn);
            d.set_u32(40, off as u32);
            d.data = rsp.data_in[off..end].to_vec();
            data_sn += 1;
            off = end;
            self.send(d, collapse).await?;
            if collapse {
                return Ok(());
            }
        }
        let mut r = Pdu::new(opcode::SCSI_RSP);
        r.bhs[1] = 0x80;
        r.bhs[3] = rsp.status as u8;
        if residual > 0 {
            r.bhs[1] |= residual_flag;
            r.set_u32(44, residual);
        }
        r.set_itt(p.itt());
        r.set_u32(36, if read { data_sn } else { r2ts });
        if !rsp.sense.is_empty() {
            let mut d = (rsp.sense.len() as u16).to_be_bytes().to_vec();
            d.extend_from_slice(&rsp.sense);
            r.data = d;
        }
        self.send(r, true).await
    }

    /// Sends one R2T for the rest of the data (up to MaxBurstLength) and
    /// collects its Data-Out PDUs; returns the next R2TSN.
    async fn solicit(
        &mut self,
        cmd: &Pdu,
        buf: &mut Vec<u8>,
        edtl: usize,
        r2tsn: u32,
    ) -> Result<u32, ConnError> {
        let offset = buf.len();
        let want = (edtl - offset).min(self.est.params.max_burst as usize);
        let ttt = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1).max(1);
        if self.next_ttt == 0xffff_ffff {
            self.next_ttt = 1;
        }
        let mut r = Pdu::new(opcode::R2T);
        r.bhs[1] = 0x80;
        r.set_lun(cmd.lun());
        r.set_itt(cmd.itt());
        r.set_u32(20, ttt);
        r.set_u32(36, r2tsn);
        r.set_u32(40, offset as u32);
        r.set_u32(44, want as u32);
        self.send(r, false).await?;
        let end = offset + want;
        loop {
            let p =
                match Pdu::read(&mut self.stream, self.digests, OUR_MAX_RECV_DATA as usize).await {
                    Ok(p) => p,
                    Err(PduError::DataDigest(_)) => {
                        // ErrorRecoveryLevel 0: a lost Data-Out fails the
                        // connection (RFC 7143 7.1.4.1).
                        return Err(ConnError::Protocol("data digest error in Data-Out"));
                    }
                    Err(e) => return Err(e.into()),
                };
            if p.opcode() != opcode::DATA_OUT || p.itt() != cmd.itt() {
                if self.queued.len() >= MAX_QUEUED {
                    return Err(ConnError::Protocol("too many PDUs while awaiting Data-Out"));
                }
                self.queued.push_back(p);
                continue;
            }
            if p.u32_at(20) != ttt || p.u32_at(40) as usize != buf.len() {
                return Err(ConnError::Protocol(
                    "Data-Out out of order or for another R2T",
                ));
            }
            if buf.len() + p.data.len() > end {
                return Err(ConnError::Protocol("Data-Out beyond the R2T's length"));
            }
            buf.extend_from_slice(&p.data);
            if p.final_bit() {
                if buf.len() != end {
                    return Err(ConnError::Protocol("Data-Out sequence ended short"));
                }
                return Ok(r2tsn + 1);
            }
        }
    }
}
