//! The login phase (RFC 7143 6.3, 13): security negotiation with CHAP
//! (RFC 7143 12.1.3, RFC 1994) and operational parameter negotiation. A
//! synchronous state machine: one request PDU in, one response PDU out,
//! so that the fuzz target drives it without a socket.

use std::sync::Arc;

use md5::{Digest, Md5};

use crate::pdu::{encode_text, opcode, parse_text, Pdu};
use crate::Export;

/// Our receive limit for data segments in the full feature phase.
pub const OUR_MAX_RECV_DATA: u32 = 262_144;
/// Our largest burst (R2T size) and first burst.
pub const OUR_MAX_BURST: u32 = 1_048_576;
/// Our first burst limit (immediate data).
pub const OUR_FIRST_BURST: u32 = 262_144;
/// Receive limit for login PDUs' data segments.
pub const LOGIN_MAX_DATA: usize = 65_536;
/// CmdSN window we grant (MaxCmdSN - ExpCmdSN + 1).
pub const CMD_WINDOW: u32 = 32;

/// Login status classes and details (RFC 7143 11.13.5).
pub mod status {
    /// Success.
    pub const SUCCESS: u16 = 0x0000;
    /// Authentication failure.
    pub const AUTH_FAILED: u16 = 0x0201;
    /// The initiator is not allowed to reach the target.
    pub const NOT_AUTHORIZED: u16 = 0x0202;
    /// No such target.
    pub const NOT_FOUND: u16 = 0x0203;
    /// Too many connections / the session to add to does not exist.
    pub const SESSION_DOES_NOT_EXIST: u16 = 0x020a;
    /// A required key is missing.
    pub const MISSING_PARAMETER: u16 = 0x0207;
    /// Something else is wrong with the request.
    pub const INITIATOR_ERROR: u16 = 0x0200;
    /// The request is malformed or out of place.
    pub const INVALID_REQUEST: u16 = 0x020b;
    /// Version not supported.
    pub const UNSUPPORTED_VERSION: u16 = 0x0205;
}

/// What kind of session the login makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionType {
    /// SendTargets only.
    Discovery,
    /// SCSI commands to the export's LUNs.
    Normal,
}

/// Operational parameters of a session, as negotiated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    /// CRC32C header digest.
    pub header_digest: bool,
    /// CRC32C data digest.
    pub data_digest: bool,
    /// Largest data segment the initiator receives (our Data-In PDUs).
    pub initiator_max_recv: u32,
    /// Largest solicited burst (R2T size).
    pub max_burst: u32,
    /// Largest unsolicited data (immediate data).
    pub first_burst: u32,
    /// Immediate data allowed.
    pub immediate_data: bool,
}

impl Default for Params {
    fn default() -> Params {
        // RFC 7143 13 defaults.
        Params {
            header_digest: false,
            data_digest: false,
            initiator_max_recv: 8192,
            max_burst: 262_144,
            first_burst: 65_536,
            immediate_data: true,
        }
    }
}

/// A logged-in session's identity and parameters.
#[derive(Clone, Debug)]
pub struct Established {
    /// Discovery or normal.
    pub kind: SessionType,
    /// The initiator's name.
    pub initiator: String,
    /// Initiator session id.
    pub isid: [u8; 6],
    /// Target session handle we assigned.
    pub tsih: u16,
    /// Parameters.
    pub params: Params,
    /// The next StatSN.
    pub stat_sn: u32,
    /// The next expected CmdSN.
    pub exp_cmd_sn: u32,
}

/// What a login step produced.
#[derive(Debug)]
pub enum Step {
    /// Send the response and read the next request.
    Continue(Pdu),
    /// Send the response; the full feature phase begins.
    Done(Pdu, Box<Established>),
    /// Send the response and close the connection.
    Fail(Pdu),
}

enum Chap {
    None,
    WantAlgorithm,
    Challenged { id: u8, challenge: [u8; 16] },
    Passed,
}

/// The login state of one connection.
pub struct Login {
    export: Arc<Export>,
    tsih: u16,
    initiator: Option<String>,
    kind: Option<SessionType>,
    isid: [u8; 6],
    itt: Option<u32>,
    chap: Chap,
    auth_done: bool,
    params: Params,
    first: bool,
    pending_text: Vec<u8>,
    stat_sn: u32,
    exp_cmd_sn: u32,
}

