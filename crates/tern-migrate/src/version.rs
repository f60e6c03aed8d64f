//! Protocol versions: which this build speaks, how a source and a
//! destination agree on one, and what each version has. Everything that
//! depends on the version number is here; the rest of the crate asks a
//! [`Version`].
//!
//! The N-1 rule: a build speaks [`PROTOCOL_VERSION`] and also the version
//! before it ([`MIN_PROTOCOL_VERSION`]), in both roles, so a host can be
//! upgraded while its VMs move away and back (a rolling upgrade).
//!
//! Agreement happens in the preamble of the control connection:
//!
//! - The source offers the newest version it speaks, and sends `Hello`
//!   only once the answer agrees (a refusing destination closes at once;
//!   a `Hello` it never read would turn that close into a reset).
//! - The destination answers with the version the session will speak:
//!   the lower of the two when it accepts the offer; its own newest when
//!   it refuses (too old an offer, or one newer than itself), followed by
//!   a refusing `Welcome`. A destination never accepts a version newer
//!   than its own: it cannot know what that version sends.
//! - An answer lower than the offer but one the source speaks means the
//!   destination is older. A release that accepts the offer would have
//!   answered the offer itself; an older one (up to version 3, whose
//!   destinations answer their own version and refuse every other) has
//!   refused it. So the source connects again, offering the destination's
//!   version, and that session speaks it. A refused attempt moves no
//!   memory and costs one round trip; the destination waits for the next
//!   attempt (version 3 does this too: its worker logs the refusal and
//!   listens on).
//! - Data channels open with the agreed version; the destination refuses
//!   a channel that names another.
//!
//! Capabilities beyond the version's baseline (codecs, disk mirroring)
//! are negotiated by fields of `Hello` and `Welcome` that older versions
//! leave empty, so a feature is off unless both ends name it; a version 3
//! peer never does.

use crate::wire::WireError;

/// The migration protocol version this build speaks when both ends can.
pub const PROTOCOL_VERSION: u32 = 4;
/// The oldest version this build speaks (as source and destination):
/// the previous release's, by the N-1 rule.
pub const MIN_PROTOCOL_VERSION: u32 = 3;

/// A protocol version this build speaks (within
/// `MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(u32);

impl Version {
    /// The newest version: what a source offers first.
    pub const NEWEST: Version = Version(PROTOCOL_VERSION);
    /// The oldest version this build still speaks.
    pub const OLDEST: Version = Version(MIN_PROTOCOL_VERSION);

    /// `v`, if this build speaks it.
    pub fn new(v: u32) -> Result<Version, WireError> {
        if (MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&v) {
            Ok(Version(v))
        } else {
            Err(WireError::Version {
                peer: v,
                min: MIN_PROTOCOL_VERSION,
                max: PROTOCOL_VERSION,
            })
        }
    }

    /// The number on the wire.
    pub fn get(self) -> u32 {
        self.0
    }

