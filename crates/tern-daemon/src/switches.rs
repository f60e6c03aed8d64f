//! Virtual switches and VMs' NICs: `/v1/switches` and `/v1/vms/{vm}/nics`.
//!
//! A switch is a Linux bridge named after its id (`tbr` + 12 hex digits),
//! made over netlink by [`tern_net::bridge`]: external switches enslave
//! their uplink, internal ones carry the host's address, private ones
//! neither. A NIC is a row; its switch port, a persistent tap named after
//! the VM and index, is made when the VM starts (with its nftables guards
//! and tc shaping), and the worker opens it by name. Bridges come back
//! when the daemon starts ([`Daemon::restore_switches`]), and a monitor
//! records `network-down` / `network-up` events when an external switch's
//! uplink loses or regains carrier.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use tern_api::{CreateNic, CreateSwitch, Nic, Switch, SwitchType};
use tern_net::bridge::{BridgeError, Netlink};
use tern_net::policy::{self, Guards};
use tern_net::shaping::{self, PortShaping};
use tern_net::{Mac, Tap};
use tern_worker_proto::NicSpec;

use crate::daemon::Daemon;
use crate::error::{chain, OpError};
use crate::registry::{NicRow, RegistryError, SwitchRow, VmRow};
use crate::validation::check_name;

/// The bridge of switch `id`.
pub fn bridge_name(id: &str) -> String {
    format!("tbr{}", &id[..id.len().min(12)])
}

/// The tap of NIC `index` of VM `vm_id`.
pub fn tap_name(vm_id: &str, index: u32) -> String {
    format!("tn{}{index}", &vm_id[..vm_id.len().min(10)])
}

fn net_err(what: String) -> impl FnOnce(BridgeError) -> OpError {
    move |e| OpError::Failed(format!("{what}: {}", chain(&e)))
}

fn netlink() -> Result<Netlink, OpError> {
    Netlink::new().map_err(net_err("netlink".into()))
}

/// `A.B.C.D/LEN`.
fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), OpError> {
    let bad = || OpError::BadRequest(format!("bad address '{s}' (expected A.B.C.D/LEN)"));
    let (a, l) = s.split_once('/').ok_or_else(bad)?;
    let a: Ipv4Addr = a.parse().map_err(|_| bad())?;
    let l: u8 = l.parse().map_err(|_| bad())?;
    if l > 32 {
        return Err(bad());
    }
    Ok((a, l))
}

fn check_ifname(what: &str, name: &str) -> Result<(), OpError> {
    if name.is_empty()
        || name.len() > tern_net::tap::MAX_NAME
        || name
            .bytes()
            .any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace())
    {
        return Err(OpError::BadRequest(format!(
            "bad {what} '{name}' (an interface name: 1 to {} bytes, no '/' or whitespace)",
            tern_net::tap::MAX_NAME
        )));
    }
    Ok(())
}

impl Daemon {
    fn switch_view(&self, row: &SwitchRow, link_up: Option<bool>) -> Result<Switch, OpError> {
        Ok(Switch {
            id: row.id.clone(),
            name: row.name.clone(),
            kind: row.kind,
            uplink: row.uplink.clone(),
            address: row.address.clone(),
            bridge: bridge_name(&row.id),
            link_up,
            nics: self.reg.switch_nics(&row.id)?,
        })
    }

    async fn uplink_state(&self, row: &SwitchRow) -> Option<bool> {
        let up = row.uplink.as_deref()?;
        let nl = Netlink::new().ok()?;
        nl.link(up).await.ok().flatten().map(|l| l.up && l.carrier)
    }

    /// Makes (or finds again) switch `row`'s bridge and its uplink or
    /// address.
    async fn build_switch(&self, nl: &Netlink, row: &SwitchRow) -> Result<(), OpError> {
        let br = bridge_name(&row.id);
        let what = format!("switch {}: bridge {br}", row.name);
        nl.ensure_bridge(&br).await.map_err(net_err(what.clone()))?;
        if let Some(up) = &row.uplink {
            nl.enslave(up, &br)
                .await
                .map_err(net_err(format!("{what}: uplink {up}")))?;
        }
        if let Some(addr) = &row.address {
            let (a, l) = parse_cidr(addr)?;
            nl.add_address(&br, a, l)
                .await
                .map_err(net_err(format!("{what}: address {addr}")))?;
        }
        Ok(())
    }

