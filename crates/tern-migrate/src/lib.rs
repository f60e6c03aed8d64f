//! Tern live migration.
//!
//! A VM worker sends its running VM to another worker ([`migrate`]); the
//! other worker, started with `tern run --incoming`, receives it
//! ([`receive`]), builds the VM around the received memory and state,
//! starts it, and confirms. The source keeps its VM until that
//! confirmation: whatever fails before it (the destination dies, the
//! network breaks, the user cancels, the timeout expires), the source VM
//! runs on with its memory intact, and a new attempt can follow.
//!
//! # Wire protocol, version 1
//!
//! This is also written down, with rationale, in `docs/migration-protocol.md`.
//!
//! ## Connections
//!
//! A TCP migration uses one *control* connection and N *data* connections
//! (channels) to the same listening address; a same-host migration uses a
//! single UNIX stream connection. Every connection starts with a 12-byte
//! preamble: the magic `TERNMIG\0` and the protocol version as a
//! little-endian u32. Then both directions carry *frames*:
//!
//! ```text
//! u32 LE  length of what follows (kind + payload), 1 ..= 2 MiB + 1
//! u8      kind
//! ...     payload
//! ```
//!
//! | kind | name | on | direction | payload |
//! |---|---|---|---|---|
//! | 1 | Hello | control | S→D | prost `Hello`: session id, channel count, VM configuration (vCPUs, memory size, RAM ranges, guest kind, disk count), zero-copy flag, product version |
//! | 2 | Welcome | control | D→S | prost `Welcome`: accepted, or the reason for refusal |
//! | 3 | DataHello | data | S→D | prost `DataHello`: session id, channel index |
//! | 4 | Chunk | data | S→D | chunk header + page data (below) |
//! | 5 | ChannelDone | data | S→D | empty: this channel carries no more chunks |
//! | 6 | Switchover | control | S→D | prost `Switchover`: `tern_vmm::VmState` (vCPUs, interrupt controllers, PIT, clock, serial, devices; prost), paused flag, round count |
//! | 7 | Outcome | control | D→S | prost `Outcome`: running, or the error |
//! | 8 | Abort | control | S→D | prost `Abort`: why the source gave up |
//!
//! A chunk covers one 1 MiB-aligned window of guest-physical memory (256
//! pages): `u64 base`, `u64[4] present` (pages carried), `u64[4] zero`
//! (carried pages that are all zeros: no data is sent for them),
//! `u8 codec` (0 raw, 1 LZ4 block, 2 zstd frame), `u32 raw_len` (4096 ×
//! pages with data), then the data of the non-zero present pages in
//! ascending order, encoded as one block with that codec. A window always
//! travels on channel `(base / 1 MiB) mod N`, so a page resent in a later
//! round arrives on the same connection after its older copy: no sequence
//! numbers are needed. The first round leaves zero pages out entirely (the
//! destination's memory starts zeroed); later rounds mark them.
//!
//! ## Source
//!
//! 1. Control: preamble, Hello. Read the destination's preamble (refuse a
//!    version outside `MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION` with
//!    Abort), then Welcome; stop if refused. No memory has been sent.
//! 2. Open N data channels: preamble, DataHello each.
//! 3. Start dirty logging; round 1 sends all memory, each later round the
//!    pages dirtied during the previous one. After each round, estimate the
//!    downtime as (dirty pages × measured wire bytes per page) / measured
//!    bandwidth + 5 ms; stop when it is within the target (default 50 ms).
//!    When the guest dirties more than half of what a round moved and the
//!    dirty set does not shrink, throttle the vCPUs (auto-converge: pause
//!    them 20% of every 50 ms, then 10 points more each round, up to 99%).
//!    The timeout cancels or forces switchover, as chosen.
//! 4. Switchover: pause the VM, send the last dirty pages over all
//!    channels, ChannelDone on each, capture the state, send Switchover.
//! 5. Wait for Outcome. `running`: the migration is complete, the source
//!    VM is stopped. Anything else (error, refusal, closed connection,
//!    timeout): send Abort if possible and resume the VM.
//!
//! Same host (UNIX socket, zero-copy): after Welcome the source pauses,
//! sends one byte carrying the guest memory memfd as `SCM_RIGHTS`, then
//! Switchover; no pages are copied.
//!
//! ## Destination state machine
//!
//! ```text
//!            accept control connection
//!                     │
//!   AwaitPreamble ──bad magic / other version──▶ Refused (Welcome{accepted:false}) ─┐
//!                     │ answer own preamble                                       │
//!   AwaitHello ──config differs / bad channel count──▶ Refused ─────────────────────┤
//!                     │ Welcome{accepted:true}                                     │
//!        ┌────────────┴─────────────┐                                              │
//!   (TCP/stream)               (zero-copy)                                         │
//!   AcceptChannels             AwaitMemfd ── SCM_RIGHTS byte                        │
//!        │ N DataHello of           │                                              │
//!        │ this session             ▼                                              │
//!   Receiving: channel threads  AwaitSwitchover                                    │
//!   apply chunks until          │                                                  │
//!   ChannelDone; control        │                                                  │
//!   waits for Switchover ───Abort / EOF / error──▶ Failed (memory discarded) ───────┤
//!        │ all channels done     │                                                  │
//!        ▼                       ▼                                                  │
//!   Restore: build the VM around the memory and the state, start it                 │
//!        │ ok                          │ error                                      │
//!        ▼                             ▼                                            │
//!   Running: send Outcome{running}   send Outcome{error} ──────────────────────────┤
//!                                                                                   ▼
//!                                                           wait for the next migration
//! ```
//!
//! ## Compatibility
//!
//! The version in the preamble is the protocol version (apart from the
//! product and saved-state versions). Both ends check it before anything
//! else; messages are prost with numbered fields, so a later version can
//! add fields that this one ignores.

pub mod compress;
pub mod pages;
pub mod progress;
pub mod receiver;
pub mod sender;
pub mod transport;
pub mod wire;

pub use compress::Compression;
pub use progress::{Phase, Progress, Snapshot};
pub use receiver::{receive, ReceiveError, Received};
pub use sender::{config_check, migrate, MigrateError, MigrateOptions, TimeoutAction};
pub use transport::{Endpoint, Listener};
pub use wire::{Codec, PROTOCOL_VERSION};
