use super::*;
use crate::sense::Asc;

fn n(i: u32) -> NexusId {
    NexusId::Virtio {
        vm: format!("vm{i}"),
        controller: 0,
    }
}

fn p(key: u64, sa_key: u64) -> PrOutParams {
    PrOutParams {
        key,
        sa_key,
        aptpl: false,
    }
}

fn reg(s: &mut PrState, who: u32, key: u64) {
    s.out(&n(who), PrOutAction::RegisterAndIgnore, 0, 0, &p(0, key))
        .unwrap();
}

#[test]
fn params_are_checked() {
    let mut d = [0u8; 24];
    d[7] = 1;
    d[15] = 2;
    d[20] = 1;
    assert_eq!(
        PrOutParams::parse(24, &d).unwrap(),
        PrOutParams {
            key: 1,
            sa_key: 2,
            aptpl: true
        }
    );
    assert_eq!(PrOutParams::parse(23, &d), Err(Sense::param_list_length()));
    assert_eq!(
        PrOutParams::parse(24, &d[..20]),
        Err(Sense::param_list_length())
    );
    d[20] = 0x08;
    assert_eq!(
        PrOutParams::parse(24, &d),
        Err(Sense::invalid_param(20, Some(3)))
    );
    d[20] = 0x04;
    assert_eq!(
        PrOutParams::parse(24, &d),
        Err(Sense::invalid_param(20, Some(2)))
    );
}

#[test]
fn register_rules_and_generation() {
    let mut s = PrState::default();
    // REGISTER with a key while unregistered: conflict.
    assert_eq!(
        s.out(&n(1), PrOutAction::Register, 0, 0, &p(5, 6)),
        Err(PrError::Conflict)
    );
    s.out(&n(1), PrOutAction::Register, 0, 0, &p(0, 6)).unwrap();
    assert_eq!(s.generation, 1);
    assert_eq!(s.key_of(&n(1)), Some(6));
    // Wrong key: conflict; right key changes it.
    assert_eq!(
        s.out(&n(1), PrOutAction::Register, 0, 0, &p(5, 7)),
        Err(PrError::Conflict)
    );
    s.out(&n(1), PrOutAction::Register, 0, 0, &p(6, 7)).unwrap();
    assert_eq!(s.key_of(&n(1)), Some(7));
    s.out(&n(1), PrOutAction::RegisterAndIgnore, 0, 0, &p(99, 8))
        .unwrap();
    assert_eq!(s.key_of(&n(1)), Some(8));
    // Unregister.
    s.out(&n(1), PrOutAction::Register, 0, 0, &p(8, 0)).unwrap();
    assert_eq!(s.key_of(&n(1)), None);
    assert_eq!(s.generation, 4);
}

#[test]
fn reserve_release_and_type_checks() {
    let mut s = PrState::default();
    reg(&mut s, 1, 0xA);
    reg(&mut s, 2, 0xB);
    let g = s.generation;
    assert_eq!(
        s.out(&n(1), PrOutAction::Reserve, 0, 2, &p(0xA, 0)),
        Err(PrError::Check(Sense::invalid_cdb(2, Some(3))))
    );
    assert_eq!(
        s.out(&n(1), PrOutAction::Reserve, 1, 1, &p(0xA, 0)),
        Err(PrError::Check(Sense::invalid_cdb(2, Some(7))))
    );
    s.out(&n(1), PrOutAction::Reserve, 0, 5, &p(0xA, 0))
        .unwrap();
    // Reserving again with the same type is fine; another type or
    // another nexus conflicts.
    s.out(&n(1), PrOutAction::Reserve, 0, 5, &p(0xA, 0))
        .unwrap();
    assert_eq!(
        s.out(&n(1), PrOutAction::Reserve, 0, 1, &p(0xA, 0)),
        Err(PrError::Conflict)
    );
    assert_eq!(
        s.out(&n(2), PrOutAction::Reserve, 0, 5, &p(0xB, 0)),
        Err(PrError::Conflict)
    );
    assert_eq!(s.generation, g, "RESERVE does not count");
    // A release of the wrong type.
    assert_eq!(
        s.out(&n(1), PrOutAction::Release, 0, 1, &p(0xA, 0)),
        Err(PrError::Check(Sense::illegal(Asc::INVALID_RELEASE_OF_PR)))
    );
    // A non-holder's release succeeds and does nothing.
    s.out(&n(2), PrOutAction::Release, 0, 5, &p(0xB, 0))
        .unwrap();
    assert!(s.reservation.is_some());
    s.out(&n(1), PrOutAction::Release, 0, 5, &p(0xA, 0))
        .unwrap();
    assert!(s.reservation.is_none());
    assert_eq!(
        s.take_pending(&n(2)),
        vec![UnitAttention::ReservationsReleased]
    );
    assert!(s.take_pending(&n(1)).is_empty());
}

#[test]
fn access_matrix_of_all_six_types() {
    use AccessClass::*;
    // (type, holder read/write, registrant read/write, other read/write)
    let table = [
        (1, [true, true], [true, false], [true, false]),
        (3, [true, true], [false, false], [false, false]),
        (5, [true, true], [true, true], [true, false]),
        (6, [true, true], [true, true], [false, false]),
        (7, [true, true], [true, true], [true, false]),
        (8, [true, true], [true, true], [false, false]),
    ];
    for (code, holder, registrant, other) in table {
        let mut s = PrState::default();
        reg(&mut s, 1, 1);
        reg(&mut s, 2, 2);
        s.out(&n(1), PrOutAction::Reserve, 0, code, &p(1, 0))
            .unwrap();
        for (who, want) in [(1, holder), (2, registrant), (3, other)] {
            assert_eq!(
                s.allows(&n(who), Read),
                want[0],
                "type {code} nexus {who} read"
            );
            assert_eq!(
                s.allows(&n(who), Write),
                want[1],
                "type {code} nexus {who} write"
            );
            assert!(s.allows(&n(who), Always));
        }
    }
}