    /// Whether `Hello` and `Welcome` may carry capability fields (codecs,
    /// disks) added in version 4. A version 3 peer neither sends nor
    /// reads them (prost skips unknown fields, so sending them does no
    /// harm; a v3 `Welcome` simply never names one, and the feature stays
    /// off).
    pub fn has_capabilities(self) -> bool {
        self.0 >= 4
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What the destination does with a source's offer.
#[derive(Debug)]
pub struct Answer {
    /// The version to write in the answering preamble.
    pub preamble: u32,
    /// The session's version, or why the offer is refused.
    pub verdict: Result<Version, WireError>,
}

/// The destination's answer to a source offering `offer`.
pub fn answer(offer: u32) -> Answer {
    match Version::new(offer.min(PROTOCOL_VERSION)) {
        // Newer offers are answered with our own version: the source, if
        // it speaks ours, connects again offering it.
        Ok(v) if offer <= PROTOCOL_VERSION => Answer {
            preamble: v.get(),
            verdict: Ok(v),
        },
        _ => Answer {
            preamble: PROTOCOL_VERSION,
            verdict: Err(WireError::Version {
                peer: offer,
                min: MIN_PROTOCOL_VERSION,
                max: PROTOCOL_VERSION,
            }),
        },
    }
}

/// What the source does with the destination's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The destination speaks the offer: the session speaks it.
    Agreed(Version),
    /// The destination is older and refused the offer: connect again
    /// offering this version (which it speaks, and so do we).
    Older(Version),
}

/// Judges the destination's `answer` to the source's `offer`.
pub fn judge(offer: Version, answer: u32) -> Result<Reply, WireError> {
    if answer == offer.get() {
        return Ok(Reply::Agreed(offer));
    }
    match Version::new(answer) {
        Ok(v) if v < offer => Ok(Reply::Older(v)),
        // A destination answers no version above the offer; and one we do
        // not speak leaves nothing to try.
        _ => Err(WireError::Version {
            peer: answer,
            min: MIN_PROTOCOL_VERSION,
            max: PROTOCOL_VERSION,
        }),
    }
}

/// The destination's check of a data channel's preamble: it must name the
/// session's version.
pub fn check_channel(session: Version, channel: u32) -> Result<(), WireError> {
    if channel == session.get() {
        Ok(())
    } else {
        Err(WireError::Version {
            peer: channel,
            min: session.get(),
            max: session.get(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destination_answers_the_lower_version_or_refuses_with_its_own() {
        let a = answer(PROTOCOL_VERSION);
        assert_eq!(a.preamble, PROTOCOL_VERSION);
        assert_eq!(a.verdict.unwrap(), Version::NEWEST);
        // The previous release's source: the session speaks its version.
        let a = answer(MIN_PROTOCOL_VERSION);
        assert_eq!(a.preamble, MIN_PROTOCOL_VERSION);
        assert_eq!(a.verdict.unwrap(), Version::OLDEST);
        // Too old, and newer than us: refused, answered with our newest.
        for offer in [0, MIN_PROTOCOL_VERSION - 1, PROTOCOL_VERSION + 1, 99] {
            let a = answer(offer);
            assert_eq!(a.preamble, PROTOCOL_VERSION, "{offer}");
            let e = a.verdict.unwrap_err().to_string();
            assert!(e.contains(&format!("protocol {offer}")), "{e}");
        }
    }

    #[test]
    fn a_source_agrees_retries_with_an_older_destination_or_gives_up() {
        assert_eq!(
            judge(Version::NEWEST, PROTOCOL_VERSION).unwrap(),
            Reply::Agreed(Version::NEWEST)
        );
        // A version 3 destination answers 3 and refuses: offer 3 again.
        assert_eq!(
            judge(Version::NEWEST, MIN_PROTOCOL_VERSION).unwrap(),
            Reply::Older(Version::OLDEST)
        );
        assert_eq!(
            judge(Version::OLDEST, MIN_PROTOCOL_VERSION).unwrap(),
            Reply::Agreed(Version::OLDEST)
        );
        // Older than anything we speak, or above the offer: incompatible.
        assert!(judge(Version::NEWEST, MIN_PROTOCOL_VERSION - 1).is_err());
        assert!(judge(Version::OLDEST, PROTOCOL_VERSION).is_err());
        assert!(judge(Version::NEWEST, PROTOCOL_VERSION + 1).is_err());
    }

    #[test]
    fn both_ends_of_every_pair_of_versions_meet_on_the_lower() {
        // Model a destination of each version we speak answering each
        // offer the way `answer` does (a v3 one answers only its own).
        for dest in MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION {
            let mut offer = Version::NEWEST;
            let agreed = loop {
                let reply = if dest == PROTOCOL_VERSION {
                    answer(offer.get()).preamble
                } else {
                    dest
                };
                match judge(offer, reply).unwrap() {
                    Reply::Agreed(v) => break v,
                    Reply::Older(v) => offer = v,
                }
            };
            assert_eq!(agreed.get(), dest);
        }
    }

    #[test]
    fn channels_must_speak_the_sessions_version() {
        check_channel(Version::OLDEST, MIN_PROTOCOL_VERSION).unwrap();
        assert!(check_channel(Version::OLDEST, PROTOCOL_VERSION).is_err());
        assert!(Version::NEWEST.has_capabilities());
        assert!(!Version::OLDEST.has_capabilities());
    }
}
