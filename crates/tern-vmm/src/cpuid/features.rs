//! Named CPUID feature bits: the registers that carry features (what a
//! restore checks) and the names used in error messages and docs.

use super::Reg;

/// The (leaf, subleaf, register) triples whose bits are features a guest
/// may depend on once it has seen them. A restore refuses a host that
/// lacks one the guest saw.
pub const FEATURE_REGS: &[(u32, u32, Reg)] = &[
    (0x1, 0, Reg::Ecx),
    (0x1, 0, Reg::Edx),
    (0x7, 0, Reg::Ebx),
    (0x7, 0, Reg::Ecx),
    (0x7, 0, Reg::Edx),
    (0x7, 1, Reg::Eax),
    (0xd, 0, Reg::Eax),
    (0xd, 0, Reg::Edx),
    (0xd, 1, Reg::Eax),
    (0xd, 1, Reg::Ecx),
    (0xd, 1, Reg::Edx),
    (0x8000_0001, 0, Reg::Ecx),
    (0x8000_0001, 0, Reg::Edx),
    (0x8000_0008, 0, Reg::Ebx),
    (0x4000_0001, 0, Reg::Eax),
];

/// Bits of a feature register that reflect guest state, not what the CPU
/// offers (KVM sets them at run time): never compared.
pub fn dynamic_bits(function: u32, index: u32, reg: Reg) -> u32 {
    match (function, index, reg) {
        // OSXSAVE, and the hypervisor bit Tern sets itself.
        (0x1, 0, Reg::Ecx) => (1 << 27) | (1 << 31),
        // OSPKE.
        (0x7, 0, Reg::Ecx) => 1 << 4,
        _ => 0,
    }
}

/// A named feature bit.
pub struct Feature {
    /// Leaf.
    pub function: u32,
    /// Subleaf.
    pub index: u32,
    /// Register.
    pub reg: Reg,
    /// Bit.
    pub bit: u32,
    /// Linux's name for it (`/proc/cpuinfo`), or the XSAVE component.
    pub name: &'static str,
}

const fn f(function: u32, index: u32, reg: Reg, bit: u32, name: &'static str) -> Feature {
    Feature {
        function,
        index,
        reg,
        bit,
        name,
    }
}