impl Login {
    /// A connection's login, with `tsih` to assign if it succeeds.
    pub fn new(export: Arc<Export>, tsih: u16) -> Login {
        let auth_done = export.chap.is_none();
        Login {
            export,
            tsih,
            initiator: None,
            kind: None,
            isid: [0; 6],
            itt: None,
            chap: Chap::None,
            auth_done,
            params: Params::default(),
            first: true,
            pending_text: Vec::new(),
            stat_sn: 0,
            exp_cmd_sn: 0,
        }
    }

    fn response(&self, req: &Pdu, flags: u8, st: u16, keys: &[(String, String)]) -> Pdu {
        let mut r = Pdu::new(opcode::LOGIN_RSP);
        r.bhs[1] = flags;
        r.bhs[2] = 0; // version max
        r.bhs[3] = 0; // version active
        r.bhs[8..14].copy_from_slice(&req.bhs[8..14]);
        let tsih = if flags & 0x83 == 0x83 && st == status::SUCCESS {
            self.tsih
        } else {
            0
        };
        r.bhs[14..16].copy_from_slice(&tsih.to_be_bytes());
        r.set_itt(req.itt());
        r.set_u32(24, self.stat_sn);
        r.set_u32(28, self.exp_cmd_sn);
        r.set_u32(32, self.exp_cmd_sn.wrapping_add(CMD_WINDOW - 1));
        r.bhs[36..38].copy_from_slice(&st.to_be_bytes());
        r.data = encode_text(keys);
        r
    }

    fn fail(&self, req: &Pdu, st: u16) -> Step {
        let csg = (req.flags() >> 2) & 3;
        Step::Fail(self.response(req, csg << 2, st, &[]))
    }

