//! Entry points fuzzers drive (`fuzz/`, and the stable fallback in this
//! module's tests): JSON bodies of the REST API, requests as the daemon
//! reads them and replies as the client reads them. Errors are fine; a
//! panic, or a value that does not read back from its own encoding, is a
//! bug.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::types::*;

/// Decodes `data` as every request body and several reply bodies; what
/// decodes must encode to JSON that decodes to the same encoding again.
/// Sizes given as text go through [`parse_size`] too. Returns how many
/// types accepted it.
pub fn json_bodies(data: &[u8]) -> usize {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_size(text);
    }
    round_trip::<CreateVm>(data)
        + round_trip::<CreateDisk>(data)
        + round_trip::<ResizeDisk>(data)
        + round_trip::<AttachDisk>(data)
        + round_trip::<DiskQos>(data)
        + round_trip::<CreateCheckpoint>(data)
        + round_trip::<StartMigration>(data)
        + round_trip::<IncomingMigration>(data)
        + round_trip::<IncomingReady>(data)
        + round_trip::<Vm>(data)
        + round_trip::<VmList>(data)
        + round_trip::<Disk>(data)
        + round_trip::<Migration>(data)
        + round_trip::<EventList>(data)
        + round_trip::<HostInfo>(data)
        + round_trip::<ApiError>(data)
}

/// 1 if `data` is a `T`; its encoding must read back to the same encoding.
fn round_trip<T: Serialize + DeserializeOwned>(data: &[u8]) -> usize {
    let Ok(v) = serde_json::from_slice::<T>(data) else {
        return 0;
    };
    let Ok(first) = serde_json::to_value(&v) else {
        // Only maps with non-string keys fail to encode; none here.
        panic!("a decoded {} does not encode", std::any::type_name::<T>());
    };
    let again: T = serde_json::from_value(first.clone()).unwrap_or_else(|e| {
        panic!(
            "{} {first} does not read back: {e}",
            std::any::type_name::<T>()
        )
    });
    let second = serde_json::to_value(&again).ok();
    assert_eq!(
        second.as_ref(),
        Some(&first),
        "{}",
        std::any::type_name::<T>()
    );
    1
}

/// Valid bodies for [`json_bodies`].
pub fn json_bodies_seeds() -> Vec<Vec<u8>> {
    [
        r#"{"name":"web-1","vcpus":2,"memory":"512M","guest":"probe:hello","disks":["d1"]}"#,
        r#"{"name":"v","guest":"probe:dirty,mib=16","memory":67108864}"#,
        r#"{"name":"d1","size":"64MiB","format":"vhdx","path":"/v/d1.img"}"#,
        r#"{"size":"1G"}"#,
        r#"{"disk":"d1"}"#,
        r#"{"max_iops":100,"min_iops":10}"#,
        r#"{"name":"before-upgrade"}"#,
        r#"{"to":"http://10.0.0.2:7391","token":"secret"}"#,
        r#"{"error":"no such vm","code":"not_found"}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_seeds_are_accepted() {
        for s in &json_bodies_seeds()[..8] {
            assert!(json_bodies(s) > 0, "{}", String::from_utf8_lossy(s));
        }
        assert_eq!(
            json_bodies(br#"{"name":"x","guest":"probe:hello","bad":1}"#),
            0
        );
    }

    /// The stable fallback: prefixes and single-byte changes of every seed.
    #[test]
    fn seeds_and_their_mutations_never_panic() {
        for seed in json_bodies_seeds() {
            for cut in 0..seed.len() {
                json_bodies(&seed[..cut]);
            }
            let mut m = seed.clone();
            for at in 0..m.len() {
                for x in [b'"', b'}', b'9', b'-', 0xff] {
                    let old = m[at];
                    m[at] = x;
                    json_bodies(&m);
                    m[at] = old;
                }
            }
        }
    }
}
