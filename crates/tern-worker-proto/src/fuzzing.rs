//! Entry points fuzzers drive (`fuzz/`, and the stable fallback in this
//! module's tests): a worker's request lines, a client's reply lines and
//! launch spec documents, as their readers meet them. Errors are fine; a
//! panic, or a value that does not survive its own encoding, is a bug.

use crate::hello::HelloReply;
use crate::migration::{MigrateReply, MigrationStatus};
use crate::requests::{
    Ack, CheckpointCreateReply, CheckpointListReply, DiskQosReply, EventsReply, SaveReply,
    StateReply, StatusReply,
};
use crate::wire::{decode_reply, encode_reply};
use crate::{LaunchSpec, Request};

/// Decodes `data` as a request line, as replies of several types and as a
/// launch spec; whatever decodes must decode to the same value again from
/// its own encoding. Returns how many of the readers accepted it.
pub fn decode(data: &[u8]) -> usize {
    let Ok(text) = std::str::from_utf8(data) else {
        return 0;
    };
    let mut accepted = 0;
    if let Ok(req) = Request::decode(text) {
        let again = Request::decode(&req.encode());
        assert_eq!(again.as_ref().ok(), Some(&req), "{text:?}");
        accepted += 1;
    }
    accepted += reply::<HelloReply>(text)
        + reply::<StatusReply>(text)
        + reply::<StateReply>(text)
        + reply::<Ack>(text)
        + reply::<DiskQosReply>(text)
        + reply::<EventsReply>(text)
        + reply::<SaveReply>(text)
        + reply::<CheckpointCreateReply>(text)
        + reply::<CheckpointListReply>(text)
        + reply::<MigrateReply>(text)
        + reply::<MigrationStatus>(text);
    if let Ok(spec) = LaunchSpec::parse(text) {
        let again = LaunchSpec::parse(&spec.to_json());
        assert_eq!(again.as_ref().ok(), Some(&spec), "{text:?}");
        accepted += 1;
    }
    accepted
}

/// 1 if `text` is a reply of type `T`; its encoding must read back the same.
fn reply<T>(text: &str) -> usize
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let Ok(r) = decode_reply::<T>(text) else {
        return 0;
    };
    let again = decode_reply::<T>(&encode_reply(&r));
    match (&r, again) {
        (Ok(a), Ok(Ok(b))) => assert_eq!(a, &b, "{text:?}"),
        (Err(a), Ok(Err(b))) => assert_eq!(a.code, b.code, "{text:?}"),
        (_, again) => panic!("{text:?} read back as {again:?}"),
    }
    1
}

/// Valid inputs for [`decode`], encoded from typed values: requests,
/// replies and a refusal, and a launch spec of a probe guest with a disk.
pub fn decode_seeds() -> Vec<Vec<u8>> {
    use crate::requests::{CheckpointCreate, ConsoleInput, DiskQos, DiskResize, Save, Status};
    use crate::{Capability, Endpoint, VmState, WorkerError};
    let requests: Vec<Request> = vec![
        crate::Hello {}.into(),
        Status {}.into(),
        DiskQos {
            disk: 1,
            max_iops: Some(100),
            min_iops: None,
            max_bw: Some(1 << 20),
        }
        .into(),
        DiskResize {
            disk: 0,
            size: 64 << 20,
        }
        .into(),
        ConsoleInput {
            bytes: b"ls\r".to_vec(),
        }
        .into(),
        Save {
            dir: "/tmp/saved vm".into(),
        }
        .into(),
        CheckpointCreate {
            name: "c1".into(),
            memory: false,
        }
        .into(),
        crate::migration::Migrate {
            channels: 2,
            bandwidth: Some(125_000_000),
            ..crate::migration::Migrate::to(Endpoint::Tcp {
                host: "10.0.0.2".into(),
                port: 7000,
            })
        }
        .into(),
    ];
    let mut seeds: Vec<String> = requests.iter().map(Request::encode).collect();
    seeds.push(encode_reply(&Ok(StateReply {
        state: VmState::Paused,
    })));
    seeds.push(encode_reply(&Ok(HelloReply {
        protocol: crate::PROTOCOL_VERSION,
        product: "0.1.0".into(),
        launch_spec: crate::LAUNCH_SPEC_VERSION,
        capabilities: vec![Capability::SaveRestore, Capability::Migration],
    })));
    seeds.push(encode_reply::<Ack>(&Err(WorkerError::not_found(
        "no disk 3",
    ))));
    let mut spec = LaunchSpec::new(
        2,
        128 << 20,
        crate::launch::GuestSpec::Probe {
            image: None,
            workload: "dirty,mib=16".into(),
        },
    );
    let mut disk = crate::DiskSpec::new("/v/a,readonly=1.img");
    disk.qos.max_bw = 1 << 20;
    spec.disks.push(disk);
    seeds.push(spec.to_json());
    seeds.into_iter().map(String::into_bytes).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_are_accepted() {
        for s in decode_seeds() {
            assert!(decode(&s) > 0, "{}", String::from_utf8_lossy(&s));
        }
        assert_eq!(decode(b"{\"cmd\":\"explode\"}"), 0);
    }

    /// The stable fallback: prefixes and single-byte changes of every seed.
    #[test]
    fn seeds_and_their_mutations_never_panic() {
        for seed in decode_seeds() {
            for cut in 0..seed.len() {
                decode(&seed[..cut]);
            }
            let mut m = seed.clone();
            for at in (0..m.len()).step_by(3) {
                for x in [b'"', b'}', b'0', 0xff] {
                    let old = m[at];
                    m[at] = x;
                    decode(&m);
                    m[at] = old;
                }
            }
        }
    }
}
