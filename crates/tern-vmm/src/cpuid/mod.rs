//! The CPUID a guest sees: built from what this host's KVM supports
//! (`KVM_GET_SUPPORTED_CPUID`), normalized so it is self-consistent, and
//! reduced to a [`CpuModel`].
//!
//! KVM's supported set is a list of what KVM *can* virtualize on this host,
//! not a CPU description: leaf 0xD lists XSAVE components whether or not
//! the features that use them are offered, the topology leaves describe the
//! host, and the APIC ids are the host's. [`GuestCpuid::build`] turns it
//! into one consistent CPU (the pipeline is in [`normalize`]); the result
//! is a template shared by every vCPU, and [`GuestCpuid::for_vcpu`] adds
//! the per-vCPU ids.
//!
//! The template is what a saved state records ([`GuestCpuid::to_proto`]),
//! so a restore or an incoming migration can refuse a host that cannot
//! offer what the guest was already using ([`GuestCpuid::check_offered`]).

pub mod features;
pub mod models;
pub mod normalize;
pub mod topology;
pub mod xsave;

use std::fmt;
use std::str::FromStr;

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

use crate::state::proto;

/// One CPUID leaf/subleaf and its four registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CpuidEntry {
    /// Leaf (EAX on input).
    pub function: u32,
    /// Subleaf (ECX on input); only meaningful with the significant-index flag.
    pub index: u32,
    /// KVM's `KVM_CPUID_FLAG_*`.
    pub flags: u32,
    /// EAX out.
    pub eax: u32,
    /// EBX out.
    pub ebx: u32,
    /// ECX out.
    pub ecx: u32,
    /// EDX out.
    pub edx: u32,
}

impl CpuidEntry {
    /// An entry for `function`/`index`, flagged as indexed when the leaf
    /// has subleaves.
    pub fn new(function: u32, index: u32, indexed: bool) -> Self {
        CpuidEntry {
            function,
            index,
            flags: if indexed {
                KVM_CPUID_FLAG_SIGNIFCANT_INDEX
            } else {
                0
            },
            ..Default::default()
        }
    }

    /// The value of `reg`.
    pub fn reg(&self, reg: Reg) -> u32 {
        match reg {
            Reg::Eax => self.eax,
            Reg::Ebx => self.ebx,
            Reg::Ecx => self.ecx,
            Reg::Edx => self.edx,
        }
    }

    /// `reg`, mutably.
    pub fn reg_mut(&mut self, reg: Reg) -> &mut u32 {
        match reg {
            Reg::Eax => &mut self.eax,
            Reg::Ebx => &mut self.ebx,
            Reg::Ecx => &mut self.ecx,
            Reg::Edx => &mut self.edx,
        }
    }

    fn from_kvm(e: &kvm_cpuid_entry2) -> Self {
        CpuidEntry {
            function: e.function,
            index: e.index,
            flags: e.flags,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
        }
    }

    fn to_kvm(self) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function: self.function,
            index: self.index,
            flags: self.flags,
            eax: self.eax,
            ebx: self.ebx,
            ecx: self.ecx,
            edx: self.edx,
            ..Default::default()
        }
    }
}

impl fmt::Display for CpuidEntry {
    /// The dump format (`TERN_LOG=tern_vmm::cpuid=debug`), also the format
    /// of the captured sets in `testdata/`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:#010x} {:#x} {:#x} eax={:#010x} ebx={:#010x} ecx={:#010x} edx={:#010x}",
            self.function, self.index, self.flags, self.eax, self.ebx, self.ecx, self.edx
        )
    }
}

/// A CPUID output register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    /// EAX.
    Eax,
    /// EBX.
    Ebx,
    /// ECX.
    Ecx,
    /// EDX.
    Edx,
}

impl fmt::Display for Reg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reg::Eax => "EAX",
            Reg::Ebx => "EBX",
            Reg::Ecx => "ECX",
            Reg::Edx => "EDX",
        })
    }
}

/// Which CPU the guest is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CpuModel {
    /// Everything this host's KVM offers, normalized (the default).
    #[default]
    Host,
    /// A fixed baseline (x86-64-v2 and KVM's paravirtual basics, see
    /// [`models`] and docs/cpu-models.md) for VMs that move between hosts
    /// with different CPUs.
    Compat,
}

