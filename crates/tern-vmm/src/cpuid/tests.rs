//! The normalization's invariants on captured supported sets
//! (`testdata/`: this development machine's KVM PVM, the nested tier's L1
//! KVM, a hand-written Intel set with AVX-512).

use super::*;

const SETS: &[(&str, &str)] = &[
    ("pvm-amd-epyc", include_str!("testdata/pvm-amd-epyc.txt")),
    ("intel-avx512", include_str!("testdata/intel-avx512.txt")),
    (
        "nested-l1-tcg-max",
        include_str!("testdata/nested-l1-tcg-max.txt"),
    ),
];

fn sets() -> Vec<(&'static str, Vec<CpuidEntry>)> {
    SETS.iter()
        .map(|(name, text)| (*name, parse_dump(text).unwrap()))
        .collect()
}

/// Every component of `mask` has a subleaf with a size.
fn sizes_present(entries: &[CpuidEntry], mask: u64) -> bool {
    (2..64)
        .filter(|i| mask & (1u64 << i) != 0)
        .all(|i| find(entries, 0xd, i).is_some_and(|e| e.eax != 0))
}

#[test]
fn xsave_leaf_offers_only_components_whose_features_are_offered() {
    for (name, supported) in sets() {
        for model in [CpuModel::Host, CpuModel::Compat] {
            let g = GuestCpuid::build(&supported, model, 1).unwrap();
            let e = &g.entries;
            let xcr0 = xsave::offered_xcr0(e);
            let xss = xsave::offered_xss(e);
            let ctx = format!("{name} {model}: XCR0 {xcr0:#x} XSS {xss:#x}");
            // Nothing KVM does not support.
            assert_eq!(
                xcr0 & !xsave::offered_xcr0(&supported),
                0,
                "{ctx}: more than KVM supports"
            );
            let xsave = has(e, 1, 0, Reg::Ecx, 26);
            assert_eq!(xsave, xcr0 != 0, "{ctx}: XSAVE bit and XCR0 disagree");
            if xsave {
                assert_eq!(xcr0 & 3, 3, "{ctx}: x87|SSE");
            }
            // Component <=> feature, both ways (Linux's xsave_cpuid_features).
            let pairs = [
                (1u64 << 2, has(e, 1, 0, Reg::Ecx, 28), "AVX"),
                (0b11 << 3, has(e, 7, 0, Reg::Ebx, 14), "MPX"),
                (0b111 << 5, has(e, 7, 0, Reg::Ebx, 16), "AVX-512"),
                (1 << 9, has(e, 7, 0, Reg::Ecx, 3), "PKU"),
                (0b11 << 17, has(e, 7, 0, Reg::Edx, 24), "AMX"),
            ];
            for (bits, feature, what) in pairs {
                assert_eq!(
                    xcr0 & bits == bits,
                    feature,
                    "{ctx}: {what} component and feature disagree"
                );
                assert!(
                    xcr0 & bits == 0 || xcr0 & bits == bits,
                    "{ctx}: half of {what}"
                );
            }
            assert!(
                xcr0 & (0b111 << 5) == 0 || xcr0 & (1 << 2) != 0,
                "{ctx}: AVX-512 without AVX"
            );
            assert_eq!(
                xss & (0b11 << 11) != 0,
                has(e, 7, 0, Reg::Ecx, 7),
                "{ctx}: CET"
            );
            // Sizes: the standard-format maximum is the end of the last
            // offered component, the compacted one the sum with alignment.
            assert!(
                sizes_present(e, xcr0 | xss),
                "{ctx}: a component without a size"
            );
            if let Some(d0) = find(e, 0xd, 0).filter(|_| xsave) {
                let end = (2..64)
                    .filter(|i| xcr0 & (1u64 << i) != 0)
                    .map(|i| find(e, 0xd, i).map_or(0, |s| s.ebx + s.eax))
                    .max()
                    .unwrap_or(0)
                    .max(xsave::LEGACY_SIZE);
                assert_eq!(d0.ecx, end, "{ctx}: 0xD.0 ECX");
                assert_eq!(d0.ebx, xsave::LEGACY_SIZE, "{ctx}: 0xD.0 EBX at reset");
            }
            if let Some(d1) = find(e, 0xd, 1).filter(|d| d.eax & 0xa != 0) {
                assert_eq!(
                    d1.ebx,
                    xsave::area_size(e, xcr0 | xss, true),
                    "{ctx}: 0xD.1 EBX"
                );
            }
            // Subleaves of components not offered say nothing.
            for s in e.iter().filter(|s| s.function == 0xd && s.index >= 2) {
                if (xcr0 | xss) & (1u64 << s.index.min(63)) == 0 {
                    assert_eq!(
                        (s.eax, s.ebx, s.ecx, s.edx),
                        (0, 0, 0, 0),
                        "{ctx}: subleaf {}",
                        s.index
                    );
                }
            }
        }
    }
}

