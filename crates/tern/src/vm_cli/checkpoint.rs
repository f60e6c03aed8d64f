//! `tern checkpoint ...`: checkpoints of a VM.

use clap::{Args, Subcommand};

use super::{client, print_json, CmdResult, Conn};

/// `tern checkpoint ...`.
#[derive(Args, Debug)]
pub struct CheckpointCmd {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    action: CheckpointAction,
}

#[derive(Subcommand, Debug)]
enum CheckpointAction {
    /// Take a checkpoint of a VM.
    Create {
        /// VM name or id.
        vm: String,
        /// Checkpoint name.
        name: String,
    },
    /// List a VM's checkpoints.
    #[command(alias = "ls")]
    List {
        /// VM name or id.
        vm: String,
    },
    /// Delete a checkpoint.
    #[command(alias = "rm")]
    Delete {
        /// VM name or id.
        vm: String,
        /// Checkpoint name or id.
        name: String,
    },
    /// Revert a VM to a checkpoint.
    Apply {
        /// VM name or id.
        vm: String,
        /// Checkpoint name or id.
        name: String,
    },
}

/// Runs `tern checkpoint ...`.
pub(super) async fn run(cmd: CheckpointCmd) -> CmdResult {
    let c = client(&cmd.conn)?;
    let json = cmd.conn.json;
    match cmd.action {
        CheckpointAction::Create { vm, name } => {
            let cp = c.create_checkpoint(&vm, &name).await?;
            if json {
                print_json(&cp);
            } else {
                println!("{vm}: checkpoint {} taken", cp.name);
            }
        }
        CheckpointAction::List { vm } => {
            let cps = c.list_checkpoints(&vm).await?;
            if json {
                print_json(&tern_api::CheckpointList { checkpoints: cps });
            } else {
                println!("{:<20} {:<18} CREATED", "NAME", "ID");
                for cp in cps {
                    println!("{:<20} {:<18} {}", cp.name, cp.id, cp.created_at);
                }
            }
        }
        CheckpointAction::Delete { vm, name } => {
            c.delete_checkpoint(&vm, &name).await?;
            if !json {
                println!("{vm}: checkpoint {name} deleted");
            }
        }
        CheckpointAction::Apply { vm, name } => {
            let v = c.apply_checkpoint(&vm, &name).await?;
            if json {
                print_json(&v);
            } else {
                println!("{}: reverted to {name} ({})", v.name, v.state);
            }
        }
    }
    Ok(())
}