impl CpuModel {
    /// The model's name, as `--cpu-model` and saved states spell it.
    pub fn name(self) -> &'static str {
        match self {
            CpuModel::Host => "host",
            CpuModel::Compat => "compat",
        }
    }
}

impl fmt::Display for CpuModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CpuModel {
    type Err = CpuidError;
    fn from_str(s: &str) -> Result<Self, CpuidError> {
        match s {
            "host" => Ok(CpuModel::Host),
            "compat" => Ok(CpuModel::Compat),
            other => Err(CpuidError::UnknownModel(other.into())),
        }
    }
}

/// The CPU vendor, from leaf 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    /// GenuineIntel.
    Intel,
    /// AuthenticAMD or HygonGenuine (AMD's topology and cache leaves).
    Amd,
    /// Anything else: only the vendor-neutral leaves are changed.
    Other,
}

impl Vendor {
    /// The vendor named by leaf 0 of `entries`.
    pub fn of(entries: &[CpuidEntry]) -> Vendor {
        let Some(l0) = entries.iter().find(|e| e.function == 0) else {
            return Vendor::Other;
        };
        let mut id = [0u8; 12];
        id[..4].copy_from_slice(&l0.ebx.to_le_bytes());
        id[4..8].copy_from_slice(&l0.edx.to_le_bytes());
        id[8..].copy_from_slice(&l0.ecx.to_le_bytes());
        match &id {
            b"GenuineIntel" => Vendor::Intel,
            b"AuthenticAMD" | b"HygonGenuine" => Vendor::Amd,
            _ => Vendor::Other,
        }
    }
}

/// Errors building or checking a guest CPUID.
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    /// `--cpu-model` or a saved state names a model this build lacks.
    #[error("unknown CPU model '{0}' (expected host or compat)")]
    UnknownModel(String),
    /// KVM's supported set lacks a leaf every x86-64 CPU has.
    #[error("KVM's supported CPUID has no leaf {0:#x}")]
    MissingLeaf(u32),
    /// A saved CPUID entry is malformed.
    #[error("saved CPUID is malformed: {0}")]
    BadSaved(String),
    /// More entries than KVM takes.
    #[error("{0} CPUID entries are more than KVM takes")]
    TooMany(usize),
    /// This host cannot offer what the saved guest was using.
    #[error("this host cannot offer the CPU the guest was using (model {model}): missing {}", missing.join(", "))]
    NotOffered {
        /// The saved CPU model.
        model: CpuModel,
        /// The missing features, by name where known.
        missing: Vec<String>,
    },
}

/// The CPUID of a VM, before the per-vCPU ids: the model it was built for
/// and its entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestCpuid {
    /// The model.
    pub model: CpuModel,
    /// The entries, shared by every vCPU.
    pub entries: Vec<CpuidEntry>,
}

impl GuestCpuid {
    /// The guest CPUID for `vcpus` vCPUs of `model` from KVM's supported set.
    pub fn build(
        supported: &[CpuidEntry],
        model: CpuModel,
        vcpus: u32,
    ) -> Result<GuestCpuid, CpuidError> {
        let entries = normalize::normalize(supported, model, vcpus)?;
        Ok(GuestCpuid { model, entries })
    }

    /// KVM's CPUID for vCPU `id` (its APIC id).
    pub fn for_vcpu(&self, id: u32) -> Result<CpuId, CpuidError> {
        let vendor = Vendor::of(&self.entries);
        let entries: Vec<kvm_cpuid_entry2> = self
            .entries
            .iter()
            .map(|e| {
                let mut e = *e;
                topology::set_vcpu_id(&mut e, vendor, id);
                e.to_kvm()
            })
            .collect();
        CpuId::from_entries(&entries).map_err(|_| CpuidError::TooMany(entries.len()))
    }

    /// The entry for `function`/`index`, if there is one.
    pub fn get(&self, function: u32, index: u32) -> Option<&CpuidEntry> {
        find(&self.entries, function, index)
    }

