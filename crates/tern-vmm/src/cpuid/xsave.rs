//! Leaf 0xD (XSAVE) made consistent with the features offered.
//!
//! KVM's supported set lists every XSAVE component the host's KVM can
//! context-switch, whatever else the guest is offered. Linux (like any OS)
//! enables only components whose feature it also sees (`xsave_cpuid_features`
//! in `arch/x86/kernel/fpu/xstate.c`: YMM needs AVX, the AVX-512 states
//! AVX512F, PKRU PKU, ...), then checks the sizes leaf 0xD reports against
//! the components' offsets and warns at boot when they disagree. So: a
//! component is offered only with its feature (and a feature only with its
//! component), the subleaves of components not offered are zeroed, and the
//! sizes are recomputed for the offered set.

use super::{find, find_mut, has, CpuidEntry, Reg};

/// Size of the legacy area (x87, SSE) and the XSAVE header.
pub const LEGACY_SIZE: u32 = 512 + 64;

/// A group of XSAVE components enabled together, and the feature that
/// needs them.
struct Group {
    /// Component bits (XCR0 or IA32_XSS).
    bits: u64,
    /// The feature bit (leaf, subleaf, register, bit) that uses them.
    feature: (u32, u32, Reg, u32),
    /// Components that must also be offered (AVX-512 builds on AVX).
    needs: u64,
    /// Feature bits that cannot be offered without these components.
    users: &'static [(u32, u32, Reg, u32)],
}

const AVX_USERS: &[(u32, u32, Reg, u32)] = &[
    (0x1, 0, Reg::Ecx, 12),         // fma
    (0x1, 0, Reg::Ecx, 28),         // avx
    (0x1, 0, Reg::Ecx, 29),         // f16c
    (0x7, 0, Reg::Ebx, 5),          // avx2
    (0x7, 0, Reg::Ecx, 9),          // vaes
    (0x7, 0, Reg::Ecx, 10),         // vpclmulqdq
    (0x7, 1, Reg::Eax, 4),          // avx_vnni
    (0x8000_0001, 0, Reg::Ecx, 11), // xop
    (0x8000_0001, 0, Reg::Ecx, 16), // fma4
];

const AVX512_USERS: &[(u32, u32, Reg, u32)] = &[
    (0x7, 0, Reg::Ebx, 16),
    (0x7, 0, Reg::Ebx, 17),
    (0x7, 0, Reg::Ebx, 21),
    (0x7, 0, Reg::Ebx, 26),
    (0x7, 0, Reg::Ebx, 27),
    (0x7, 0, Reg::Ebx, 28),
    (0x7, 0, Reg::Ebx, 30),
    (0x7, 0, Reg::Ebx, 31),
    (0x7, 0, Reg::Ecx, 1),
    (0x7, 0, Reg::Ecx, 6),
    (0x7, 0, Reg::Ecx, 11),
    (0x7, 0, Reg::Ecx, 12),
    (0x7, 0, Reg::Ecx, 14),
    (0x7, 0, Reg::Edx, 2),
    (0x7, 0, Reg::Edx, 3),
    (0x7, 0, Reg::Edx, 8),
    (0x7, 0, Reg::Edx, 23),
    (0x7, 1, Reg::Eax, 5),
];

/// User components (XCR0), in bit order.
const USER: &[Group] = &[
    Group {
        bits: 1 << 2,
        feature: (0x1, 0, Reg::Ecx, 28),
        needs: 0,
        users: AVX_USERS,
    },
    Group {
        bits: (1 << 3) | (1 << 4),
        feature: (0x7, 0, Reg::Ebx, 14),
        needs: 0,
        users: &[(0x7, 0, Reg::Ebx, 14)],
    },
    Group {
        bits: (1 << 5) | (1 << 6) | (1 << 7),
        feature: (0x7, 0, Reg::Ebx, 16),
        needs: 1 << 2,
        users: AVX512_USERS,
    },
    Group {
        bits: 1 << 9,
        feature: (0x7, 0, Reg::Ecx, 3),
        needs: 0,
        users: &[(0x7, 0, Reg::Ecx, 3), (0x7, 0, Reg::Ecx, 4)],
    },
    Group {
        bits: (1 << 17) | (1 << 18),
        feature: (0x7, 0, Reg::Edx, 24),
        needs: 0,
        users: &[
            (0x7, 0, Reg::Edx, 22),
            (0x7, 0, Reg::Edx, 24),
            (0x7, 0, Reg::Edx, 25),
            (0xd, 1, Reg::Eax, 4), // XFD exists for AMX's dynamic state
        ],
    },
];

/// Supervisor components (IA32_XSS, used by XSAVES only).
const SUPERVISOR: &[Group] = &[
    Group {
        bits: 1 << 8,
        feature: (0x7, 0, Reg::Ebx, 25),
        needs: 0,
        users: &[(0x7, 0, Reg::Ebx, 25)], // intel_pt
    },
    Group {
        bits: (1 << 11) | (1 << 12),
        feature: (0x7, 0, Reg::Ecx, 7),
        needs: 0,
        users: &[(0x7, 0, Reg::Ecx, 7), (0x7, 0, Reg::Edx, 20)], // shstk, ibt
    },
    Group {
        bits: 1 << 15,
        feature: (0x7, 0, Reg::Edx, 19),
        needs: 0,
        users: &[(0x7, 0, Reg::Edx, 19)], // arch_lbr
    },
];