    /// Handles one Login Request.
    pub fn step(&mut self, req: &Pdu) -> Step {
        if req.opcode() != opcode::LOGIN {
            return self.fail(req, status::INVALID_REQUEST);
        }
        let flags = req.flags();
        let transit = flags & 0x80 != 0;
        let cont = flags & 0x40 != 0;
        let csg = (flags >> 2) & 3;
        let nsg = flags & 3;
        if self.first {
            self.isid.copy_from_slice(&req.bhs[8..14]);
            self.itt = Some(req.itt());
            let cmd_sn = req.u32_at(24);
            self.exp_cmd_sn = cmd_sn;
            self.stat_sn = req.u32_at(28);
            if req.bhs[3] > 0 {
                // Version-min above 0 (RFC 7143 11.12.4).
                return self.fail(req, status::UNSUPPORTED_VERSION);
            }
            if u16::from_be_bytes([req.bhs[14], req.bhs[15]]) != 0 {
                // Adding a connection to a session: MaxConnections is 1.
                return self.fail(req, status::SESSION_DOES_NOT_EXIST);
            }
        } else if req.bhs[8..14] != self.isid || Some(req.itt()) != self.itt {
            return self.fail(req, status::INVALID_REQUEST);
        }
        if csg == 2 || (transit && (nsg == 2 || nsg <= csg)) || (transit && cont) {
            return self.fail(req, status::INVALID_REQUEST);
        }
        self.pending_text.extend_from_slice(&req.data);
        if self.pending_text.len() > LOGIN_MAX_DATA {
            return self.fail(req, status::INITIATOR_ERROR);
        }
        if cont {
            // More text follows (RFC 7143 6.3.1): acknowledge, same stage.
            return Step::Continue(self.response(req, csg << 2, status::SUCCESS, &[]));
        }
        let text = std::mem::take(&mut self.pending_text);
        let keys = match parse_text(&text) {
            Ok(k) => k,
            Err(_) => return self.fail(req, status::INITIATOR_ERROR),
        };
        let mut reply: Vec<(String, String)> = Vec::new();
        let mut chap_keys: Vec<(String, String)> = Vec::new();
        for (k, v) in &keys {
            match k.as_str() {
                "InitiatorName" => {
                    if v.is_empty() || v.len() > 223 {
                        return self.fail(req, status::INITIATOR_ERROR);
                    }
                    self.initiator = Some(v.clone());
                }
                "SessionType" => {
                    self.kind = Some(match v.as_str() {
                        "Discovery" => SessionType::Discovery,
                        "Normal" => SessionType::Normal,
                        _ => return self.fail(req, status::INITIATOR_ERROR),
                    })
                }
                "TargetName" => {
                    if *v != self.export.iqn {
                        return self.fail(req, status::NOT_FOUND);
                    }
                }
                "InitiatorAlias" => {}
                "AuthMethod" => {
                    if csg != 0 {
                        return self.fail(req, status::INITIATOR_ERROR);
                    }
                    let offered: Vec<&str> = v.split(',').collect();
                    let want = if self.export.chap.is_some() {
                        "CHAP"
                    } else {
                        "None"
                    };
                    if !offered.contains(&want) {
                        reply.push((k.clone(), "Reject".into()));
                        return Step::Fail(self.response(
                            req,
                            csg << 2,
                            status::AUTH_FAILED,
                            &reply,
                        ));
                    }
                    if want == "CHAP" {
                        self.chap = Chap::WantAlgorithm;
                    }
                    reply.push((k.clone(), want.into()));
                }
                "CHAP_A" | "CHAP_N" | "CHAP_R" | "CHAP_I" | "CHAP_C" => {
                    chap_keys.push((k.clone(), v.clone()));
                }
                _ => match negotiate(&mut self.params, k, v) {
                    Some(answer) => reply.push((k.clone(), answer)),
                    None => reply.push((k.clone(), "NotUnderstood".into())),
                },
            }
        }
        if self.first {
            self.first = false;
            let Some(initiator) = self.initiator.clone() else {
                return self.fail(req, status::MISSING_PARAMETER);
            };
            let kind = *self.kind.get_or_insert(SessionType::Normal);
            if kind == SessionType::Normal && !keys.iter().any(|(k, _)| k == "TargetName") {
                return self.fail(req, status::MISSING_PARAMETER);
            }
            if !self.export.allowed.is_empty() && !self.export.allowed.contains(&initiator) {
                return self.fail(req, status::NOT_AUTHORIZED);
            }
            if kind == SessionType::Normal {
                reply.push(("TargetPortalGroupTag".into(), "1".into()));
            }
        }
        if !chap_keys.is_empty() {
            match self.chap_step(&chap_keys, &mut reply) {
                Ok(()) => {}
                Err(st) => return self.fail(req, st),
            }
        }
        // Leaving the security stage needs authentication done.
        if csg == 0 && transit && !self.auth_done {
            if matches!(self.chap, Chap::None) && self.export.chap.is_some() {
                return self.fail(req, status::AUTH_FAILED);
            }
            // The CHAP exchange is still under way: stay in stage 0.
            return Step::Continue(self.response(req, 0, status::SUCCESS, &reply));
        }
        if csg == 1 && !self.auth_done {
            // Skipped security negotiation although CHAP is required.
            return self.fail(req, status::AUTH_FAILED);
        }
        if !transit {
            return Step::Continue(self.response(req, csg << 2, status::SUCCESS, &reply));
        }
        if csg == 0 && nsg == 1 {
            // Offer our receive limit in the operational stage's first
            // response as well; declaring it here is allowed.
            return Step::Continue(self.response(req, 0x80 | 1, status::SUCCESS, &reply));
        }
        // nsg == 3: the full feature phase.
        if !reply.iter().any(|(k, _)| k == "MaxRecvDataSegmentLength") {
            reply.push((
                "MaxRecvDataSegmentLength".into(),
                OUR_MAX_RECV_DATA.to_string(),
            ));
        }
        let rsp = self.response(req, 0x80 | (csg << 2) | 3, status::SUCCESS, &reply);
        let est = Established {
            kind: self.kind.unwrap_or(SessionType::Normal),
            initiator: self.initiator.clone().unwrap_or_default(),
            isid: self.isid,
            tsih: self.tsih,
            params: self.params.clone(),
            stat_sn: self.stat_sn.wrapping_add(1),
            exp_cmd_sn: self.exp_cmd_sn,
        };
        Step::Done(rsp, Box::new(est))
    }