#[test]
fn the_intel_set_keeps_avx512_and_drops_mpx_pkru_and_cet() {
    let supported = parse_dump(SETS[1].1).unwrap();
    let g = GuestCpuid::build(&supported, CpuModel::Host, 1).unwrap();
    // x87, SSE, AVX, AVX-512 (opmask, ZMM_Hi256, Hi16_ZMM): not MPX (no
    // MPX feature), not PKRU (no PKU).
    assert_eq!(xsave::offered_xcr0(&g.entries), 0xe7);
    assert_eq!(xsave::offered_xss(&g.entries), 0, "CET without SHSTK");
    let d0 = g.get(0xd, 0).unwrap();
    // Hi16_ZMM ends the standard area: 1664 + 1024.
    assert_eq!(d0.ecx, 2688);
    // Compacted: 576 + 256 + 64 + 512 + 1024 (no alignment flags).
    assert_eq!(g.get(0xd, 1).unwrap().ebx, 2432);
    assert_eq!(g.get(0xd, 9).unwrap().eax, 0);
}

#[test]
fn the_nested_l1_set_keeps_avx_and_pkru_with_their_sizes() {
    // L1's KVM offers AVX and PKU with their components: all stay, and the
    // standard-format size is PKRU's end (2688 + 8), what Linux computes.
    let supported = parse_dump(SETS[2].1).unwrap();
    let g = GuestCpuid::build(&supported, CpuModel::Host, 1).unwrap();
    assert_eq!(xsave::offered_xcr0(&g.entries), 0x207);
    assert_eq!(g.get(0xd, 0).unwrap().ecx, 2696);
    // This host's PVM set lists x87|SSE|AVX|PKRU but offers no XSAVE
    // (leaf 1 ECX 26): leaf 0xD says nothing.
    let pvm = GuestCpuid::build(&parse_dump(SETS[0].1).unwrap(), CpuModel::Host, 1).unwrap();
    assert_eq!(xsave::offered_xcr0(&pvm.entries), 0);
}

#[test]
fn topology_describes_one_socket_of_n_cores() {
    for (name, supported) in sets() {
        let vendor = Vendor::of(&supported);
        for vcpus in [1u32, 2, 3, 4, 8, 64] {
            let g = GuestCpuid::build(&supported, CpuModel::Host, vcpus).unwrap();
            let ctx = format!("{name} with {vcpus} vCPUs");
            let l1 = g.get(1, 0).unwrap();
            assert_eq!((l1.ebx >> 16) & 0xff, vcpus, "{ctx}: leaf 1 logical count");
            assert_eq!((l1.ebx >> 8) & 0xff, 8, "{ctx}: CLFLUSH 64 bytes");
            assert_eq!(l1.edx & (1 << 28) != 0, vcpus > 1, "{ctx}: HTT");
            assert!(l1.ecx & (1 << 31) != 0, "{ctx}: hypervisor bit");
            if g.get(0xb, 0).is_some() {
                let (smt, core) = (g.get(0xb, 0).unwrap(), g.get(0xb, 1).unwrap());
                assert_eq!(
                    (smt.ebx & 0xffff, (smt.ecx >> 8) & 0xff),
                    (1, 1),
                    "{ctx}: SMT level"
                );
                assert_eq!(core.ebx & 0xffff, vcpus, "{ctx}: core level count");
                assert_eq!((core.ecx >> 8) & 0xff, 2, "{ctx}: core level type");
                assert!(
                    1u32 << core.eax >= vcpus,
                    "{ctx}: core shift holds every id"
                );
                assert_eq!((g.get(0xb, 2).unwrap().ecx >> 8) & 0xff, 0, "{ctx}: end");
            }
            for s in g
                .entries
                .iter()
                .filter(|e| e.function == 4 && e.eax & 0x1f != 0)
            {
                let sharing = ((s.eax >> 14) & 0xfff) + 1;
                let level = (s.eax >> 5) & 7;
                assert_eq!(
                    sharing > 1,
                    level == 3 && vcpus > 1,
                    "{ctx}: leaf 4 level {level}"
                );
                assert!((s.eax >> 26) + 1 >= vcpus, "{ctx}: leaf 4 cores");
            }
            if vendor == Vendor::Amd {
                let x8 = g.get(0x8000_0008, 0).unwrap();
                assert_eq!((x8.ecx & 0xff) + 1, vcpus, "{ctx}: 0x80000008 NC");
            }
            for id in [0, vcpus - 1] {
                let cpuid = g.for_vcpu(id).unwrap();
                for e in cpuid.as_slice() {
                    match e.function {
                        1 => assert_eq!(e.ebx >> 24, id, "{ctx}: leaf 1 APIC id"),
                        0xb | 0x1f => assert_eq!(e.edx, id, "{ctx}: x2APIC id"),
                        _ => {}
                    }
                }
            }
        }
    }
}

