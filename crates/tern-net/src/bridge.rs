//! Linux bridges for Tern's virtual switches, over rtnetlink: creating a
//! bridge, giving it a host address, enslaving ports (taps, an uplink),
//! and deleting it. Hyper-V's three switch types map onto one bridge each:
//! external (an uplink interface enslaved), internal (the bridge carries a
//! host address) and private (no host address, no uplink: only its ports
//! reach each other).

use std::io;
use std::net::Ipv4Addr;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{
    InfoBridge, InfoData, InfoKind, LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::{Handle, LinkBridge, LinkUnspec};

/// Errors from a netlink request.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// No netlink socket could be opened.
    #[error("cannot open a netlink socket")]
    Socket(#[source] io::Error),
    /// The interface does not exist.
    #[error("interface '{0}' does not exist")]
    NoSuchLink(String),
    /// The bridge cannot filter VLANs on this kernel.
    #[error("bridge '{0}': VLAN access/trunk ports need bridge VLAN filtering, which this kernel lacks (CONFIG_BRIDGE_VLAN_FILTERING)")]
    NoVlanFiltering(String),
    /// A request failed.
    #[error("netlink: {what} '{name}' failed")]
    Request {
        /// Which request.
        what: &'static str,
        /// The interface.
        name: String,
        /// Why.
        #[source]
        source: rtnetlink::Error,
    },
}

impl BridgeError {
    /// The kernel's errno for a failed request, if it sent one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            BridgeError::Request {
                source: rtnetlink::Error::NetlinkError(m),
                ..
            } => m.to_io().raw_os_error(),
            _ => None,
        }
    }
}

/// A link's state as netlink reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkState {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// The index of the bridge it is enslaved to.
    pub controller: Option<u32>,
    /// Whether it is administratively up.
    pub up: bool,
    /// Whether the lower layer has carrier.
    pub carrier: bool,
    /// Whether it is a bridge.
    pub is_bridge: bool,
}

impl LinkState {
    /// Reads the state out of a link message.
    pub fn from_message(m: &LinkMessage) -> LinkState {
        let mut s = LinkState {
            index: m.header.index,
            name: String::new(),
            controller: None,
            up: m
                .header
                .flags
                .contains(rtnetlink::packet_route::link::LinkFlags::Up),
            carrier: false,
            is_bridge: false,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => s.name = n.clone(),
                LinkAttribute::Controller(c) => s.controller = Some(*c),
                LinkAttribute::Carrier(c) => s.carrier = *c != 0,
                LinkAttribute::LinkInfo(infos) => {
                    s.is_bridge = infos
                        .iter()
                        .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge)));
                }
                _ => {}
            }
        }
        s
    }
}

/// A netlink connection (its task runs on the current tokio runtime).
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: Handle,
}

fn req(what: &'static str, name: &str) -> impl FnOnce(rtnetlink::Error) -> BridgeError {
    let name = name.to_string();
    move |source| BridgeError::Request { what, name, source }
}

impl Netlink {
    /// Opens a connection; must be called inside a tokio runtime.
    pub fn new() -> Result<Netlink, BridgeError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(BridgeError::Socket)?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// The link named `name`, or `None`.
    pub async fn link(&self, name: &str) -> Result<Option<LinkState>, BridgeError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(m) => Ok(m.map(|m| LinkState::from_message(&m))),
            Err(rtnetlink::Error::NetlinkError(e))
                if e.to_io().raw_os_error() == Some(libc::ENODEV) =>
            {
                Ok(None)
            }
            Err(e) => Err(req("get link", name)(e)),
        }
    }

    async fn index(&self, name: &str) -> Result<u32, BridgeError> {
        self.link(name)
            .await?
            .map(|l| l.index)
            .ok_or_else(|| BridgeError::NoSuchLink(name.into()))
    }

    /// Makes the bridge `name` (up) unless it exists; returns its index.
    pub async fn ensure_bridge(&self, name: &str) -> Result<u32, BridgeError> {
        if let Some(l) = self.link(name).await? {
            self.set_up(name).await?;
            return Ok(l.index);
        }
        self.handle
            .link()
            .add(LinkBridge::new(name).build())
            .execute()
            .await
            .map_err(req("create bridge", name))?;
        self.index(name).await
    }

    /// Brings `name` up.
    pub async fn set_up(&self, name: &str) -> Result<(), BridgeError> {
        let index = self.index(name).await?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(req("set up", name))
    }

    /// Enslaves `port` to `bridge` and brings it up.
    pub async fn enslave(&self, port: &str, bridge: &str) -> Result<(), BridgeError> {
        let b = self.index(bridge).await?;
        let p = self.index(port).await?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(p).controller(b).up().build())
            .execute()
            .await
            .map_err(req("enslave", port))
    }

    /// Gives `name` the host address `addr/prefix` (already there: fine).
    pub async fn add_address(
        &self,
        name: &str,
        addr: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), BridgeError> {
        let index = self.index(name).await?;
        match self
            .handle
            .address()
            .add(index, addr.into(), prefix)
            .execute()
            .await
        {
            Err(rtnetlink::Error::NetlinkError(e))
                if e.to_io().raw_os_error() == Some(libc::EEXIST) =>
            {
                Ok(())
            }
            r => r.map_err(req("add address", name)),
        }
    }

    /// Turns on VLAN filtering on `bridge`; a kernel without it gets
    /// [`BridgeError::NoVlanFiltering`].
    pub async fn enable_vlan_filtering(&self, bridge: &str) -> Result<(), BridgeError> {
        let index = self.index(bridge).await?;
        let msg = LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Bridge),
                LinkInfo::Data(InfoData::Bridge(vec![InfoBridge::VlanFiltering(true)])),
            ]))
            .build();
        // RTM_SETLINK ignores link-kind data: it takes RTM_NEWLINK on the
        // existing link (no CREATE/EXCL), as `ip link set type bridge` does.
        let flags = rtnetlink::packet_core::NLM_F_REQUEST | rtnetlink::packet_core::NLM_F_ACK;
        match self.handle.link().add(msg).set_flags(flags).execute().await {
            Err(rtnetlink::Error::NetlinkError(e))
                if e.to_io().raw_os_error() == Some(libc::EOPNOTSUPP) =>
            {
                Err(BridgeError::NoVlanFiltering(bridge.into()))
            }
            r => r.map_err(req("enable VLAN filtering", bridge)),
        }
    }

    /// Deletes the link `name` (gone already: fine).
    pub async fn delete(&self, name: &str) -> Result<(), BridgeError> {
        let Some(l) = self.link(name).await? else {
            return Ok(());
        };
        self.handle
            .link()
            .del(l.index)
            .execute()
            .await
            .map_err(req("delete", name))
    }

    /// Releases `port` from its bridge (gone already: fine).
    pub async fn release(&self, port: &str) -> Result<(), BridgeError> {
        let Some(l) = self.link(port).await? else {
            return Ok(());
        };
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(l.index).nocontroller().build())
            .execute()
            .await
            .map_err(req("release", port))
    }

    /// The links enslaved to `bridge`.
    pub async fn ports(&self, bridge: &str) -> Result<Vec<LinkState>, BridgeError> {
        let b = self.index(bridge).await?;
        let mut links = self.handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(m) = links.try_next().await.map_err(req("list links", bridge))? {
            let s = LinkState::from_message(&m);
            if s.controller == Some(b) {
                out.push(s);
            }
        }
        Ok(out)
    }
}
