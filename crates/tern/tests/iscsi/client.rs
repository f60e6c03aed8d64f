//! A minimal iSCSI initiator for the fence_scsi test: one connection, no
//! digests, no CHAP, commands with immediate data only (a reservation
//! sequence needs no more; the full protocol is judged by libiscsi).

use std::net::SocketAddr;

use tern_iscsi::pdu::{encode_text, opcode, Digests, Pdu};
use tokio::net::TcpStream;

/// A completed command.
pub struct Reply {
    /// SCSI status.
    pub status: u8,
}

/// A logged-in session.
pub struct Client {
    rt: tokio::runtime::Runtime,
    stream: TcpStream,
    itt: u32,
    cmd_sn: u32,
    exp_stat_sn: u32,
}

impl Client {
    /// Logs in (operational stage directly: no authentication).
    pub fn login(addr: SocketAddr, target: &str, initiator: &str) -> Client {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let mut stream = rt.block_on(TcpStream::connect(addr)).expect("connect");
        let mut p = Pdu::new(opcode::LOGIN | 0x40);
        p.bhs[1] = 0x80 | (1 << 2) | 3;
        // ISID: random qualifier type (RFC 7143 11.12.5), from the name.
        p.bhs[8] = 0x80;
        p.bhs[13] = initiator.len() as u8;
        p.set_itt(1);
        let keys: Vec<(String, String)> = [
            ("InitiatorName", initiator),
            ("TargetName", target),
            ("SessionType", "Normal"),
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("ImmediateData", "Yes"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        p.data = encode_text(&keys);
        let r = rt.block_on(async {
            p.write(&mut stream, Digests::default()).await.unwrap();
            Pdu::read(&mut stream, Digests::default(), 1 << 20)
                .await
                .unwrap()
        });
        assert_eq!(r.opcode(), opcode::LOGIN_RSP);
        assert_eq!((r.bhs[36], r.bhs[37]), (0, 0), "login status");
        assert_eq!(r.flags() & 0x83, 0x83, "login reaches full feature phase");
        let exp_stat_sn = r.u32_at(24).wrapping_add(1);
        Client {
            rt,
            stream,
            itt: 2,
            cmd_sn: r.u32_at(28),
            exp_stat_sn,
        }
    }

    /// Runs `cdb` on LUN 0 with `data_out` as immediate data.
    pub fn command(&mut self, cdb: &[u8], data_out: &[u8], data_in_len: u32) -> Reply {
        let mut p = Pdu::new(opcode::SCSI_CMD);
        p.bhs[1] = 0x80
            | if data_in_len > 0 { 0x40 } else { 0 }
            | if data_out.is_empty() { 0 } else { 0x20 }
            | 0x01; // simple task attribute
        p.set_itt(self.itt);
        self.itt += 1;
        p.set_u32(
            20,
            if data_out.is_empty() {
                data_in_len
            } else {
                data_out.len() as u32
            },
        );
        p.set_u32(24, self.cmd_sn);
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        p.set_u32(28, self.exp_stat_sn);
        p.bhs[32..32 + cdb.len()].copy_from_slice(cdb);
        p.data = data_out.to_vec();
        let stream = &mut self.stream;
        let (status, stat_sn) = self.rt.block_on(async {
            p.write(stream, Digests::default()).await.unwrap();
            loop {
                let r = Pdu::read(stream, Digests::default(), 1 << 20)
                    .await
                    .unwrap();
                match r.opcode() {
                    opcode::DATA_IN if r.flags() & 0x01 != 0 => {
                        break (r.bhs[3], r.u32_at(24));
                    }
                    opcode::DATA_IN => {}
                    opcode::SCSI_RSP => break (r.bhs[3], r.u32_at(24)),
                    other => panic!("unexpected PDU {other:#x} in reply to a command"),
                }
            }
        });
        self.exp_stat_sn = stat_sn.wrapping_add(1);
        Reply { status }
    }

    /// PERSISTENT RESERVE OUT with a basic parameter list.
    pub fn prout(&mut self, action: u8, kind: u8, key: u64, sa_key: u64) -> Reply {
        let mut cdb = [0u8; 10];
        cdb[0] = 0x5F;
        cdb[1] = action;
        cdb[2] = kind;
        cdb[8] = 24;
        let mut params = vec![0u8; 24];
        params[0..8].copy_from_slice(&key.to_be_bytes());
        params[8..16].copy_from_slice(&sa_key.to_be_bytes());
        self.command(&cdb, &params, 0)
    }

    /// WRITE(10) of whole blocks at `lba`.
    pub fn write(&mut self, lba: u32, data: &[u8]) -> Reply {
        let mut cdb = [0u8; 10];
        cdb[0] = 0x2A;
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&((data.len() / 512) as u16).to_be_bytes());
        self.command(&cdb, data, 0)
    }

    /// Logs out and waits for the response.
    pub fn logout(mut self) {
        let mut p = Pdu::new(opcode::LOGOUT | 0x40);
        p.bhs[1] = 0x80;
        p.set_itt(self.itt);
        p.set_u32(24, self.cmd_sn);
        p.set_u32(28, self.exp_stat_sn);
        let stream = &mut self.stream;
        let r = self.rt.block_on(async {
            p.write(stream, Digests::default()).await.unwrap();
            Pdu::read(stream, Digests::default(), 1 << 20)
                .await
                .unwrap()
        });
        assert_eq!(r.opcode(), opcode::LOGOUT_RSP);
    }
}
