//! x86-64 CPU and low-memory setup: GDT, TSS, identity page tables, control
//! registers and the local APIC (CPUID is [`crate::cpuid`]'s).
//!
//! Two entry modes share the tables: the probe guest starts at CPL 3 (the
//! only privilege level that runs natively under PVM), Linux at CPL 0 with
//! the selectors its 64-bit boot protocol expects.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use tern_probe_abi::{GDT_ADDR, PAGE_TABLES_ADDR};
use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMem;

/// Linux's `__BOOT_CS`.
pub const SEL_KERNEL_CODE: u16 = 0x10;
/// Linux's `__BOOT_DS`.
pub const SEL_KERNEL_DATA: u16 = 0x18;
/// Ring-3 code selector (GDT index 4, RPL 3).
pub const SEL_USER_CODE: u16 = 0x20 | 3;
/// Ring-3 data selector (GDT index 5, RPL 3).
pub const SEL_USER_DATA: u16 = 0x28 | 3;
/// Task register selector (GDT index 6, 16-byte descriptor).
pub const SEL_TSS: u16 = 0x30;
/// Where the TSS lives. The probe needs it for its I/O permission bitmap:
/// under PVM the guest's IOPL does not survive into the hardware RFLAGS,
/// so an `out` at CPL 3 faults and KVM's emulator decides from the TSS
/// bitmap whether it is allowed (then it exits to us as KVM_EXIT_IO).
pub const TSS_ADDR: u64 = 0x600;
/// Offset of the I/O permission bitmap in the TSS (right after the 104-byte
/// 64-bit TSS).
const IOMAP_OFFSET: u32 = 104;
/// TSS limit: header, an all-zero (all ports allowed) 8 KiB bitmap, and the
/// terminating 0xff byte the architecture requires.
const TSS_LIMIT: u32 = IOMAP_OFFSET + 8192;

/// The most memory the identity map covers (64 PD pages).
pub const IDENTITY_MAP_MAX: u64 = 64 << 30;

// Flags word of a descriptor: G, D/B, L, AVL in the high nibble; P, DPL, S,
// type in the low byte.
const CODE64_DPL0: u16 = 0xa09b;
const DATA_DPL0: u16 = 0xc093;
const CODE64_DPL3: u16 = 0xa0fb;
const DATA_DPL3: u16 = 0xc0f3;
const TSS_BUSY: u16 = 0x008b;

const CR0_PE: u64 = 1;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// RFLAGS for the probe: IOPL=3 so port I/O from CPL 3 exits to the VMM,
/// IF=0 (it polls), bit 1 always set.
pub const PROBE_RFLAGS: u64 = 0x3002;

