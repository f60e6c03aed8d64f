//! `vsock`: brings up the vsock device, listens on port `port` and echoes
//! every byte on every connection (many at once); with `connect=P` it
//! also connects to the host (CID 2) port P and echoes there, and makes
//! that connection again after each transport reset (a restore or a
//! migration), as a guest agent would. Until the VMM sends STOP; polls
//! without pause: the probe has no interrupts.

use super::Ctx;
use crate::report::report;
use crate::vsock::Vsock;
use crate::{boot, status};
use tern_probe_abi::workload::Step;

/// Runs `vsock` until the VMM sends STOP.
pub(super) fn vsock(ctx: &Ctx, step: &Step) -> bool {
    let hz = ctx.ticks_per_sec().max(1);
    let mut dev = match Vsock::open(boot::info(), hz) {
        Ok(d) => d,
        Err(e) => {
            report!("vsock result=fail {e}");
            return false;
        }
    };
    let listen = u32::from(step.port);
    report!(
        "vsock up cid={} port={listen} connect={}",
        dev.cid(),
        step.connect
    );
    // Whether the connection out is to be made (again).
    let mut want_out = step.connect != 0;
    let mut out_state: Option<bool> = None;
    loop {
        if want_out {
            want_out = !dev.connect(step.connect);
        }
        if dev.poll(listen) {
            report!(
                "vsock reset cid={} resets={}",
                dev.cid(),
                dev.counters.resets
            );
            want_out = step.connect != 0;
            out_state = None;
        }
        if step.connect != 0 {
            let now = dev.connected_to(step.connect);
            if now != out_state {
                match now {
                    Some(true) => report!("vsock connected port={}", step.connect),
                    None if out_state == Some(false) => {
                        report!("vsock connect refused port={}", step.connect)
                    }
                    _ => {}
                }
                out_state = now;
            }
        }
        if status::take_stop() {
            break;
        }
    }
    let n = dev.counters;
    report!(
        "vsock accepted={} connected={} refused={} open={} echoed={} resets={} bad={} notifies={} result=pass",
        n.accepted,
        n.connected,
        n.refused,
        dev.open_conns(),
        n.echoed,
        n.resets,
        n.bad,
        n.notifies
    );
    true
}
