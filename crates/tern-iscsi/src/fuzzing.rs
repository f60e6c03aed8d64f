//! Entry points for the `iscsi_pdu` fuzz target: PDU decoding and the
//! login state machine on arbitrary bytes must never panic.

use std::sync::Arc;

use crate::login::{Login, Step};
use crate::pdu::{Digests, Pdu};
use crate::{ChapCredentials, Export};

/// Decodes PDUs from `data` (with and without digests) and feeds each to
/// a login state machine, with and without CHAP.
pub fn pdus(data: &[u8]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime without drivers always builds");
    for chap in [false, true] {
        let export = Arc::new(Export {
            iqn: "iqn.2026-12.org.tern:fuzz".into(),
            allowed: Vec::new(),
            chap: chap.then(|| ChapCredentials {
                user: "user".into(),
                secret: "secretsecret".into(),
            }),
        });
        let mut login = Login::new(export, 1);
        let digests = Digests {
            header: chap,
            data: chap,
        };
        let mut input = data;
        while let Ok(p) = rt.block_on(Pdu::read(&mut input, digests, 65_536)) {
            let _ = p.encode(digests);
            let _ = crate::pdu::parse_text(&p.data);
            match login.step(&p) {
                Step::Continue(_) => {}
                Step::Done(..) | Step::Fail(_) => break,
            }
        }
    }
}

/// Seeds: a plain login request.
pub fn seeds() -> Vec<Vec<u8>> {
    let mut p = Pdu::new(crate::pdu::opcode::LOGIN | 0x40);
    p.bhs[1] = 0x87;
    p.data =
        b"InitiatorName=iqn.x\0TargetName=iqn.2026-12.org.tern:fuzz\0HeaderDigest=None\0".to_vec();
    vec![p.encode(Digests::default())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_and_mutations_do_not_panic() {
        for s in seeds() {
            pdus(&s);
            // Every truncation and a flipped byte at each offset.
            for cut in 0..s.len() {
                pdus(&s[..cut]);
                let mut m = s.clone();
                m[cut] ^= 0xff;
                pdus(&m);
            }
        }
    }
}
