//! Watching links' carrier over netlink (RTNLGRP_LINK): an external
//! switch's uplink losing or regaining carrier.

use std::collections::HashMap;

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

/// Starts watching every link's carrier; the receiver gets a change each
/// time a link's carrier (or admin state) flips, named by interface. A link
/// in `initial` is reported when its first message differs from it; a link
/// first seen later (an uplink enslaved by a switch created after the
/// start) is learnt silently from its first message, so that the flaps of
/// its own enslaving are not taken for the network going down.
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
        let mut last = initial;
        while let Some((msg, _)) = messages.next().await {
            let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) = msg.payload else {
                continue;
            };
            let s = LinkState::from_message(&m);
            if s.name.is_empty() {
                continue;
            }
            let up = s.up && s.carrier;
            let changed = last
                .insert(s.name.clone(), up)
                .is_some_and(|before| before != up);
            if changed && tx.send(CarrierChange { name: s.name, up }).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}
