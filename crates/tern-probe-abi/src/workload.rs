//! The workload grammar: `STEP[+STEP...]`, each `NAME[,KEY=VALUE...]`.
//!
//! Examples: `hello`, `vcpus`, `dirty,mib=64,rate=100+verify`,
//! `touch,pages=32,span=16,seed=7`. Parsed by the VMM (to refuse a bad string
//! before boot) and again by the guest.

use core::fmt;

/// Most steps in one workload string.
pub const MAX_STEPS: usize = 8;

/// What a step does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    /// Print a greeting and finish.
    Hello,
    /// Every vCPU checks in; passes once all did.
    Vcpus,
    /// Rewrite `mib` MiB at `rate` MiB/s (0: as fast as possible), stamping
    /// each page with its index and generation, until told to stop.
    Dirty,
    /// Check every stamp the `dirty` step left.
    Verify,
    /// On each round the VMM asks for, write `pages` pages chosen by
    /// [`crate::stamp::touch_page`] within `span` MiB; until told to stop.
    Touch,
    /// Write a pattern over `mib` MiB of disk `disk` (0: the whole disk),
    /// read it back, report mismatches.
    BlkVerify,
    /// Read `mib` MiB of disk `disk` (0: the whole disk) and check the
    /// pattern `blk-verify` wrote there, writing nothing (after a disk
    /// moved: a migration, a copy).
    BlkCheck,
    /// Run `mix` I/O of `bs` bytes at queue depth `qd` for `secs` seconds
    /// on disk `disk`; report the IOPS achieved.
    BlkIops,
    /// Watch disk `disk`'s capacity, report each change; until told to stop.
    BlkCapacity,
    /// Discard disk `disk` from `from` MiB to its end and release that tail.
    BlkTrim,
    /// Read lines typed on the serial port and print each back as
    /// `echo: LINE`; the line `quit` ends the step.
    Echo,
    /// Bring up NIC `nic` at address `ip` (`A.B.C.D/PREFIX`): answer ARP
    /// and ping, and echo every byte sent to TCP port `port`; until told
    /// to stop.
    Net,
    /// Write the pattern of [`crate::blk`] over `mib` MiB (0: all) of SCSI
    /// LUN `lun` (512-byte blocks), read it back, report mismatches.
    ScsiVerify,
    /// Read the whole medium of SCSI DVD drive `lun` and report its size
    /// and [`crate::scsi::fnv1a64`] hash, for the host to compare with the
    /// ISO's bytes.
    ScsiDvdRead,
    /// Until told to stop: report every virtio-scsi event and every unit
    /// attention LUN `lun` answers TEST UNIT READY with; `prevent=1` first
    /// holds PREVENT MEDIUM REMOVAL on it, `prevent=2` allows it again
    /// at the end.
    ScsiWatch,
    /// Run the persistent-reservation operations in `ops` (decimal digits,
    /// first to last, see [`crate::scsi::PrOp`]) on LUN `lun` with
    /// reservation key `key` (`other`: the key PREEMPT AND ABORT removes);
    /// one report line per operation with its SCSI status and sense.
    ScsiPr,
    /// Bring up the vsock device: listen on port `port` and echo every
    /// byte on every connection (many at once); with `connect=P`, also
    /// connect to the host (CID 2) port P and echo there, again after
    /// each transport reset; until told to stop.
    Vsock,
}

/// Access pattern of `blk-iops`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mix {
    /// Random reads.
    RandRead,
    /// Random writes.
    RandWrite,
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
}

impl Mix {
    /// The name used in workload strings.
    pub const fn name(self) -> &'static str {
        match self {
            Mix::RandRead => "randread",
            Mix::RandWrite => "randwrite",
            Mix::Read => "read",
            Mix::Write => "write",
        }
    }

    fn from_name(s: &str) -> Option<Self> {
        [Mix::RandRead, Mix::RandWrite, Mix::Read, Mix::Write]
            .into_iter()
            .find(|m| m.name() == s)
    }
}

