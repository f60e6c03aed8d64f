//! Entry points for the `secure_boot` fuzz target (fuzz/): arbitrary
//! bytes as a PE image and as signature lists must give a verdict or a
//! typed error, never a panic.

use crate::database::Database;
use crate::guid::Guid;
use crate::siglist::{self, SignatureData};
use crate::template::DEBIAN_UEFI_CA;
use crate::verify::{verify, Policy};

/// The first byte picks what `data` is: even, a PE image judged against
/// the Debian CA; odd, a `db` file (then judged with a minimal image).
pub fn image_and_lists(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let mut policy = Policy::default();
    policy.db.push(
        "fuzz",
        0,
        0,
        Guid([0; 16]),
        SignatureData::X509(DEBIAN_UEFI_CA.to_vec()),
    );
    if sel % 2 == 0 {
        let _ = verify(rest, &policy);
    } else {
        let mut db = Database::default();
        if db.add_siglist("fuzz", rest).is_ok() {
            let _ = siglist::write(
                &db.entries
                    .iter()
                    .map(|e| (e.origin.owner, e.data.clone()))
                    .collect::<Vec<_>>(),
            );
            policy.db = db;
            let _ = verify(&minimal_pe(&[]), &policy);
        }
    }
}

/// Seeds: a minimal PE, the same with a WIN_CERTIFICATE, and a `db`.
pub fn seeds() -> Vec<Vec<u8>> {
    let db = siglist::write(&[(Guid([1; 16]), SignatureData::X509(DEBIAN_UEFI_CA.to_vec()))]);
    vec![
        [&[0u8][..], &minimal_pe(&[])].concat(),
        [&[0u8][..], &minimal_pe(DEBIAN_UEFI_CA)].concat(),
        [&[1u8][..], &db].concat(),
    ]
}

/// A minimal PE32+ image with one `.text` section and, when `cert` is not
/// empty, a certificate table holding one WIN_CERTIFICATE with `cert` as
/// its (PKCS#7) payload. For tests and seeds.
pub fn minimal_pe(cert: &[u8]) -> Vec<u8> {
    const LFANEW: usize = 0x40;
    const OPT: usize = LFANEW + 4 + 20;
    const OPT_SIZE: usize = 112 + 16 * 8;
    const SECTIONS: usize = OPT + OPT_SIZE;
    const HEADERS: usize = 0x200;
    const TEXT: usize = 0x200;
    let mut p = vec![0u8; HEADERS + TEXT];
    let put16 =
        |p: &mut Vec<u8>, at: usize, v: u16| p[at..at + 2].copy_from_slice(&v.to_le_bytes());
    let put32 =
        |p: &mut Vec<u8>, at: usize, v: u32| p[at..at + 4].copy_from_slice(&v.to_le_bytes());
    p[0..2].copy_from_slice(b"MZ");
    put32(&mut p, 0x3c, LFANEW as u32);
    p[LFANEW..LFANEW + 4].copy_from_slice(b"PE\0\0");
    put16(&mut p, LFANEW + 4, 0x8664); // machine
    put16(&mut p, LFANEW + 6, 1); // sections
    put16(&mut p, LFANEW + 20, OPT_SIZE as u16);
    put16(&mut p, LFANEW + 22, 0x22); // executable, large address aware
    put16(&mut p, OPT, 0x20b); // PE32+
    put32(&mut p, OPT + 16, 0x1000); // entry point
    put32(&mut p, OPT + 32, 0x1000); // section alignment
    put32(&mut p, OPT + 36, 0x200); // file alignment
    put32(&mut p, OPT + 56, 0x2000); // size of image
    put32(&mut p, OPT + 60, HEADERS as u32); // size of headers
    put16(&mut p, OPT + 68, 10); // subsystem: EFI application
    put32(&mut p, OPT + 108, 16); // data directories
    p[SECTIONS..SECTIONS + 5].copy_from_slice(b".text");
    put32(&mut p, SECTIONS + 8, TEXT as u32); // virtual size
    put32(&mut p, SECTIONS + 12, 0x1000); // virtual address
    put32(&mut p, SECTIONS + 16, TEXT as u32); // raw size
    put32(&mut p, SECTIONS + 20, HEADERS as u32); // raw pointer
    put32(&mut p, SECTIONS + 36, 0x6000_0020); // code, read, execute
    p[HEADERS] = 0xc3; // ret
    if !cert.is_empty() {
        let len = 8 + cert.len();
        let padded = len.div_ceil(8) * 8;
        let at = p.len();
        // Data directory 4: the certificate table (a file offset).
        put32(&mut p, OPT + 112 + 4 * 8, at as u32);
        put32(&mut p, OPT + 112 + 4 * 8 + 4, padded as u32);
        p.extend_from_slice(&(len as u32).to_le_bytes());
        p.extend_from_slice(&0x0200u16.to_le_bytes()); // WIN_CERT_REVISION_2_0
        p.extend_from_slice(&0x0002u16.to_le_bytes()); // PKCS_SIGNED_DATA
        p.extend_from_slice(cert);
        p.resize(at + padded, 0);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short deterministic run of the fuzz entry over mutated seeds (the
    /// real fuzzer is `scripts/fuzz.sh secure_boot`): no input panics.
    #[test]
    fn mutated_seeds_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for seed in seeds() {
            image_and_lists(&seed);
            for _ in 0..300 {
                let mut m = seed.clone();
                for _ in 0..1 + next() % 8 {
                    let at = 1 + (next() as usize) % (m.len() - 1);
                    m[at] = next() as u8;
                }
                if next() % 4 == 0 {
                    let keep = 1 + (next() as usize) % m.len();
                    m.truncate(keep);
                }
                image_and_lists(&m);
            }
        }
    }

    #[test]
    fn minimal_images_get_named_verdicts() {
        use crate::verdict::DenyRule;
        let policy = Policy::default();
        let unsigned = verify(&minimal_pe(&[]), &policy);
        assert_eq!(
            unsigned.verdict,
            crate::Verdict::Denied {
                rule: DenyRule::NoSignature
            }
        );
        // A certificate table whose entry is a certificate, not PKCS#7.
        let bogus = verify(&minimal_pe(DEBIAN_UEFI_CA), &policy);
        assert!(
            matches!(&bogus.verdict, crate::Verdict::Denied { rule: DenyRule::NoTrustedSignature { signatures } }
                if matches!(signatures[0].problem, crate::verdict::SignatureProblem::Malformed { .. })),
            "{:?}",
            bogus.verdict
        );
        let truncated = verify(&minimal_pe(&[])[..0x100], &policy);
        assert!(matches!(
            truncated.verdict,
            crate::Verdict::Denied {
                rule: DenyRule::Malformed { .. }
            }
        ));
        let not_pe = verify(b"hello", &policy);
        assert!(matches!(
            not_pe.verdict,
            crate::Verdict::Denied {
                rule: DenyRule::Malformed { .. }
            }
        ));
        // The image hash in db allows the unsigned image.
        let mut db = Database::default();
        let sha: [u8; 32] = crate::image::Image::parse(&minimal_pe(&[])).unwrap().sha256;
        db.push("test", 0, 0, Guid([0; 16]), SignatureData::Sha256(sha));
        let by_hash = verify(
            &minimal_pe(&[]),
            &Policy {
                db,
                dbx: Database::default(),
            },
        );
        assert!(by_hash.verdict.allowed(), "{:?}", by_hash.verdict);
    }
}