    /// Refuses a host whose KVM cannot offer what this (saved) CPUID shows
    /// the guest: `offered` is what this host would build for the same
    /// model. Every feature bit of [`features::FEATURE_REGS`] the guest saw
    /// must be offered, and the vendor must be the same.
    pub fn check_offered(&self, offered: &GuestCpuid) -> Result<(), CpuidError> {
        let mut missing = Vec::new();
        if Vendor::of(&self.entries) != Vendor::of(&offered.entries) {
            missing.push("the same CPU vendor".to_string());
        }
        for &(function, index, reg) in features::FEATURE_REGS {
            let saw = self.get(function, index).map_or(0, |e| e.reg(reg));
            let can = offered.get(function, index).map_or(0, |e| e.reg(reg));
            let lack = saw & !can & !features::dynamic_bits(function, index, reg);
            for bit in (0..32).filter(|b| lack & (1 << b) != 0) {
                missing.push(features::name(function, index, reg, bit));
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(CpuidError::NotOffered {
                model: self.model,
                missing,
            })
        }
    }

    /// The saved-state form.
    pub fn to_proto(&self) -> proto::CpuState {
        proto::CpuState {
            model: self.model.name().into(),
            cpuid: self
                .entries
                .iter()
                .map(|e| proto::CpuidEntry {
                    function: e.function,
                    index: e.index,
                    flags: e.flags,
                    eax: e.eax,
                    ebx: e.ebx,
                    ecx: e.ecx,
                    edx: e.edx,
                })
                .collect(),
        }
    }

    /// From the saved-state form.
    pub fn from_proto(p: &proto::CpuState) -> Result<GuestCpuid, CpuidError> {
        let model = p.model.parse()?;
        if p.cpuid.is_empty() {
            return Err(CpuidError::BadSaved("no entries".into()));
        }
        if p.cpuid.len() > kvm_bindings::KVM_MAX_CPUID_ENTRIES {
            return Err(CpuidError::TooMany(p.cpuid.len()));
        }
        let entries: Vec<CpuidEntry> = p
            .cpuid
            .iter()
            .map(|e| CpuidEntry {
                function: e.function,
                index: e.index,
                flags: e.flags,
                eax: e.eax,
                ebx: e.ebx,
                ecx: e.ecx,
                edx: e.edx,
            })
            .collect();
        if find(&entries, 0, 0).is_none() {
            return Err(CpuidError::BadSaved("no leaf 0".into()));
        }
        Ok(GuestCpuid { model, entries })
    }
}

/// KVM's supported set as entries.
pub fn from_kvm(cpuid: &CpuId) -> Vec<CpuidEntry> {
    cpuid.as_slice().iter().map(CpuidEntry::from_kvm).collect()
}

/// The entry for `function`/`index` (the index is ignored for leaves
/// without subleaves).
pub fn find(entries: &[CpuidEntry], function: u32, index: u32) -> Option<&CpuidEntry> {
    entries.iter().find(|e| {
        e.function == function
            && (e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0 || e.index == index)
    })
}

/// [`find`], mutably.
pub fn find_mut(entries: &mut [CpuidEntry], function: u32, index: u32) -> Option<&mut CpuidEntry> {
    entries.iter_mut().find(|e| {
        e.function == function
            && (e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0 || e.index == index)
    })
}

/// Whether `function`/`index` has bit `bit` of `reg` set.
pub fn has(entries: &[CpuidEntry], function: u32, index: u32, reg: Reg, bit: u32) -> bool {
    find(entries, function, index).is_some_and(|e| e.reg(reg) & (1 << bit) != 0)
}

/// Parses the dump format of [`CpuidEntry`]'s `Display`, one entry a line
/// (blank lines and `#` comments skipped): the captured sets of the tests.
pub fn parse_dump(text: &str) -> Result<Vec<CpuidEntry>, CpuidError> {
    let num = |s: &str, line: &str| -> Result<u32, CpuidError> {
        let v = s.split_once('=').map_or(s, |(_, v)| v);
        u32::from_str_radix(v.trim_start_matches("0x"), 16)
            .map_err(|_| CpuidError::BadSaved(format!("bad number '{s}' in '{line}'")))
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() != 7 {
                return Err(CpuidError::BadSaved(format!("'{line}' has not 7 fields")));
            }
            Ok(CpuidEntry {
                function: num(f[0], line)?,
                index: num(f[1], line)?,
                flags: num(f[2], line)?,
                eax: num(f[3], line)?,
                ebx: num(f[4], line)?,
                ecx: num(f[5], line)?,
                edx: num(f[6], line)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