/// The features Tern names (the rest are named by position).
pub const NAMED: &[Feature] = &[
    f(0x1, 0, Reg::Ecx, 0, "sse3"),
    f(0x1, 0, Reg::Ecx, 1, "pclmulqdq"),
    f(0x1, 0, Reg::Ecx, 9, "ssse3"),
    f(0x1, 0, Reg::Ecx, 12, "fma"),
    f(0x1, 0, Reg::Ecx, 13, "cx16"),
    f(0x1, 0, Reg::Ecx, 19, "sse4_1"),
    f(0x1, 0, Reg::Ecx, 20, "sse4_2"),
    f(0x1, 0, Reg::Ecx, 21, "x2apic"),
    f(0x1, 0, Reg::Ecx, 22, "movbe"),
    f(0x1, 0, Reg::Ecx, 23, "popcnt"),
    f(0x1, 0, Reg::Ecx, 24, "tsc_deadline_timer"),
    f(0x1, 0, Reg::Ecx, 25, "aes"),
    f(0x1, 0, Reg::Ecx, 26, "xsave"),
    f(0x1, 0, Reg::Ecx, 28, "avx"),
    f(0x1, 0, Reg::Ecx, 29, "f16c"),
    f(0x1, 0, Reg::Ecx, 30, "rdrand"),
    f(0x1, 0, Reg::Edx, 28, "ht"),
    f(0x7, 0, Reg::Ebx, 0, "fsgsbase"),
    f(0x7, 0, Reg::Ebx, 3, "bmi1"),
    f(0x7, 0, Reg::Ebx, 5, "avx2"),
    f(0x7, 0, Reg::Ebx, 7, "smep"),
    f(0x7, 0, Reg::Ebx, 8, "bmi2"),
    f(0x7, 0, Reg::Ebx, 9, "erms"),
    f(0x7, 0, Reg::Ebx, 10, "invpcid"),
    f(0x7, 0, Reg::Ebx, 14, "mpx"),
    f(0x7, 0, Reg::Ebx, 16, "avx512f"),
    f(0x7, 0, Reg::Ebx, 17, "avx512dq"),
    f(0x7, 0, Reg::Ebx, 18, "rdseed"),
    f(0x7, 0, Reg::Ebx, 19, "adx"),
    f(0x7, 0, Reg::Ebx, 20, "smap"),
    f(0x7, 0, Reg::Ebx, 23, "clflushopt"),
    f(0x7, 0, Reg::Ebx, 24, "clwb"),
    f(0x7, 0, Reg::Ebx, 29, "sha_ni"),
    f(0x7, 0, Reg::Ecx, 1, "avx512vbmi"),
    f(0x7, 0, Reg::Ecx, 2, "umip"),
    f(0x7, 0, Reg::Ecx, 3, "pku"),
    f(0x7, 0, Reg::Ecx, 7, "shstk"),
    f(0x7, 0, Reg::Ecx, 9, "vaes"),
    f(0x7, 0, Reg::Ecx, 10, "vpclmulqdq"),
    f(0x7, 0, Reg::Ecx, 16, "la57"),
    f(0x7, 0, Reg::Ecx, 22, "rdpid"),
    f(0x7, 0, Reg::Edx, 4, "fsrm"),
    f(0x7, 0, Reg::Edx, 24, "amx_tile"),
    f(0x7, 1, Reg::Eax, 4, "avx_vnni"),
    f(0x7, 1, Reg::Eax, 5, "avx512_bf16"),
    f(0xd, 0, Reg::Eax, 2, "XSAVE component AVX (YMM)"),
    f(0xd, 0, Reg::Eax, 3, "XSAVE component MPX bounds"),
    f(0xd, 0, Reg::Eax, 4, "XSAVE component MPX CSR"),
    f(0xd, 0, Reg::Eax, 5, "XSAVE component AVX-512 opmask"),
    f(0xd, 0, Reg::Eax, 6, "XSAVE component AVX-512 ZMM_Hi256"),
    f(0xd, 0, Reg::Eax, 7, "XSAVE component AVX-512 Hi16_ZMM"),
    f(0xd, 0, Reg::Eax, 9, "XSAVE component PKRU"),
    f(0xd, 0, Reg::Eax, 17, "XSAVE component AMX TILECFG"),
    f(0xd, 0, Reg::Eax, 18, "XSAVE component AMX TILEDATA"),
    f(0xd, 1, Reg::Eax, 0, "xsaveopt"),
    f(0xd, 1, Reg::Eax, 1, "xsavec"),
    f(0xd, 1, Reg::Eax, 2, "xgetbv1"),
    f(0xd, 1, Reg::Eax, 3, "xsaves"),
    f(0x8000_0001, 0, Reg::Ecx, 0, "lahf_lm"),
    f(0x8000_0001, 0, Reg::Ecx, 2, "svm"),
    f(0x8000_0001, 0, Reg::Ecx, 5, "abm"),
    f(0x8000_0001, 0, Reg::Ecx, 6, "sse4a"),
    f(0x8000_0001, 0, Reg::Ecx, 8, "3dnowprefetch"),
    f(0x8000_0001, 0, Reg::Ecx, 22, "topoext"),
    f(0x8000_0001, 0, Reg::Edx, 11, "syscall"),
    f(0x8000_0001, 0, Reg::Edx, 20, "nx"),
    f(0x8000_0001, 0, Reg::Edx, 26, "pdpe1gb"),
    f(0x8000_0001, 0, Reg::Edx, 27, "rdtscp"),
    f(0x8000_0001, 0, Reg::Edx, 29, "lm"),
    f(0x4000_0001, 0, Reg::Eax, 0, "kvmclock"),
    f(0x4000_0001, 0, Reg::Eax, 3, "kvmclock2"),
    f(0x4000_0001, 0, Reg::Eax, 5, "kvm steal time"),
    f(0x4000_0001, 0, Reg::Eax, 6, "kvm PV EOI"),
    f(0x4000_0001, 0, Reg::Eax, 7, "kvm PV unhalt"),
    f(0x4000_0001, 0, Reg::Eax, 24, "kvmclock stable bit"),
];

/// The name of a feature bit: its Linux name where Tern knows it, else its
/// position (`CPUID.0x7.0:EBX[5]`).
pub fn name(function: u32, index: u32, reg: Reg, bit: u32) -> String {
    NAMED
        .iter()
        .find(|n| n.function == function && n.index == index && n.reg == reg && n.bit == bit)
        .map(|n| n.name.to_string())
        .unwrap_or_else(|| format!("CPUID.{function:#x}.{index}:{reg}[{bit}]"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_known_and_unknown_bits() {
        assert_eq!(name(0x7, 0, Reg::Ebx, 5), "avx2");
        assert_eq!(name(0x7, 0, Reg::Ebx, 31), "CPUID.0x7.0:EBX[31]");
    }
}
