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
}

impl WorkloadKind {
    /// Every workload with its name, for help texts.
    pub const ALL: [WorkloadKind; 5] = [
        WorkloadKind::Hello,
        WorkloadKind::Vcpus,
        WorkloadKind::Dirty,
        WorkloadKind::Verify,
        WorkloadKind::Touch,
    ];

    /// The name used in workload strings.
    pub const fn name(self) -> &'static str {
        match self {
            WorkloadKind::Hello => "hello",
            WorkloadKind::Vcpus => "vcpus",
            WorkloadKind::Dirty => "dirty",
            WorkloadKind::Verify => "verify",
            WorkloadKind::Touch => "touch",
        }
    }

    const fn keys(self) -> &'static [&'static str] {
        match self {
            WorkloadKind::Hello | WorkloadKind::Vcpus | WorkloadKind::Verify => &[],
            WorkloadKind::Dirty => &["mib", "rate"],
            WorkloadKind::Touch => &["pages", "span", "seed"],
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
            ParseError::BadValue { param } => {
                write!(f, "bad probe parameter '{param}': expected KEY=NUMBER")
            }
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
        let (key, value) = param.split_once('=').ok_or(ParseError::BadValue { param })?;
        let Some(&key_static) = kind.keys().iter().find(|k| **k == key) else {
            return Err(ParseError::UnknownKey {
                workload: kind.name(),
                key,
            });
        };
        let value: u64 = value.parse().map_err(|_| ParseError::BadValue { param })?;
        match key_static {
            "mib" => step.mib = value,
            "rate" => step.rate = value,
            "pages" => step.pages = value,
            "span" => step.span = value,
            "seed" => step.seed = value,
            _ => unreachable!("keys() lists only the keys above"),
        }
    }
    for (key, value) in [("mib", step.mib), ("pages", step.pages), ("span", step.span)] {
        if value == 0 {
            return Err(ParseError::Zero { key });
        }
    }
    Ok(step)
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
    fn unknown_workload_message_lists_known_ones() {
        extern crate std;
        use std::string::ToString;
        let msg = parse("nope").unwrap_err().to_string();
        assert!(msg.contains("unknown probe workload 'nope'"), "{msg}");
        assert!(msg.contains("dirty"), "{msg}");
    }
}