#[test]
fn preempt_cases() {
    // The holder's key: its registrations go, the reservation moves.
    let mut s = PrState::default();
    reg(&mut s, 1, 1);
    reg(&mut s, 2, 2);
    s.out(&n(1), PrOutAction::Reserve, 0, 1, &p(1, 0)).unwrap();
    let o = s.out(&n(2), PrOutAction::Preempt, 0, 3, &p(2, 1)).unwrap();
    assert_eq!(o.preempted, vec![n(1)]);
    assert_eq!(s.key_of(&n(1)), None);
    assert_eq!(s.reservation.as_ref().unwrap().holder, n(2));
    assert_eq!(
        s.reservation.as_ref().unwrap().rtype,
        ReservationType::ExclusiveAccess
    );
    assert_eq!(
        s.take_pending(&n(1)),
        vec![UnitAttention::RegistrationsPreempted]
    );
    // A key nobody has: conflict; key 0 without an all-registrants
    // reservation: invalid field.
    assert_eq!(
        s.out(&n(2), PrOutAction::Preempt, 0, 3, &p(2, 9)),
        Err(PrError::Conflict)
    );
    assert_eq!(
        s.out(&n(2), PrOutAction::Preempt, 0, 3, &p(2, 0)),
        Err(PrError::Check(Sense::invalid_param(8, None)))
    );
    // All registrants with key 0: everyone else goes.
    let mut s = PrState::default();
    reg(&mut s, 1, 1);
    reg(&mut s, 2, 2);
    reg(&mut s, 3, 3);
    s.out(&n(1), PrOutAction::Reserve, 0, 7, &p(1, 0)).unwrap();
    let o = s
        .out(&n(2), PrOutAction::PreemptAndAbort, 0, 5, &p(2, 0))
        .unwrap();
    assert_eq!(o.preempted, vec![n(1), n(3)]);
    assert_eq!(s.registrations.len(), 1);
    assert!(s.is_holder(&n(2)));
    // Unregistered nexus: conflict.
    assert_eq!(
        s.out(&n(4), PrOutAction::Preempt, 0, 5, &p(0, 2)),
        Err(PrError::Conflict)
    );
}

#[test]
fn clear_and_holder_unregistration() {
    let mut s = PrState::default();
    reg(&mut s, 1, 1);
    reg(&mut s, 2, 2);
    s.out(&n(1), PrOutAction::Reserve, 0, 6, &p(1, 0)).unwrap();
    // The holder unregisters: a registrants-only reservation goes and
    // the others hear RESERVATIONS RELEASED.
    s.out(&n(1), PrOutAction::Register, 0, 0, &p(1, 0)).unwrap();
    assert!(s.reservation.is_none());
    assert_eq!(
        s.take_pending(&n(2)),
        vec![UnitAttention::ReservationsReleased]
    );
    reg(&mut s, 1, 1);
    s.out(&n(2), PrOutAction::Reserve, 0, 8, &p(2, 0)).unwrap();
    // All registrants: the reservation stays while someone is registered.
    s.out(&n(2), PrOutAction::Register, 0, 0, &p(2, 0)).unwrap();
    assert!(s.reservation.is_some());
    assert!(s.is_holder(&n(1)));
    reg(&mut s, 2, 2);
    s.out(&n(2), PrOutAction::Clear, 0, 0, &p(2, 0)).unwrap();
    assert!(s.registrations.is_empty() && s.reservation.is_none());
    assert_eq!(
        s.take_pending(&n(1)),
        vec![UnitAttention::ReservationsPreempted]
    );
    assert!(s.take_pending(&n(2)).is_empty());
}

#[test]
fn in_data_and_saved_form() {
    let mut s = PrState::default();
    reg(&mut s, 1, 0x1111);
    reg(&mut s, 2, 0x2222);
    s.out(&n(1), PrOutAction::Reserve, 0, 5, &p(0x1111, 0))
        .unwrap();
    let k = s.in_data(PrInAction::ReadKeys);
    assert_eq!(&k[..8], &[0, 0, 0, 2, 0, 0, 0, 16]);
    assert_eq!(&k[8..16], &0x1111u64.to_be_bytes());
    let r = s.in_data(PrInAction::ReadReservation);
    assert_eq!(r.len(), 24);
    assert_eq!(&r[8..16], &0x1111u64.to_be_bytes());
    assert_eq!(r[21], 5);
    let c = s.in_data(PrInAction::ReportCapabilities);
    assert_eq!(c, vec![0, 8, 1, 0x80, 0xEA, 1, 0, 0]);
    let f = s.in_data(PrInAction::ReadFullStatus);
    let len = u32::from_be_bytes([f[4], f[5], f[6], f[7]]) as usize;
    assert_eq!(f.len(), 8 + len);
    assert_eq!(f[8 + 12], 1, "first registrant holds it");
    assert_eq!(f[8 + 13], 5);
    let saved = s.save();
    let json = serde_json::to_string(&saved).unwrap();
    let back: PrSaved = serde_json::from_str(&json).unwrap();
    assert_eq!(PrState::restore(&back).unwrap(), s);
    let mut bad = saved.clone();
    bad.version = 9;
    assert_eq!(PrState::restore(&bad), Err(SavedPrError::Version(9)));
    let mut bad = saved;
    bad.registrations.remove(0);
    assert_eq!(
        PrState::restore(&bad),
        Err(SavedPrError::HolderNotRegistered)
    );
    // Power loss without APTPL drops it all.
    s.power_loss();
    assert!(s.registrations.is_empty());
}