#[test]
fn kvm_leaves_stay_for_kvmclock() {
    for (name, supported) in sets() {
        let g = GuestCpuid::build(&supported, CpuModel::Host, 1).unwrap();
        let base = g.get(0x4000_0000, 0).unwrap();
        assert_eq!(
            [base.ebx, base.ecx, base.edx]
                .map(u32::to_le_bytes)
                .concat(),
            b"KVMKVMKVM\0\0\0",
            "{name}"
        );
        assert_eq!(base.eax, 0x4000_0001, "{name}");
        assert!(
            g.get(0x4000_0001, 0).unwrap().eax & 0x9 != 0,
            "{name}: kvmclock"
        );
    }
}

#[test]
fn compat_is_a_subset_of_host_and_restores_anywhere_host_does() {
    for (name, supported) in sets() {
        let host = GuestCpuid::build(&supported, CpuModel::Host, 2).unwrap();
        let compat = GuestCpuid::build(&supported, CpuModel::Compat, 2).unwrap();
        for &(f, i, reg) in features::FEATURE_REGS {
            let h = host.get(f, i).map_or(0, |e| e.reg(reg));
            let c = compat.get(f, i).map_or(0, |e| e.reg(reg));
            assert_eq!(
                c & !h,
                0,
                "{name}: compat {f:#x}.{i} {reg} has {:#x} host lacks",
                c & !h
            );
        }
        assert_eq!(
            compat.get(7, 0).map_or(0, |e| e.ebx | e.ecx | e.edx),
            0,
            "{name}"
        );
        assert_eq!(
            xsave::offered_xcr0(&compat.entries),
            0,
            "{name}: compat has no XSAVE"
        );
        // A compat guest fits this host; a host guest does not fit a host
        // that only offers compat (named features missing).
        compat.check_offered(&host).unwrap();
        let mut compat_host = compat.clone();
        compat_host.model = CpuModel::Host;
        match host.check_offered(&compat_host) {
            Err(CpuidError::NotOffered { missing, .. }) => {
                assert!(!missing.is_empty(), "{name}")
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn a_host_without_a_saved_feature_is_refused_by_name() {
    let supported = parse_dump(SETS[1].1).unwrap();
    let saved = GuestCpuid::build(&supported, CpuModel::Host, 1).unwrap();
    let mut poorer = supported.clone();
    // A host without AVX2 and AVX-512.
    let l7 = find_mut(&mut poorer, 7, 0).unwrap();
    l7.ebx &= !((1 << 5) | (1 << 16));
    let offered = GuestCpuid::build(&poorer, CpuModel::Host, 1).unwrap();
    let e = saved.check_offered(&offered).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("avx2") && text.contains("avx512f"), "{text}");
    assert!(text.contains("XSAVE component AVX-512 opmask"), "{text}");
    saved.check_offered(&saved).unwrap();
}

#[test]
fn saved_cpuid_round_trips_and_bad_ones_are_refused() {
    let supported = parse_dump(SETS[0].1).unwrap();
    let g = GuestCpuid::build(&supported, CpuModel::Compat, 2).unwrap();
    assert_eq!(GuestCpuid::from_proto(&g.to_proto()).unwrap(), g);
    let mut p = g.to_proto();
    p.model = "pentium".into();
    assert!(
        matches!(GuestCpuid::from_proto(&p), Err(CpuidError::UnknownModel(m)) if m == "pentium")
    );
    let mut p = g.to_proto();
    p.cpuid.clear();
    assert!(GuestCpuid::from_proto(&p).is_err());
    let mut p = g.to_proto();
    p.cpuid.retain(|e| e.function != 0);
    assert!(GuestCpuid::from_proto(&p).is_err());
}

#[test]
fn dumps_parse_back() {
    let supported = parse_dump(SETS[1].1).unwrap();
    let text: String = supported.iter().map(|e| format!("{e}\n")).collect();
    assert_eq!(parse_dump(&text).unwrap(), supported);
    assert!(parse_dump("0x1 0x0 0x0 eax=0x1").is_err());
    assert!(parse_dump("0x1 0x0 0x0 eax=zz ebx=0 ecx=0 edx=0").is_err());
}
