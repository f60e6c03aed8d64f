//! `ternd`: the host daemon (VM registry, worker supervision, REST API).
//!
//! A binary of its own rather than `tern daemon`: it is a long-running
//! service with its own name in `ps` and systemd, and it lives beside `tern`
//! (built by the same package), which it runs as `tern run` for each VM.

fn main() {
    tern_error::abort_on_panic();
    std::process::exit(tern_daemon::server::main());
}