/// XCR0 bits always there with XSAVE: x87 and SSE.
const FP_SSE: u64 = 0x3;

fn pair(e: Option<&CpuidEntry>, lo: Reg, hi: Reg) -> u64 {
    e.map_or(0, |e| u64::from(e.reg(lo)) | (u64::from(e.reg(hi)) << 32))
}

fn clear(entries: &mut [CpuidEntry], bits: &[(u32, u32, Reg, u32)]) {
    for &(function, index, reg, bit) in bits {
        if let Some(e) = find_mut(entries, function, index) {
            *e.reg_mut(reg) &= !(1 << bit);
        }
    }
}

/// The groups of `groups` that are offered, given what KVM supports, the
/// features in `entries` and the components already offered.
fn offered(entries: &[CpuidEntry], groups: &[Group], supported: u64, base: u64) -> u64 {
    let mut mask = base;
    for g in groups {
        let (function, index, reg, bit) = g.feature;
        if supported & g.bits == g.bits
            && has(entries, function, index, reg, bit)
            && mask & g.needs == g.needs
        {
            mask |= g.bits;
        }
    }
    mask
}

/// The size of an XSAVE area with components `mask`, standard layout
/// (offsets from the subleaves) or compacted.
pub fn area_size(entries: &[CpuidEntry], mask: u64, compacted: bool) -> u32 {
    let mut size = LEGACY_SIZE;
    for i in (2..64).filter(|i| mask & (1u64 << i) != 0) {
        let Some(e) = find(entries, 0xd, i) else {
            continue;
        };
        if compacted {
            if e.ecx & 0x2 != 0 {
                size = size.next_multiple_of(64);
            }
            size += e.eax;
        } else {
            size = size.max(e.ebx + e.eax);
        }
    }
    size
}

/// Makes leaf 0xD and the XSAVE-dependent feature bits consistent.
pub fn normalize(entries: &mut [CpuidEntry]) {
    let xsave = has(entries, 0x1, 0, Reg::Ecx, 26);
    let l0 = find(entries, 0xd, 0).copied();
    let l1 = find(entries, 0xd, 1).copied();
    let xsaves = xsave && l1.is_some_and(|e| e.eax & (1 << 3) != 0);
    let supported_user = if xsave {
        pair(l0.as_ref(), Reg::Eax, Reg::Edx)
    } else {
        0
    };
    let supported_sup = if xsaves {
        pair(l1.as_ref(), Reg::Ecx, Reg::Edx)
    } else {
        0
    };
    let user = if supported_user & FP_SSE == FP_SSE {
        offered(entries, USER, supported_user, FP_SSE)
    } else {
        0
    };
    let sup = if user != 0 {
        offered(entries, SUPERVISOR, supported_sup, 0)
    } else {
        0
    };
    // Features whose components are not offered go too.
    for g in USER.iter() {
        if user & g.bits != g.bits {
            clear(entries, g.users);
        }
    }
    for g in SUPERVISOR {
        if sup & g.bits != g.bits {
            clear(entries, g.users);
        }
    }
    if user == 0 {
        clear(entries, &[(0x1, 0, Reg::Ecx, 26)]);
    }
    let std_size = area_size(entries, user, false);
    let compact_size = area_size(entries, user | sup, true);
    for e in entries.iter_mut().filter(|e| e.function == 0xd) {
        match e.index {
            0 => {
                e.eax = user as u32;
                e.edx = (user >> 32) as u32;
                // KVM rewrites EBX from the guest's XCR0; this is its value
                // for x87|SSE, what XCR0 holds at reset.
                e.ebx = LEGACY_SIZE.min(std_size);
                e.ecx = if user == 0 { 0 } else { std_size };
            }
            1 => {
                if user == 0 {
                    (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0);
                } else {
                    // XSAVEOPT, XSAVEC, XGETBV1, XSAVES, XFD.
                    e.eax &= 0x1f;
                    e.ebx = if e.eax & 0xa != 0 { compact_size } else { 0 };
                    e.ecx = sup as u32;
                    e.edx = (sup >> 32) as u32;
                }
            }
            i if i < 64 && (user | sup) & (1u64 << i) != 0 => {}
            _ => (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0),
        }
    }
}

/// The XCR0 bits `entries` offer.
pub fn offered_xcr0(entries: &[CpuidEntry]) -> u64 {
    pair(find(entries, 0xd, 0), Reg::Eax, Reg::Edx)
}

/// The IA32_XSS bits `entries` offer.
pub fn offered_xss(entries: &[CpuidEntry]) -> u64 {
    pair(find(entries, 0xd, 1), Reg::Ecx, Reg::Edx)
}