    fn chap_step(
        &mut self,
        keys: &[(String, String)],
        reply: &mut Vec<(String, String)>,
    ) -> Result<(), u16> {
        let get = |name: &str| {
            keys.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let Some(cfg) = self.export.chap.clone() else {
            return Err(status::AUTH_FAILED);
        };
        match self.chap {
            Chap::WantAlgorithm => {
                let algs = get("CHAP_A").ok_or(status::AUTH_FAILED)?;
                if !algs.split(',').any(|a| a == "5") {
                    return Err(status::AUTH_FAILED);
                }
                let mut rnd = [0u8; 17];
                getrandom::fill(&mut rnd).map_err(|_| status::AUTH_FAILED)?;
                let mut challenge = [0u8; 16];
                challenge.copy_from_slice(&rnd[1..]);
                let id = rnd[0];
                reply.push(("CHAP_A".into(), "5".into()));
                reply.push(("CHAP_I".into(), id.to_string()));
                reply.push(("CHAP_C".into(), format!("0x{}", hex(&challenge))));
                self.chap = Chap::Challenged { id, challenge };
                Ok(())
            }
            Chap::Challenged { id, challenge } => {
                let name = get("CHAP_N").ok_or(status::AUTH_FAILED)?;
                let resp = get("CHAP_R").ok_or(status::AUTH_FAILED)?;
                if get("CHAP_I").is_some() || get("CHAP_C").is_some() {
                    // Mutual CHAP needs target credentials, which an
                    // export does not have.
                    return Err(status::AUTH_FAILED);
                }
                let got = parse_binary(resp).ok_or(status::AUTH_FAILED)?;
                let want = chap_response(id, cfg.secret.as_bytes(), &challenge);
                if name != cfg.user || got != want {
                    return Err(status::AUTH_FAILED);
                }
                self.chap = Chap::Passed;
                self.auth_done = true;
                Ok(())
            }
            Chap::None | Chap::Passed => Err(status::AUTH_FAILED),
        }
    }
}

/// The CHAP response (RFC 1994 4.1): MD5 over the id, the secret and the
/// challenge.
pub fn chap_response(id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().to_vec()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A binary value (RFC 7143 6.1): `0x` hex; base64 (`0b`) is not used by
/// the initiators we serve and is refused.
fn parse_binary(v: &str) -> Option<Vec<u8>> {
    let h = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X"))?;
    if h.is_empty() || h.len() % 2 != 0 || h.len() > 2048 {
        return None;
    }
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
        .collect()
}

fn number(v: &str) -> Option<u32> {
    if let Some(h) = v.strip_prefix("0x") {
        u32::from_str_radix(h, 16).ok()
    } else {
        v.parse().ok()
    }
}

/// Negotiates one operational key; returns our answer, or `None` for keys
/// we do not know (answered NotUnderstood).
fn negotiate(p: &mut Params, key: &str, v: &str) -> Option<String> {
    let digest = |v: &str| -> (bool, String) {
        for d in v.split(',') {
            match d {
                "CRC32C" => return (true, "CRC32C".into()),
                "None" => return (false, "None".into()),
                _ => {}
            }
        }
        (false, "Reject".into())
    };
    let yes = |v: &str| v == "Yes";
    let in_range = |v: &str, lo: u32, hi: u32| number(v).filter(|n| (lo..=hi).contains(n));
    Some(match key {
        "HeaderDigest" => {
            let (on, s) = digest(v);
            p.header_digest = on;
            s
        }
        "DataDigest" => {
            let (on, s) = digest(v);
            p.data_digest = on;
            s
        }
        "MaxRecvDataSegmentLength" => {
            // Declarative: the initiator's limit; we state ours.
            match in_range(v, 512, 16_777_215) {
                Some(n) => p.initiator_max_recv = n,
                None => return Some("Reject".into()),
            }
            OUR_MAX_RECV_DATA.to_string()
        }
        "MaxBurstLength" => match in_range(v, 512, 16_777_215) {
            Some(n) => {
                p.max_burst = n.min(OUR_MAX_BURST);
                p.max_burst.to_string()
            }
            None => "Reject".into(),
        },
        "FirstBurstLength" => match in_range(v, 512, 16_777_215) {
            Some(n) => {
                p.first_burst = n.min(OUR_FIRST_BURST);
                p.first_burst.to_string()
            }
            None => "Reject".into(),
        },
        // We always solicit data (result function OR).
        "InitialR2T" => "Yes".into(),
        "ImmediateData" => {
            p.immediate_data = yes(v);
            if p.immediate_data { "Yes" } else { "No" }.into()
        }
        "MaxOutstandingR2T" => "1".into(),
        "DataPDUInOrder" | "DataSequenceInOrder" => "Yes".into(),
        "ErrorRecoveryLevel" => "0".into(),
        "MaxConnections" => "1".into(),
        "DefaultTime2Wait" => match in_range(v, 0, 3600) {
            Some(n) => n.max(2).to_string(),
            None => "Reject".into(),
        },
        "DefaultTime2Retain" => match in_range(v, 0, 3600) {
            Some(_) => "0".into(),
            None => "Reject".into(),
        },
        "IFMarker" | "OFMarker" => "No".into(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ChapCredentials;

    fn export(chap: bool, allowed: &[&str]) -> Arc<Export> {
        Arc::new(Export {
            iqn: "iqn.2026-12.org.tern:t".into(),
            allowed: allowed.iter().map(|s| s.to_string()).collect(),
            chap: chap.then(|| ChapCredentials {
                user: "u".into(),
                secret: "secretsecret".into(),
            }),
        })
    }

    fn req(flags: u8, keys: &[(&str, &str)]) -> Pdu {
        let mut p = Pdu::new(opcode::LOGIN | 0x40);
        p.bhs[1] = flags;
        p.bhs[8..14].copy_from_slice(&[0x80, 0, 0, 0, 0, 1]);
        p.set_itt(1);
        let k: Vec<(String, String)> = keys
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        p.data = encode_text(&k);
        p
    }

    fn keys(p: &Pdu) -> Vec<(String, String)> {
        parse_text(&p.data).unwrap()
    }

    fn status_of(p: &Pdu) -> u16 {
        u16::from_be_bytes([p.bhs[36], p.bhs[37]])
    }

    #[test]
    fn plain_login_negotiates() {
        let mut l = Login::new(export(false, &[]), 5);
        let s = l.step(&req(
            0x80 | 0x01,
            &[
                ("InitiatorName", "iqn.i"),
                ("TargetName", "iqn.2026-12.org.tern:t"),
                ("SessionType", "Normal"),
                ("AuthMethod", "None"),
            ],
        ));
        let Step::Continue(r) = s else {
            panic!("{s:?}")
        };
        assert_eq!(r.flags(), 0x81);
        assert!(keys(&r).contains(&("AuthMethod".into(), "None".into())));
        let s = l.step(&req(
            0x80 | 0x04 | 0x03,
            &[
                ("HeaderDigest", "CRC32C,None"),
                ("DataDigest", "None"),
                ("MaxRecvDataSegmentLength", "65536"),
                ("X-foo", "1"),
            ],
        ));
        let Step::Done(r, est) = s else {
            panic!("{s:?}")
        };
        assert_eq!(u16::from_be_bytes([r.bhs[14], r.bhs[15]]), 5);
        assert!(est.params.header_digest && !est.params.data_digest);
        assert_eq!(est.params.initiator_max_recv, 65536);
        assert!(keys(&r).contains(&("X-foo".into(), "NotUnderstood".into())));
    }

    #[test]
    fn refusals() {
        let mut l = Login::new(export(false, &["iqn.ok"]), 1);
        let s = l.step(&req(
            0x81,
            &[
                ("InitiatorName", "iqn.bad"),
                ("TargetName", "iqn.2026-12.org.tern:t"),
            ],
        ));
        let Step::Fail(r) = s else { panic!() };
        assert_eq!(status_of(&r), status::NOT_AUTHORIZED);
        let mut l = Login::new(export(false, &[]), 1);
        let Step::Fail(r) = l.step(&req(
            0x81,
            &[("InitiatorName", "iqn.i"), ("TargetName", "iqn.other")],
        )) else {
            panic!()
        };
        assert_eq!(status_of(&r), status::NOT_FOUND);
        // CHAP required, operational stage first.
        let mut l = Login::new(export(true, &[]), 1);
        let Step::Fail(r) = l.step(&req(
            0x87,
            &[
                ("InitiatorName", "iqn.i"),
                ("TargetName", "iqn.2026-12.org.tern:t"),
            ],
        )) else {
            panic!()
        };
        assert_eq!(status_of(&r), status::AUTH_FAILED);
    }

    fn chap_login(secret: &str) -> Step {
        let mut l = Login::new(export(true, &[]), 1);
        let Step::Continue(_) = l.step(&req(
            0x81,
            &[
                ("InitiatorName", "iqn.i"),
                ("TargetName", "iqn.2026-12.org.tern:t"),
                ("AuthMethod", "CHAP,None"),
            ],
        )) else {
            panic!()
        };
        let Step::Continue(r) = l.step(&req(0x81, &[("CHAP_A", "5")])) else {
            panic!()
        };
        let k = keys(&r);
        let get = |n: &str| k.iter().find(|(a, _)| a == n).unwrap().1.clone();
        let id: u8 = get("CHAP_I").parse().unwrap();
        let c = parse_binary(&get("CHAP_C")).unwrap();
        let resp = format!("0x{}", hex(&chap_response(id, secret.as_bytes(), &c)));
        l.step(&req(0x81, &[("CHAP_N", "u"), ("CHAP_R", &resp)]))
    }

    #[test]
    fn chap() {
        let Step::Continue(r) = chap_login("secretsecret") else {
            panic!()
        };
        assert_eq!(r.flags(), 0x81);
        let Step::Fail(r) = chap_login("wrong") else {
            panic!()
        };
        assert_eq!(status_of(&r), status::AUTH_FAILED);
    }
}
