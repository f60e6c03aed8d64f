//! What the probe's SCSI workloads and the host agree on: the hash
//! `scsi-dvd-read` reports and the operations `scsi-pr` runs.

/// FNV-1a, 64 bits, over `bytes` continuing from `h` (start with
/// [`FNV_START`]): what `scsi-dvd-read` reports for a medium's bytes.
pub fn fnv1a64(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The FNV-1a offset basis.
pub const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// One `scsi-pr` operation: a decimal digit of its `ops` parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrOp {
    /// 1: PERSISTENT RESERVE OUT, REGISTER AND IGNORE EXISTING KEY with
    /// `key`.
    RegisterIgnore,
    /// 2: RESERVE, Write Exclusive - Registrants Only, with `key`.
    ReserveWeRo,
    /// 3: WRITE(10) of one block (block 1, the probe pattern).
    Write,
    /// 4: PREEMPT AND ABORT `other`'s registration (and its reservation),
    /// type Write Exclusive - Registrants Only, with `key`.
    PreemptAbort,
    /// 5: PERSISTENT RESERVE IN, READ KEYS (reported).
    ReadKeys,
    /// 6: READ(10) of one block.
    Read,
}

impl PrOp {
    /// The operation of digit `d`.
    pub fn from_digit(d: u64) -> Option<PrOp> {
        Some(match d {
            1 => PrOp::RegisterIgnore,
            2 => PrOp::ReserveWeRo,
            3 => PrOp::Write,
            4 => PrOp::PreemptAbort,
            5 => PrOp::ReadKeys,
            6 => PrOp::Read,
            _ => return None,
        })
    }

    /// Its name in reports.
    pub const fn name(self) -> &'static str {
        match self {
            PrOp::RegisterIgnore => "register-ignore",
            PrOp::ReserveWeRo => "reserve-wero",
            PrOp::Write => "write",
            PrOp::PreemptAbort => "preempt-abort",
            PrOp::ReadKeys => "read-keys",
            PrOp::Read => "read",
        }
    }
}

/// The operations of `ops`, first digit first; `None` for a digit that is
/// no operation.
pub fn pr_ops(ops: u64) -> Option<([PrOp; 19], usize)> {
    let mut digits = [PrOp::Read; 19];
    let mut n = 0;
    let mut rest = ops;
    while rest > 0 {
        digits[n] = PrOp::from_digit(rest % 10)?;
        n += 1;
        rest /= 10;
    }
    digits[..n].reverse();
    Some((digits, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_in_order_and_hash_known_value() {
        let (ops, n) = pr_ops(1234).unwrap();
        assert_eq!(
            &ops[..n],
            &[
                PrOp::RegisterIgnore,
                PrOp::ReserveWeRo,
                PrOp::Write,
                PrOp::PreemptAbort
            ]
        );
        assert!(pr_ops(17).is_none());
        assert_eq!(pr_ops(0).unwrap().1, 0);
        // FNV-1a 64 of "a".
        assert_eq!(fnv1a64(FNV_START, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            fnv1a64(fnv1a64(FNV_START, b"ab"), b"c"),
            fnv1a64(FNV_START, b"abc")
        );
    }
}