impl WorkloadKind {
    /// Every workload with its name, for help texts.
    pub const ALL: [WorkloadKind; 17] = [
        WorkloadKind::Hello,
        WorkloadKind::Vcpus,
        WorkloadKind::Dirty,
        WorkloadKind::Verify,
        WorkloadKind::Touch,
        WorkloadKind::BlkVerify,
        WorkloadKind::BlkCheck,
        WorkloadKind::BlkIops,
        WorkloadKind::BlkCapacity,
        WorkloadKind::BlkTrim,
        WorkloadKind::Echo,
        WorkloadKind::Net,
        WorkloadKind::ScsiVerify,
        WorkloadKind::ScsiDvdRead,
        WorkloadKind::ScsiWatch,
        WorkloadKind::ScsiPr,
        WorkloadKind::Vsock,
    ];

    /// The name used in workload strings.
    pub const fn name(self) -> &'static str {
        match self {
            WorkloadKind::Hello => "hello",
            WorkloadKind::Vcpus => "vcpus",
            WorkloadKind::Dirty => "dirty",
            WorkloadKind::Verify => "verify",
            WorkloadKind::Touch => "touch",
            WorkloadKind::BlkVerify => "blk-verify",
            WorkloadKind::BlkCheck => "blk-check",
            WorkloadKind::BlkIops => "blk-iops",
            WorkloadKind::BlkCapacity => "blk-capacity",
            WorkloadKind::BlkTrim => "blk-trim",
            WorkloadKind::Echo => "echo",
            WorkloadKind::Net => "net",
            WorkloadKind::ScsiVerify => "scsi-verify",
            WorkloadKind::ScsiDvdRead => "scsi-dvd-read",
            WorkloadKind::ScsiWatch => "scsi-watch",
            WorkloadKind::ScsiPr => "scsi-pr",
            WorkloadKind::Vsock => "vsock",
        }
    }

    const fn keys(self) -> &'static [&'static str] {
        match self {
            WorkloadKind::Hello
            | WorkloadKind::Vcpus
            | WorkloadKind::Verify
            | WorkloadKind::Echo => &[],
            WorkloadKind::Dirty => &["mib", "rate"],
            WorkloadKind::Touch => &["pages", "span", "seed"],
            WorkloadKind::BlkVerify | WorkloadKind::BlkCheck => &["disk", "mib"],
            WorkloadKind::BlkIops => &["disk", "bs", "qd", "secs", "mix"],
            WorkloadKind::BlkCapacity => &["disk"],
            WorkloadKind::BlkTrim => &["disk", "from"],
            WorkloadKind::Net => &["nic", "ip", "port"],
            WorkloadKind::ScsiVerify => &["lun", "mib"],
            WorkloadKind::ScsiDvdRead => &["lun"],
            WorkloadKind::ScsiWatch => &["lun", "prevent"],
            WorkloadKind::ScsiPr => &["lun", "key", "other", "ops"],
            WorkloadKind::Vsock => &["port", "connect"],
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// One parsed step with its parameters (defaults filled in).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// What to do.
    pub kind: WorkloadKind,
    /// `dirty`: working set in MiB (default 16).
    pub mib: u64,
    /// `dirty`: MiB/s, 0 for unlimited (default 0).
    pub rate: u64,
    /// `touch`: pages per round (default 64).
    pub pages: u64,
    /// `touch`: span in MiB the pages are chosen from (default 16).
    pub span: u64,
    /// `touch`: seed (default 1).
    pub seed: u64,
    /// `blk-*`: disk index (default 0).
    pub disk: u64,
    /// `blk-iops`: request size in bytes (default 4096; suffixes k/m).
    pub bs: u64,
    /// `blk-iops`: queue depth (default 1).
    pub qd: u64,
    /// `blk-iops`: duration in seconds (default 10).
    pub secs: u64,
    /// `blk-iops`: access pattern (default randread).
    pub mix: Mix,
    /// `blk-trim`: first MiB to discard (default 0).
    pub from: u64,
    /// `net`: NIC index among the NICs (default 0).
    pub nic: u64,
    /// `net`: IPv4 address, big-endian (default 10.0.0.2).
    pub ip: u32,
    /// `net`: prefix length of `ip` (default 24).
    pub prefix: u8,
    /// `net`: TCP echo port; `vsock`: the port listened on (default 7).
    pub port: u16,
    /// `vsock`: the host port to connect to (0, the default: none).
    pub connect: u32,
    /// `scsi-*`: LUN number (default 0).
    pub lun: u64,
    /// `scsi-pr`: this initiator's reservation key (default 1).
    pub key: u64,
    /// `scsi-pr`: the key PREEMPT AND ABORT removes (default 2).
    pub other: u64,
    /// `scsi-pr`: the operations, one decimal digit each (default 1).
    pub ops: u64,
    /// `scsi-watch`: 1 holds PREVENT MEDIUM REMOVAL, 2 also allows it
    /// again at the end (default 0).
    pub prevent: u64,
}

impl Step {
    const fn new(kind: WorkloadKind) -> Self {
        Step {
            kind,
            mib: 16,
            rate: 0,
            pages: 64,
            span: 16,
            seed: 1,
            disk: 0,
            bs: 4096,
            qd: 1,
            secs: 10,
            mix: Mix::RandRead,
            from: 0,
            nic: 0,
            ip: u32::from_be_bytes([10, 0, 0, 2]),
            prefix: 24,
            port: 7,
            connect: 0,
            lun: 0,
            key: 1,
            other: 2,
            ops: 1,
            prevent: 0,
        }
    }
}

/// A parsed workload: up to [`MAX_STEPS`] steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Steps {
    steps: [Step; MAX_STEPS],
    len: usize,
}