    /// `POST /v1/switches`.
    pub async fn create_switch(&self, spec: &CreateSwitch) -> Result<Switch, OpError> {
        check_name("switch", &spec.name)?;
        match (spec.kind, &spec.uplink, &spec.address) {
            (SwitchType::External, None, _) => {
                return Err(OpError::BadRequest(
                    "an external switch needs an uplink interface".into(),
                ))
            }
            (SwitchType::External, Some(_), Some(_)) => {
                return Err(OpError::BadRequest(
                    "only an internal switch takes an address".into(),
                ))
            }
            (SwitchType::Internal | SwitchType::Private, Some(_), _) => {
                return Err(OpError::BadRequest(format!(
                    "only an external switch takes an uplink ('{}' is {})",
                    spec.name,
                    spec.kind.as_str()
                )))
            }
            (SwitchType::Private, None, Some(_)) => {
                return Err(OpError::BadRequest(
                    "a private switch has no host presence: no address".into(),
                ))
            }
            _ => {}
        }
        if let Some(a) = &spec.address {
            parse_cidr(a)?;
        }
        let nl = netlink()?;
        if let Some(up) = &spec.uplink {
            check_ifname("uplink", up)?;
            let l = nl
                .link(up)
                .await
                .map_err(net_err(format!("uplink {up}")))?
                .ok_or_else(|| {
                    OpError::BadRequest(format!("uplink interface '{up}' does not exist"))
                })?;
            if l.is_bridge || l.controller.is_some() {
                return Err(OpError::BadRequest(format!(
                    "uplink '{up}' is a bridge or already in one"
                )));
            }
        }
        let row = SwitchRow {
            id: crate::registry::new_id(),
            name: spec.name.clone(),
            kind: spec.kind,
            uplink: spec.uplink.clone(),
            address: spec.address.clone(),
        };
        self.reg.create_switch(&row)?;
        if let Err(e) = self.build_switch(&nl, &row).await {
            let _ = nl.delete(&bridge_name(&row.id)).await;
            let _ = self.reg.delete_switch(&row.id);
            return Err(e);
        }
        self.reg.event(
            None,
            None,
            "switch-created",
            &format!(
                "switch {} ({}) on bridge {}",
                row.name,
                row.kind.as_str(),
                bridge_name(&row.id)
            ),
        )?;
        let up = self.uplink_state(&row).await;
        self.switch_view(&row, up)
    }

    /// `GET /v1/switches`.
    pub async fn list_switches(&self) -> Result<Vec<Switch>, OpError> {
        let mut out = Vec::new();
        for row in self.reg.switches()? {
            let up = self.uplink_state(&row).await;
            out.push(self.switch_view(&row, up)?);
        }
        Ok(out)
    }

    /// `GET /v1/switches/{switch}`.
    pub async fn get_switch(&self, key: &str) -> Result<Switch, OpError> {
        let row = self.reg.switch(key)?;
        let up = self.uplink_state(&row).await;
        self.switch_view(&row, up)
    }

    /// `DELETE /v1/switches/{switch}`: refused while NICs are on it.
    pub async fn delete_switch(&self, key: &str) -> Result<(), OpError> {
        let row = self.reg.switch(key)?;
        self.reg.delete_switch(&row.id)?;
        let nl = netlink()?;
        if let Some(up) = &row.uplink {
            nl.release(up)
                .await
                .map_err(net_err(format!("switch {}: uplink {up}", row.name)))?;
        }
        let br = bridge_name(&row.id);
        nl.delete(&br)
            .await
            .map_err(net_err(format!("switch {}: bridge {br}", row.name)))?;
        self.reg.event(
            None,
            None,
            "switch-deleted",
            &format!("switch {}", row.name),
        )?;
        Ok(())
    }