/// Errors writing tables into guest memory.
#[derive(Debug, thiserror::Error)]
pub enum X86Error {
    /// Guest memory too small for the boot tables.
    #[error("cannot write {what} into guest memory")]
    Write {
        /// Which table.
        what: &'static str,
        /// Why.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// A vCPU ioctl failed.
    #[error("cannot set vCPU {what}")]
    Vcpu {
        /// Which state.
        what: &'static str,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
}

fn descriptor(flags: u16, base: u32, limit: u32) -> u64 {
    let (base, limit, flags) = (base as u64, limit as u64, flags as u64);
    ((base & 0xff00_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
        | ((limit & 0xf_0000) << 32)
        | ((flags & 0xf0ff) << 40)
}

fn segment(flags: u16, selector: u16, base: u64, limit: u32) -> kvm_segment {
    kvm_segment {
        base,
        limit,
        selector,
        type_: (flags & 0xf) as u8,
        present: ((flags >> 7) & 1) as u8,
        dpl: ((flags >> 5) & 3) as u8,
        db: ((flags >> 14) & 1) as u8,
        s: ((flags >> 4) & 1) as u8,
        l: ((flags >> 13) & 1) as u8,
        g: ((flags >> 15) & 1) as u8,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Number of page-directory pages for an identity map covering `mem_end`
/// (always at least the first 4 GiB, so the MMIO hole is reachable).
pub fn identity_map_gibs(mem_end: u64) -> u64 {
    mem_end.clamp(4 << 30, IDENTITY_MAP_MAX).div_ceil(1 << 30)
}

/// Writes the GDT, TSS and identity-mapped page tables (2 MiB pages, with
/// the user bit so CPL 3 can touch everything) covering `mem_end`.
pub fn write_tables(mem: &GuestMem, mem_end: u64) -> Result<(), X86Error> {
    let w = |what, r: Result<(), vm_memory::GuestMemoryError>| {
        r.map_err(|source| X86Error::Write { what, source })
    };
    let gdt: [u64; 8] = [
        0,
        0,
        descriptor(CODE64_DPL0, 0, 0xfffff),
        descriptor(DATA_DPL0, 0, 0xfffff),
        descriptor(CODE64_DPL3, 0, 0xfffff),
        descriptor(DATA_DPL3, 0, 0xfffff),
        descriptor(TSS_BUSY, TSS_ADDR as u32, TSS_LIMIT),
        0, // upper half of the 16-byte TSS descriptor (base bits 63:32)
    ];
    for (i, d) in gdt.iter().enumerate() {
        w(
            "GDT",
            mem.write_obj(*d, GuestAddress(GDT_ADDR + i as u64 * 8)),
        )?;
    }
    let mut tss = vec![0u8; TSS_LIMIT as usize + 1];
    tss[102..104].copy_from_slice(&(IOMAP_OFFSET as u16).to_le_bytes());
    tss[TSS_LIMIT as usize] = 0xff;
    w("TSS", mem.write_slice(&tss, GuestAddress(TSS_ADDR)))?;

    // Accessed (and for leaves Dirty) are preset so the CPU never writes
    // the tables: they stay out of dirty logs and migration rounds.
    const PRESENT_RW_USER: u64 = 0x7 | 0x20;
    const PAGE_2M: u64 = 0x80 | 0x40;
    let pml4 = PAGE_TABLES_ADDR;
    let pdpt = pml4 + 0x1000;
    let pd_base = pdpt + 0x1000;
    w(
        "page tables",
        mem.write_obj(pdpt | PRESENT_RW_USER, GuestAddress(pml4)),
    )?;
    for g in 0..identity_map_gibs(mem_end) {
        let pd = pd_base + g * 0x1000;
        w(
            "page tables",
            mem.write_obj(pd | PRESENT_RW_USER, GuestAddress(pdpt + g * 8)),
        )?;
        let entries: Vec<u8> = (0..512u64)
            .flat_map(|j| ((g << 30) | (j << 21) | PRESENT_RW_USER | PAGE_2M).to_le_bytes())
            .collect();
        w("page tables", mem.write_slice(&entries, GuestAddress(pd)))?;
    }
    Ok(())
}

/// Privilege level a guest enters at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// CPL 3 with IOPL 3: the probe guest.
    User,
    /// CPL 0: Linux's 64-bit boot protocol.
    Kernel,
}

/// Special registers for 64-bit long mode with the tables of [`write_tables`].
pub fn long_mode_sregs(mut sregs: kvm_sregs, mode: EntryMode) -> kvm_sregs {
    let (code, data, cs, ds) = match mode {
        EntryMode::User => (CODE64_DPL3, DATA_DPL3, SEL_USER_CODE, SEL_USER_DATA),
        EntryMode::Kernel => (CODE64_DPL0, DATA_DPL0, SEL_KERNEL_CODE, SEL_KERNEL_DATA),
    };
    sregs.cs = segment(code, cs, 0, 0xffff_ffff);
    let d = segment(data, ds, 0, 0xffff_ffff);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (d, d, d, d, d);
    sregs.tr = segment(TSS_BUSY, SEL_TSS, TSS_ADDR, TSS_LIMIT);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = 8 * 8 - 1;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    sregs.cr3 = PAGE_TABLES_ADDR;
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    sregs.efer = EFER_LME | EFER_LMA;
    sregs
}

/// Sets up a vCPU for 64-bit entry at `rip` with `rsp`, `rdi`, `rsi`.
pub fn setup_vcpu(
    vcpu: &VcpuFd,
    mode: EntryMode,
    rip: u64,
    rsp: u64,
    rdi: u64,
    rsi: u64,
) -> Result<(), X86Error> {
    let err = |what| move |source| X86Error::Vcpu { what, source };
    let sregs = vcpu.get_sregs().map_err(err("sregs"))?;
    vcpu.set_sregs(&long_mode_sregs(sregs, mode))
        .map_err(err("sregs"))?;
    let regs = kvm_regs {
        rip,
        rsp,
        rbp: rsp,
        rdi,
        rsi,
        rflags: match mode {
            EntryMode::User => PROBE_RFLAGS,
            EntryMode::Kernel => 0x2,
        },
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(err("regs"))?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(err("fpu"))?;
    Ok(())
}

/// Routes LINT0 as ExtINT and LINT1 as NMI, as firmware would, so Linux's
/// legacy interrupt paths work with the in-kernel irqchip.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), X86Error> {
    let err = |source| X86Error::Vcpu {
        what: "local APIC",
        source,
    };
    let mut lapic = vcpu.get_lapic().map_err(err)?;
    let mut set = |off: usize, mode: u32| {
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[off + i] as u8);
        let v = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            lapic.regs[off + i] = *b as _;
        }
    };
    set(0x350, 0x7); // LVT LINT0: ExtINT
    set(0x360, 0x4); // LVT LINT1: NMI
    vcpu.set_lapic(&lapic).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{Backing, GuestRam};

    #[test]
    fn descriptors_encode_like_the_manual() {
        // Well-known encodings: flat 64-bit kernel code and data.
        assert_eq!(descriptor(CODE64_DPL0, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(descriptor(DATA_DPL0, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(descriptor(CODE64_DPL3, 0, 0xfffff), 0x00af_fb00_0000_ffff);
        let s = segment(CODE64_DPL3, SEL_USER_CODE, 0, 0xffff_ffff);
        assert_eq!(
            (s.dpl, s.l, s.db, s.s, s.present, s.type_),
            (3, 1, 0, 1, 1, 0xb)
        );
        let t = segment(TSS_BUSY, SEL_TSS, TSS_ADDR, TSS_LIMIT);
        assert_eq!((t.s, t.type_, t.present), (0, 0xb, 1));
    }

    #[test]
    fn identity_map_covers_memory_and_the_hole() {
        assert_eq!(identity_map_gibs(512 << 20), 4);
        assert_eq!(identity_map_gibs(5 << 30), 5);
        assert_eq!(identity_map_gibs((5 << 30) + 1), 6);
        assert_eq!(identity_map_gibs(1 << 40), 64);
        let ram = GuestRam::new(64 << 20, Backing::Anonymous).unwrap();
        write_tables(&ram.mem, 64 << 20).unwrap();
        let pde: u64 = ram
            .mem
            .read_obj(GuestAddress(PAGE_TABLES_ADDR + 0x2000 + 8 * 3))
            .unwrap();
        assert_eq!(pde, (3 << 21) | 0xe7);
        // The last PD maps the top of the fourth GiB.
        let last: u64 = ram
            .mem
            .read_obj(GuestAddress(
                PAGE_TABLES_ADDR + 0x2000 + 3 * 0x1000 + 511 * 8,
            ))
            .unwrap();
        assert_eq!(last, (3 << 30) | (511 << 21) | 0xe7);
    }
}
