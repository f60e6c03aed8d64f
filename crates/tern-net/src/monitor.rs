//! Watching links' carrier over netlink (RTNLGRP_LINK): an external
//! switch's uplink losing or regaining carrier.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use futures_util::StreamExt;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::{AsyncSocket, SocketAddr};
use tokio::sync::mpsc;

use crate::bridge::{BridgeError, LinkState};

/// The multicast group of link changes.
const RTNLGRP_LINK: u32 = 1;

/// A change of a watched link's carrier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CarrierChange {
    /// The interface.
    pub name: String,
    /// Whether it has carrier now (up and lower layer up).
    pub up: bool,
}

/// How long a link's carrier must stay as it is before a change counts:
/// enslaving an uplink to a bridge flaps it down and up within
/// milliseconds, and a flap that short is no network going away.
pub const SETTLE: Duration = Duration::from_millis(300);

/// Starts watching every link's carrier; the receiver gets a change each
/// time a link's carrier (or admin state) flips and stays flipped for
/// [`SETTLE`], named by interface. A link in `initial` is reported when its
/// settled state differs from it; a link first seen later (an uplink
/// enslaved by a switch created after the start) is learnt silently from
/// its first settled state.
pub fn watch(
    initial: HashMap<String, bool>,
) -> Result<mpsc::UnboundedReceiver<CarrierChange>, BridgeError> {
    let (mut conn, _handle, mut messages) =
        rtnetlink::new_connection().map_err(BridgeError::Socket)?;
    conn.socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, 1 << (RTNLGRP_LINK - 1)))
        .map_err(BridgeError::Socket)?;
    tokio::spawn(conn);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut reported = initial;
        // The newest state of each link that changed since the last settle.
        let mut latest: HashMap<String, bool> = HashMap::new();
        let mut settle_at: Option<Instant> = None;
        loop {
            let next = match settle_at {
                None => messages.next().await,
                Some(at) => match tokio::time::timeout_at(at, messages.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        settle_at = None;
                        for (name, up) in latest.drain() {
                            let changed = reported
                                .insert(name.clone(), up)
                                .is_some_and(|before| before != up);
                            if changed && tx.send(CarrierChange { name, up }).is_err() {
                                return;
                            }
                        }
                        continue;
                    }
                },
            };
            let Some((msg, _)) = next else {
                return;
            };
            let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) = msg.payload else {
                continue;
            };
            let s = LinkState::from_message(&m);
            if s.name.is_empty() {
                continue;
            }
            let up = s.up && s.carrier;
            let before = latest.get(&s.name).or(reported.get(&s.name)).copied();
            latest.insert(s.name, up);
            // A change (not a repeat, nor another attribute) restarts the
            // wait: the state must hold for SETTLE.
            if before != Some(up) {
                settle_at = Some(Instant::now() + SETTLE);
            }
        }
    });
    Ok(rx)
}