    /// `POST /v1/vms/{vm}/nics`: the VM must not run; the switch must exist.
    pub fn add_nic(&self, vm: &str, spec: &CreateNic) -> Result<Nic, OpError> {
        let vm = self.reg.vm(vm)?;
        let sw = self.reg.switch(&spec.switch).map_err(|e| match e {
            RegistryError::NoSwitch(s) => OpError::NotFound(format!(
                "VM {}: no switch named '{s}' for the NIC (see `tern switch list`)",
                vm.name
            )),
            e => e.into(),
        })?;
        let mac = match &spec.mac {
            Some(m) => {
                let m: Mac = m
                    .parse()
                    .map_err(|e: tern_net::MacError| OpError::BadRequest(e.to_string()))?;
                m.to_string()
            }
            None => String::new(),
        };
        if spec.max_bw == Some(0) || spec.max_bw.is_some_and(|b| b > u64::from(u32::MAX)) {
            return Err(OpError::BadRequest(format!(
                "bad max_bw {:?}: 1 to {} bytes/s",
                spec.max_bw,
                u32::MAX
            )));
        }
        if let Some(m) = &spec.mirror {
            check_ifname("mirror port", m)?;
        }
        let row = NicRow {
            vm_id: vm.id.clone(),
            index: 0,
            switch_id: sw.id.clone(),
            switch_name: sw.name.clone(),
            mac,
            max_bw: spec.max_bw,
            mac_guard: spec.mac_guard,
            dhcp_guard: spec.dhcp_guard,
            router_guard: spec.router_guard,
            mirror: spec.mirror.clone(),
        };
        let id = vm.id.clone();
        let row = self.reg.add_nic(&vm.id, &row, |i| {
            Mac::from_seed(format!("{id}/{i}").as_bytes()).to_string()
        })?;
        Ok(nic_view(&row))
    }

    /// `GET /v1/vms/{vm}/nics`.
    pub fn list_nics(&self, vm: &str) -> Result<Vec<Nic>, OpError> {
        let vm = self.reg.vm(vm)?;
        Ok(self.reg.vm_nics(&vm.id)?.iter().map(nic_view).collect())
    }

    /// Makes VM `row`'s switch ports (a persistent tap per NIC, enslaved,
    /// with its guards and shaping) and returns what the worker opens.
    pub(crate) async fn nic_specs(&self, row: &VmRow) -> Result<Vec<NicSpec>, OpError> {
        let nics = self.reg.vm_nics(&row.id)?;
        if nics.is_empty() {
            return Ok(Vec::new());
        }
        let nl = netlink()?;
        let mut out = Vec::new();
        for n in &nics {
            let tap = tap_name(&row.id, n.index);
            let what = format!("VM {} NIC {}", row.name, n.index);
            let t =
                Tap::open(&tap).map_err(|e| OpError::Failed(format!("{what}: {}", chain(&e))))?;
            t.set_persist(true)
                .map_err(|e| OpError::Failed(format!("{what}: {}", chain(&e))))?;
            drop(t);
            let br = bridge_name(&n.switch_id);
            nl.enslave(&tap, &br)
                .await
                .map_err(net_err(format!("{what}: switch {}", n.switch_name)))?;
            let mac: Mac = n
                .mac
                .parse()
                .map_err(|e: tern_net::MacError| OpError::Failed(format!("{what}: {e}")))?;
            let guards = Guards {
                mac: n.mac_guard,
                dhcp: n.dhcp_guard,
                router: n.router_guard,
                max_bw_from_port: n.max_bw.map(|b| u32::try_from(b).unwrap_or(u32::MAX)),
            };
            policy::apply(&tap, mac, guards)
                .map_err(|e| OpError::Failed(format!("{what}: {}", chain(&e))))?;
            shaping::apply(
                &tap,
                &PortShaping {
                    max_bw: n.max_bw,
                    mirror_to: n.mirror.clone(),
                },
            )
            .map_err(|e| OpError::Failed(format!("{what}: {}", chain(&e))))?;
            out.push(NicSpec {
                tap,
                mac: Some(mac),
            });
        }
        Ok(out)
    }