impl Steps {
    /// The steps in order.
    pub fn as_slice(&self) -> &[Step] {
        &self.steps[..self.len]
    }
}

/// Why a workload string was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError<'a> {
    /// The string (or a step of it) is empty.
    Empty,
    /// No workload has this name.
    UnknownWorkload(&'a str),
    /// The workload takes no such parameter.
    UnknownKey {
        /// Workload name.
        workload: &'static str,
        /// The parameter given.
        key: &'a str,
    },
    /// A parameter is not `key=value` or its value is not a number.
    BadValue {
        /// The parameter text.
        param: &'a str,
    },
    /// A parameter that must be positive is zero.
    Zero {
        /// The parameter name.
        key: &'static str,
    },
    /// More than [`MAX_STEPS`] steps.
    TooManySteps,
}

impl fmt::Display for ParseError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Empty => write!(f, "empty probe workload"),
            ParseError::UnknownWorkload(name) => {
                write!(f, "unknown probe workload '{name}' (known:")?;
                for k in WorkloadKind::ALL {
                    write!(f, " {}", k.name())?;
                }
                write!(f, ")")
            }
            ParseError::UnknownKey { workload, key } => {
                write!(f, "probe workload '{workload}' has no parameter '{key}'")
            }
            ParseError::BadValue { param } => write!(
                f,
                "bad probe parameter '{param}': expected KEY=NUMBER (k/m/g suffix allowed) or mix=randread|randwrite|read|write"
            ),
            ParseError::Zero { key } => write!(f, "probe parameter '{key}' must be at least 1"),
            ParseError::TooManySteps => write!(f, "more than {MAX_STEPS} probe workload steps"),
        }
    }
}

/// Parses a workload string such as `dirty,mib=64,rate=100+verify`.
pub fn parse(text: &str) -> Result<Steps, ParseError<'_>> {
    let text = text.trim();
    if text.is_empty() {
        return Err(ParseError::Empty);
    }
    let mut out = Steps {
        steps: [Step::new(WorkloadKind::Hello); MAX_STEPS],
        len: 0,
    };
    for part in text.split('+') {
        if out.len == MAX_STEPS {
            return Err(ParseError::TooManySteps);
        }
        out.steps[out.len] = parse_step(part.trim())?;
        out.len += 1;
    }
    Ok(out)
}

