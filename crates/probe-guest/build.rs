//! Links the probe guest as a freestanding image at the address the VMM
//! loads it (see `link.ld`): no C runtime, no libc, no dynamic linker, and no
//! relocations left for a loader to apply (the VMM only copies PT_LOAD
//! segments).

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let script = format!("-Wl,-T,{dir}/link.ld");
    println!("cargo:rerun-if-changed=link.ld");
    println!("cargo:rerun-if-changed=build.rs");
    for arg in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        // rustc asks for a PIE; a fixed-address executable needs no loader to
        // relocate it, and the image only ever runs at its link address.
        "-no-pie",
        "-Wl,--no-dynamic-linker",
        "-Wl,--build-id=none",
        // RELRO needs a loader to apply it; without it .data and .bss share
        // one segment.
        "-Wl,-z,norelro",
        // Keep file offsets small; the VMM loads by physical address anyway.
        "-Wl,-z,max-page-size=4096",
        script.as_str(),
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
