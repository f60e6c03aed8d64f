//! `tern boot verify`: the Secure Boot check Tern makes before a direct
//! boot, alone, for people and scripts. Prints the verdict and the rule
//! that decided (or the typed report with `--json`); exits 0 only when the
//! image would boot, 1 when it would be refused, 64/66 for bad arguments
//! or missing files.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use tern_secureboot::{Database, Policy, Template};

use crate::exit_code::{NO_INPUT, OK, USAGE};

/// The image would be refused.
pub const DENIED: i32 = 1;

/// `tern boot` subcommands.
#[derive(Subcommand)]
pub enum BootCommand {
    /// Judge a PE/COFF image (kernel EFI stub, unified kernel image, boot
    /// loader) as UEFI Secure Boot would: exit 0 only if it would boot.
    Verify(VerifyArgs),
}

/// `tern boot verify`.
#[derive(Args)]
pub struct VerifyArgs {
    /// The image.
    pub image: PathBuf,
    /// A built-in db: debian, microsoft-uefi-ca or custom (none; use --db).
    #[arg(long, default_value = "custom")]
    pub template: String,
    /// A db file (EFI_SIGNATURE_LIST, or one DER/PEM certificate); repeat for more.
    #[arg(long)]
    pub db: Vec<PathBuf>,
    /// A dbx file (EFI_SIGNATURE_LIST, or one DER/PEM certificate); repeat for more.
    #[arg(long)]
    pub dbx: Vec<PathBuf>,
    /// Print the report as one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `tern boot` command; returns the exit code.
pub fn run(cmd: BootCommand) -> i32 {
    match cmd {
        BootCommand::Verify(a) => verify(a),
    }
}

/// Builds the policy a template and files describe (shared with `tern run`).
pub fn policy(template: Template, db: &[PathBuf], dbx: &[PathBuf]) -> anyhow::Result<Policy> {
    let mut policy = Policy {
        db: Database::default(),
        dbx: Database::default(),
    };
    template.add_to(&mut policy.db)?;
    for f in db {
        policy.db.add_file(f).context("db")?;
    }
    for f in dbx {
        policy.dbx.add_file(f).context("dbx")?;
    }
    Ok(policy)
}

fn verify(a: VerifyArgs) -> i32 {
    let template: Template = match a.template.parse() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("tern boot verify: {e}");
            return USAGE;
        }
    };
    let policy = match policy(template, &a.db, &a.dbx) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("tern boot verify: {e:#}");
            return NO_INPUT;
        }
    };
    let data = match std::fs::read(&a.image) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("tern boot verify: cannot read {}: {e}", a.image.display());
            return NO_INPUT;
        }
    };
    let report = tern_secureboot::verify(&data, &policy);
    if a.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("tern boot verify: {e}");
                return crate::exit_code::SOFTWARE;
            }
        }
    } else {
        println!("{}: {}", a.image.display(), report.verdict);
        if let Some(h) = &report.sha256 {
            println!("  authenticode sha256: {h}");
        }
        for s in &report.signatures {
            match &s.signer {
                Some(c) => println!("  signature {}: signer {c}", s.index),
                None => println!("  signature {}: no verified signer", s.index),
            }
        }
    }
    if report.verdict.allowed() {
        OK
    } else {
        DENIED
    }
}