fn parse_step(text: &str) -> Result<Step, ParseError<'_>> {
    let mut fields = text.split(',');
    let name = fields.next().unwrap_or("").trim();
    if name.is_empty() {
        return Err(ParseError::Empty);
    }
    let kind = WorkloadKind::from_name(name).ok_or(ParseError::UnknownWorkload(name))?;
    let mut step = Step::new(kind);
    for param in fields {
        let param = param.trim();
        let (key, value) = param
            .split_once('=')
            .ok_or(ParseError::BadValue { param })?;
        let Some(&key_static) = kind.keys().iter().find(|k| **k == key) else {
            return Err(ParseError::UnknownKey {
                workload: kind.name(),
                key,
            });
        };
        if key_static == "ip" {
            (step.ip, step.prefix) = parse_cidr(value).ok_or(ParseError::BadValue { param })?;
            continue;
        }
        if key_static == "mix" {
            step.mix = Mix::from_name(value).ok_or(ParseError::BadValue { param })?;
            continue;
        }
        let value = parse_number(value).ok_or(ParseError::BadValue { param })?;
        match key_static {
            "mib" => step.mib = value,
            "rate" => step.rate = value,
            "pages" => step.pages = value,
            "span" => step.span = value,
            "seed" => step.seed = value,
            "disk" => step.disk = value,
            "bs" => step.bs = value,
            "qd" => step.qd = value,
            "secs" => step.secs = value,
            "from" => step.from = value,
            "nic" => step.nic = value,
            "connect" => {
                step.connect = u32::try_from(value)
                    .ok()
                    .filter(|&p| p != u32::MAX)
                    .ok_or(ParseError::BadValue { param })?
            }
            "lun" => step.lun = value,
            "key" => step.key = value,
            "other" => step.other = value,
            "ops" => step.ops = value,
            "prevent" => step.prevent = value,
            "port" => {
                step.port = u16::try_from(value)
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or(ParseError::BadValue { param })?
            }
            _ => unreachable!("keys() lists only the keys above"),
        }
    }
    // blk-verify's mib=0 means the whole disk; elsewhere sizes must be > 0.
    let mib = if matches!(
        kind,
        WorkloadKind::BlkVerify | WorkloadKind::BlkCheck | WorkloadKind::ScsiVerify
    ) {
        1
    } else {
        step.mib
    };
    for (key, value) in [
        ("mib", mib),
        ("pages", step.pages),
        ("span", step.span),
        ("bs", step.bs),
        ("qd", step.qd),
        ("secs", step.secs),
    ] {
        if value == 0 {
            return Err(ParseError::Zero { key });
        }
    }
    if matches!(
        kind,
        WorkloadKind::BlkVerify | WorkloadKind::BlkCheck | WorkloadKind::ScsiVerify
    ) && !parsed_mib(text)
    {
        step.mib = 0;
    }
    Ok(step)
}

fn parsed_mib(step_text: &str) -> bool {
    step_text
        .split(',')
        .skip(1)
        .any(|p| p.trim().starts_with("mib="))
}

/// `A.B.C.D/PREFIX` (prefix 1..=32; without it, 24): the address as a
/// big-endian number and the prefix.
fn parse_cidr(text: &str) -> Option<(u32, u8)> {
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, p.parse::<u8>().ok().filter(|p| (1..=32).contains(p))?),
        None => (text, 24),
    };
    let mut b = [0u8; 4];
    let mut parts = addr.split('.');
    for x in &mut b {
        *x = parts.next()?.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some((u32::from_be_bytes(b), prefix))
}