    /// Recreates every registered switch's bridge that is missing (after a
    /// host reboot, say) and starts the uplink monitor. Failures are
    /// logged and recorded as events; the daemon serves on.
    pub async fn restore_switches(self: &Arc<Self>) {
        let rows = match self.reg.switches() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("cannot list switches: {}", chain(&e));
                return;
            }
        };
        if rows.is_empty() {
            self.clone().watch_uplinks(HashMap::new());
            return;
        }
        let nl = match netlink() {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("switches not restored: {}", chain(&e));
                return;
            }
        };
        let mut initial = HashMap::new();
        for row in &rows {
            if let Err(e) = self.build_switch(&nl, row).await {
                tracing::error!("{}", chain(&e));
                let _ = self.reg.event(None, None, "switch-failed", &chain(&e));
            }
            if let (Some(up), Some(state)) = (&row.uplink, self.uplink_state(row).await) {
                initial.insert(up.clone(), state);
            }
        }
        self.clone().watch_uplinks(initial);
    }

    /// Records `network-down` / `network-up` when an external switch's
    /// uplink loses or regains carrier.
    fn watch_uplinks(self: Arc<Self>, initial: HashMap<String, bool>) {
        let mut rx = match tern_net::monitor::watch(initial) {
            Ok(rx) => rx,
            Err(e) => {
                tracing::error!("uplink monitor: {}", chain(&e));
                return;
            }
        };
        tokio::spawn(async move {
            while let Some(c) = rx.recv().await {
                let Ok(rows) = self.reg.switches() else {
                    continue;
                };
                for row in rows
                    .iter()
                    .filter(|r| r.uplink.as_deref() == Some(c.name.as_str()))
                {
                    let (kind, how) = if c.up {
                        ("network-up", "regained")
                    } else {
                        ("network-down", "lost")
                    };
                    let _ = self.reg.event(
                        None,
                        None,
                        kind,
                        &format!("switch {}: uplink {} {how} carrier", row.name, c.name),
                    );
                }
            }
        });
    }
}

fn nic_view(n: &NicRow) -> Nic {
    Nic {
        index: n.index,
        switch: n.switch_name.clone(),
        mac: n.mac.clone(),
        tap: tap_name(&n.vm_id, n.index),
        max_bw: n.max_bw,
        mac_guard: n.mac_guard,
        dhcp_guard: n.dhcp_guard,
        router_guard: n.router_guard,
        mirror: n.mirror.clone(),
    }
}

/// The HTTP handlers of the switch and NIC routes.
pub(crate) mod handlers {
    use std::sync::Arc;

    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use axum::Json;
    use tern_api::{CreateNic, CreateSwitch, NicList, SwitchList};

    use crate::api::{ApiErr, Body};
    use crate::daemon::Daemon;

    type St = State<Arc<Daemon>>;

    pub(crate) async fn list_switches(State(d): St) -> Result<Json<SwitchList>, ApiErr> {
        Ok(Json(SwitchList {
            switches: d.list_switches().await?,
        }))
    }

    pub(crate) async fn create_switch(
        State(d): St,
        Body(req): Body<CreateSwitch>,
    ) -> Result<Response, ApiErr> {
        let s = d.create_switch(&req).await?;
        Ok((StatusCode::CREATED, Json(s)).into_response())
    }

    pub(crate) async fn get_switch(
        State(d): St,
        Path(s): Path<String>,
    ) -> Result<Json<tern_api::Switch>, ApiErr> {
        Ok(Json(d.get_switch(&s).await?))
    }

    pub(crate) async fn delete_switch(
        State(d): St,
        Path(s): Path<String>,
    ) -> Result<StatusCode, ApiErr> {
        d.delete_switch(&s).await?;
        Ok(StatusCode::NO_CONTENT)
    }

    pub(crate) async fn list_nics(
        State(d): St,
        Path(vm): Path<String>,
    ) -> Result<Json<NicList>, ApiErr> {
        Ok(Json(NicList {
            nics: d.list_nics(&vm)?,
        }))
    }

    pub(crate) async fn add_nic(
        State(d): St,
        Path(vm): Path<String>,
        Body(req): Body<CreateNic>,
    ) -> Result<Response, ApiErr> {
        let n = d.add_nic(&vm, &req)?;
        Ok((StatusCode::CREATED, Json(n)).into_response())
    }
}
