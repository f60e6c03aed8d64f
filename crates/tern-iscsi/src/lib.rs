//! An iSCSI target (RFC 7143) over Tern's SCSI emulation: each login
//! makes a session whose initiator port (IQN + ISID) is its own SCSI
//! initiator ([`tern_scsi::NexusId::Iscsi`]) on a shared
//! [`tern_scsi::ScsiTarget`], so persistent reservations work across
//! sessions and across other transports on the same disks.
//!
//! Supported: one connection per session (MaxConnections=1),
//! ErrorRecoveryLevel 0, CRC32C or no header and data digests, CHAP
//! (one-way, MD5), an initiator allow list, discovery sessions with
//! SendTargets, immediate data, solicited Data-Out (InitialR2T=Yes,
//! MaxOutstandingR2T=1), Data-In with status in the last PDU, NOP,
//! task management and Logout. Malformed PDUs get a Reject or end the
//! connection; nothing from the network panics the target.

pub mod fuzzing;
pub mod login;
pub mod pdu;
pub mod session;

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use tern_scsi::ScsiTarget;
use tokio::net::{TcpListener, TcpStream};

use crate::login::{Login, Step, LOGIN_MAX_DATA};
use crate::pdu::{Digests, Pdu};
use crate::session::{ConnError, Session};

/// One-way CHAP credentials the initiator must present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChapCredentials {
    /// CHAP_N the initiator sends.
    pub user: String,
    /// The shared secret.
    pub secret: String,
}

/// What a target exports and to whom.
#[derive(Clone, Debug)]
pub struct Export {
    /// The target's IQN.
    pub iqn: String,
    /// Initiator names allowed to log in; empty: anyone.
    pub allowed: Vec<String>,
    /// CHAP, when required.
    pub chap: Option<ChapCredentials>,
}

/// Errors of an export's settings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExportError {
    /// An iSCSI name that is not `iqn.`/`eui.`/`naa.` form or has bad characters.
    #[error("{0:?} is not a valid iSCSI name (iqn.YYYY-MM.reversed.domain[:name], lower case)")]
    BadName(String),
    /// CHAP given as something other than USER:SECRET.
    #[error("CHAP credentials must be USER:SECRET with a secret of 12 to 16 characters (RFC 7143 12.1.3 wants at least 12)")]
    BadChap,
}

/// The IQN Tern gives an export named `name` (RFC 3720 3.2.6.3.1 form).
pub fn default_iqn(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("iqn.2026-12.org.tern:{clean}")
}

/// Checks an iSCSI name (RFC 3722 stringprep reduced to ASCII).
pub fn check_name(name: &str) -> Result<(), ExportError> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-:".contains(c));
    let prefixed = name.starts_with("iqn.") || name.starts_with("eui.") || name.starts_with("naa.");
    if ok_chars && prefixed && name.len() > 4 && name.len() <= 223 {
        Ok(())
    } else {
        Err(ExportError::BadName(name.to_string()))
    }
}

/// Parses `USER:SECRET`.
pub fn parse_chap(s: &str) -> Result<ChapCredentials, ExportError> {
    let (user, secret) = s.split_once(':').ok_or(ExportError::BadChap)?;
    if user.is_empty() || !(12..=16).contains(&secret.len()) {
        return Err(ExportError::BadChap);
    }
    Ok(ChapCredentials {
        user: user.to_string(),
        secret: secret.to_string(),
    })
}

/// A running target: accepts connections and runs their sessions.
pub struct Target {
    export: Arc<Export>,
    scsi: Arc<ScsiTarget>,
    tsih: AtomicU16,
}

impl Target {
    /// A target exporting `scsi`'s LUNs.
    pub fn new(export: Export, scsi: Arc<ScsiTarget>) -> Arc<Target> {
        Arc::new(Target {
            export: Arc::new(export),
            scsi,
            tsih: AtomicU16::new(1),
        })
    }

    /// The export.
    pub fn export(&self) -> &Export {
        &self.export
    }

    /// Accepts connections on `listener` until it fails.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, peer) = listener.accept().await?;
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.connection(stream).await {
                    tracing::info!(%peer, error = %tern_error_chain(&e), "iSCSI connection ended");
                }
            });
        }
    }

    fn next_tsih(&self) -> u16 {
        loop {
            let t = self.tsih.fetch_add(1, Ordering::Relaxed);
            if t != 0 {
                return t;
            }
        }
    }

    /// Runs one connection: login, then its session.
    pub async fn connection(&self, mut stream: TcpStream) -> Result<(), ConnError> {
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().ok();
        let mut login = Login::new(self.export.clone(), self.next_tsih());
        let est = loop {
            let req = Pdu::read(&mut stream, Digests::default(), LOGIN_MAX_DATA).await?;
            match login.step(&req) {
                Step::Continue(r) => r.write(&mut stream, Digests::default()).await?,
                Step::Fail(r) => {
                    r.write(&mut stream, Digests::default()).await?;
                    return Ok(());
                }
                Step::Done(r, est) => {
                    r.write(&mut stream, Digests::default()).await?;
                    break est;
                }
            }
        };
        Session::new(stream, self.scsi.clone(), self.export.clone(), local, *est)
            .run()
            .await
    }
}

fn tern_error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
