//! Virtual switches and VMs' NICs in the registry (schema version 3).

use rusqlite::{params, OptionalExtension, Row};
use tern_api::SwitchType;

use super::{is_unique_violation, now_ms, vm_in_state, Registry, RegistryError};
use crate::daemon::IDLE_STATES;

/// A switch row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchRow {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Type.
    pub kind: SwitchType,
    /// External: the bridged host interface.
    pub uplink: Option<String>,
    /// Internal: the host's address, `A.B.C.D/LEN`.
    pub address: Option<String>,
}

/// A NIC row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicRow {
    /// The VM.
    pub vm_id: String,
    /// Position on the VM.
    pub index: u32,
    /// The switch's id.
    pub switch_id: String,
    /// The switch's name.
    pub switch_name: String,
    /// The guest's MAC.
    pub mac: String,
    /// Bandwidth cap, bytes/s.
    pub max_bw: Option<u64>,
    /// MAC-spoofing guard.
    pub mac_guard: bool,
    /// DHCP guard.
    pub dhcp_guard: bool,
    /// Router guard.
    pub router_guard: bool,
    /// Monitor port.
    pub mirror: Option<String>,
}

fn kind_of(s: &str) -> rusqlite::Result<SwitchType> {
    match s {
        "external" => Ok(SwitchType::External),
        "internal" => Ok(SwitchType::Internal),
        "private" => Ok(SwitchType::Private),
        other => Err(rusqlite::Error::FromSqlConversionFailure(
            2,
            rusqlite::types::Type::Text,
            format!("unknown switch type '{other}'").into(),
        )),
    }
}

const SWITCH_COLS: &str = "id, name, kind, uplink, address";

fn switch_row(r: &Row<'_>) -> rusqlite::Result<SwitchRow> {
    Ok(SwitchRow {
        id: r.get(0)?,
        name: r.get(1)?,
        kind: kind_of(&r.get::<_, String>(2)?)?,
        uplink: r.get(3)?,
        address: r.get(4)?,
    })
}

const NIC_COLS: &str = "n.vm_id, n.idx, n.switch_id, s.name, n.mac, n.max_bw, n.mac_guard, \
     n.dhcp_guard, n.router_guard, n.mirror";

fn nic_row(r: &Row<'_>) -> rusqlite::Result<NicRow> {
    Ok(NicRow {
        vm_id: r.get(0)?,
        index: r.get(1)?,
        switch_id: r.get(2)?,
        switch_name: r.get(3)?,
        mac: r.get(4)?,
        max_bw: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
        mac_guard: r.get(6)?,
        dhcp_guard: r.get(7)?,
        router_guard: r.get(8)?,
        mirror: r.get(9)?,
    })
}

/// The most NICs a VM may have (tap names carry one digit).
pub const MAX_NICS: u32 = 8;

impl Registry {
    /// Registers a switch.
    pub fn create_switch(&self, s: &SwitchRow) -> Result<(), RegistryError> {
        let conn = self.lock();
        let r = conn.execute(
            "INSERT INTO switches (id, name, kind, uplink, address, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![s.id, s.name, s.kind.as_str(), s.uplink, s.address, now_ms()],
        );
        match r {
            Err(e) if is_unique_violation(&e) => Err(RegistryError::NameTaken {
                kind: "switch",
                name: s.name.clone(),
            }),
            r => r.map(|_| ()).map_err(Into::into),
        }
    }

    /// The switch named or with id `key`.
    pub fn switch(&self, key: &str) -> Result<SwitchRow, RegistryError> {
        let conn = self.lock();
        conn.query_row(
            &format!(
                "SELECT {SWITCH_COLS} FROM switches WHERE id = ?1 OR name = ?1
                 ORDER BY id = ?1 DESC LIMIT 1"
            ),
            [key],
            switch_row,
        )
        .optional()?
        .ok_or_else(|| RegistryError::NoSwitch(key.into()))
    }

    /// Every switch, by name.
    pub fn switches(&self) -> Result<Vec<SwitchRow>, RegistryError> {
        let conn = self.lock();
        let mut st = conn.prepare(&format!("SELECT {SWITCH_COLS} FROM switches ORDER BY name"))?;
        let rows = st.query_map([], switch_row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// The NICs on switch `id`, as `VM/INDEX`.
    pub fn switch_nics(&self, id: &str) -> Result<Vec<String>, RegistryError> {
        let conn = self.lock();
        let mut st = conn.prepare(
            "SELECT v.name, n.idx FROM nics n JOIN vms v ON v.id = n.vm_id
             WHERE n.switch_id = ?1 ORDER BY v.name, n.idx",
        )?;
        let rows = st
            .query_map([id], |r| {
                Ok(format!(
                    "{}/{}",
                    r.get::<_, String>(0)?,
                    r.get::<_, u32>(1)?
                ))
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Removes switch `id`; refused while NICs are on it.
    pub fn delete_switch(&self, id: &str) -> Result<(), RegistryError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let (name, nics): (String, i64) = tx.query_row(
            "SELECT s.name, (SELECT COUNT(*) FROM nics n WHERE n.switch_id = s.id)
             FROM switches s WHERE s.id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if nics > 0 {
            return Err(RegistryError::SwitchBusy(format!(
                "switch '{name}' has {nics} NIC(s) attached: remove the VMs' NICs first"
            )));
        }
        tx.execute("DELETE FROM switches WHERE id = ?1", [id])?;
        tx.commit()?;
        Ok(())
    }

    /// Adds a NIC (at the next index) to VM `vm_id`, which must not run;
    /// `mac` of `None` is made by `make_mac` from the index.
    pub fn add_nic(
        &self,
        vm_id: &str,
        nic: &NicRow,
        make_mac: impl FnOnce(u32) -> String,
    ) -> Result<NicRow, RegistryError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let vm = vm_in_state(&tx, vm_id, IDLE_STATES, "add a NIC while it runs")?;
        let index: u32 = tx.query_row(
            "SELECT COALESCE(MAX(idx) + 1, 0) FROM nics WHERE vm_id = ?1",
            [vm_id],
            |r| r.get(0),
        )?;
        if index >= MAX_NICS {
            return Err(RegistryError::SwitchBusy(format!(
                "VM '{}' has {MAX_NICS} NICs, the most it may have",
                vm.name
            )));
        }
        let mac = if nic.mac.is_empty() {
            make_mac(index)
        } else {
            nic.mac.clone()
        };
        tx.execute(
            "INSERT INTO nics (vm_id, idx, switch_id, mac, max_bw, mac_guard, dhcp_guard,
                               router_guard, mirror)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                vm_id,
                index,
                nic.switch_id,
                mac,
                nic.max_bw.map(|v| i64::try_from(v).unwrap_or(i64::MAX)),
                nic.mac_guard,
                nic.dhcp_guard,
                nic.router_guard,
                nic.mirror
            ],
        )?;
        tx.commit()?;
        Ok(NicRow {
            vm_id: vm_id.into(),
            index,
            mac,
            ..nic.clone()
        })
    }

    /// VM `vm_id`'s NICs, by index.
    pub fn vm_nics(&self, vm_id: &str) -> Result<Vec<NicRow>, RegistryError> {
        let conn = self.lock();
        let mut st = conn.prepare(&format!(
            "SELECT {NIC_COLS} FROM nics n JOIN switches s ON s.id = n.switch_id
             WHERE n.vm_id = ?1 ORDER BY n.idx"
        ))?;
        let rows = st.query_map([vm_id], nic_row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }
}