/// A decimal number with an optional binary suffix `k`, `m` or `g`.
fn parse_number(text: &str) -> Option<u64> {
    let (digits, shift) = match text.as_bytes().last()? {
        b'k' | b'K' => (&text[..text.len() - 1], 10),
        b'm' | b'M' => (&text[..text.len() - 1], 20),
        b'g' | b'G' => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_chains_with_defaults() {
        let steps = parse("dirty,mib=64,rate=100+verify").unwrap();
        let s = steps.as_slice();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].kind, WorkloadKind::Dirty);
        assert_eq!((s[0].mib, s[0].rate), (64, 100));
        assert_eq!(s[1].kind, WorkloadKind::Verify);
        let hello = parse(" hello ").unwrap();
        assert_eq!(hello.as_slice()[0], Step::new(WorkloadKind::Hello));
    }

    #[test]
    fn refuses_bad_strings_with_the_offending_part() {
        assert_eq!(parse(""), Err(ParseError::Empty));
        assert_eq!(parse("hello+"), Err(ParseError::Empty));
        assert_eq!(parse("bogus"), Err(ParseError::UnknownWorkload("bogus")));
        assert_eq!(
            parse("hello,mib=3"),
            Err(ParseError::UnknownKey {
                workload: "hello",
                key: "mib"
            })
        );
        assert_eq!(
            parse("dirty,mib=lots"),
            Err(ParseError::BadValue { param: "mib=lots" })
        );
        assert_eq!(
            parse("dirty,mib"),
            Err(ParseError::BadValue { param: "mib" })
        );
        assert_eq!(parse("dirty,mib=0"), Err(ParseError::Zero { key: "mib" }));
        assert_eq!(
            parse("hello+hello+hello+hello+hello+hello+hello+hello+hello"),
            Err(ParseError::TooManySteps)
        );
    }

    #[test]
    fn parses_block_workloads() {
        let s = parse("blk-iops,bs=64k,qd=32,secs=3,mix=randwrite,disk=1").unwrap();
        let s = s.as_slice()[0];
        assert_eq!(s.kind, WorkloadKind::BlkIops);
        assert_eq!((s.bs, s.qd, s.secs, s.disk), (65536, 32, 3, 1));
        assert_eq!(s.mix, Mix::RandWrite);
        let v = parse("blk-verify").unwrap().as_slice()[0];
        assert_eq!((v.kind, v.mib), (WorkloadKind::BlkVerify, 0));
        let v = parse("blk-verify,mib=8+blk-trim,from=4").unwrap();
        assert_eq!(v.as_slice()[0].mib, 8);
        assert_eq!(v.as_slice()[1].from, 4);
        assert_eq!(
            parse("blk-iops,mix=sideways"),
            Err(ParseError::BadValue {
                param: "mix=sideways"
            })
        );
        assert_eq!(parse("blk-iops,qd=0"), Err(ParseError::Zero { key: "qd" }));
        assert_eq!(
            parse("blk-iops,bs=99999999999g"),
            Err(ParseError::BadValue {
                param: "bs=99999999999g"
            })
        );
    }

    #[test]
    fn parses_net_workloads() {
        let s = parse("net,ip=192.168.7.9/16,port=5000,nic=1")
            .unwrap()
            .as_slice()[0];
        assert_eq!(s.kind, WorkloadKind::Net);
        assert_eq!(s.ip, u32::from_be_bytes([192, 168, 7, 9]));
        assert_eq!((s.prefix, s.port, s.nic), (16, 5000, 1));
        let d = parse("net").unwrap().as_slice()[0];
        assert_eq!((d.ip, d.prefix, d.port), (0x0a00_0002, 24, 7));
        assert_eq!(parse("net,ip=10.1.2.3").unwrap().as_slice()[0].prefix, 24);
        for bad in [
            "ip=10.0.0",
            "ip=10.0.0.256/24",
            "ip=10.0.0.1/33",
            "ip=10.0.0.1/0",
            "ip=1.2.3.4.5",
            "port=0",
            "port=70000",
        ] {
            extern crate std;
            let text = std::format!("net,{bad}");
            assert_eq!(
                parse(&text),
                Err(ParseError::BadValue { param: bad }),
                "{bad}"
            );
        }
    }

    #[test]
    fn parses_vsock_workloads() {
        let s = parse("vsock,port=1234,connect=5000").unwrap().as_slice()[0];
        assert_eq!(s.kind, WorkloadKind::Vsock);
        assert_eq!((s.port, s.connect), (1234, 5000));
        let d = parse("vsock").unwrap().as_slice()[0];
        assert_eq!((d.port, d.connect), (7, 0));
        for bad in ["connect=4294967295", "connect=x", "port=0"] {
            extern crate std;
            let text = std::format!("vsock,{bad}");
            assert_eq!(
                parse(&text),
                Err(ParseError::BadValue { param: bad }),
                "{bad}"
            );
        }
    }

    #[test]
    fn unknown_workload_message_lists_known_ones() {
        extern crate std;
        use std::string::ToString;
        let msg = parse("nope").unwrap_err().to_string();
        assert!(msg.contains("unknown probe workload 'nope'"), "{msg}");
        assert!(msg.contains("dirty"), "{msg}");
    }
}
