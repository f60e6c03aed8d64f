//! `tern completions` and `tern man`: shell completions and man pages made
//! from the same clap definitions the binaries parse with, so they never
//! drift from the real options (a package installs what these write).

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory, ValueEnum};
use clap_complete::Shell;

use crate::exit_code;

/// Which program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Program {
    /// The `tern` command line.
    Tern,
    /// The `ternd` daemon.
    Ternd,
}

/// `tern completions`.
#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    shell: Shell,
    /// Completions for this program.
    #[arg(long = "for", value_enum, default_value = "tern")]
    program: Program,
}

/// `tern man`.
#[derive(Args, Debug)]
pub struct ManArgs {
    /// Directory to write the pages into (created when missing): tern.1,
    /// one tern-SUBCOMMAND.1 per subcommand, and ternd.8.
    dir: PathBuf,
}

fn command(p: Program) -> clap::Command {
    match p {
        Program::Tern => crate::Cli::command(),
        Program::Ternd => tern_daemon::server::Args::command(),
    }
}

/// Prints the completion script; returns the exit code.
pub fn completions(args: CompletionsArgs) -> i32 {
    let mut cmd = command(args.program);
    let name = cmd.get_name().to_string();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(args.shell, &mut cmd, name, &mut out);
    match out.flush() {
        Ok(()) => exit_code::OK,
        Err(_) => exit_code::CANT_CREATE,
    }
}

/// Writes the man pages; returns the exit code.
pub fn man(args: ManArgs) -> i32 {
    match write_pages(&args.dir) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            exit_code::OK
        }
        Err(e) => {
            eprintln!(
                "tern: error: cannot write man pages into {}: {e}",
                args.dir.display()
            );
            exit_code::CANT_CREATE
        }
    }
}

/// Every page: `tern` and its subcommands in section 1, `ternd` in 8
/// (system administration). Returns the files written.
pub fn write_pages(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let tern = command(Program::Tern);
    write_tree(dir, &tern, "tern", &mut written)?;
    let ternd = command(Program::Ternd);
    let path = dir.join("ternd.8");
    let mut buf = Vec::new();
    clap_mangen::Man::new(ternd).section("8").render(&mut buf)?;
    std::fs::write(&path, buf)?;
    written.push(path);
    Ok(written)
}

/// `cmd`'s page as `name.1`, then each visible subcommand's as
/// `name-sub.1`, depth first.
fn write_tree(
    dir: &Path,
    cmd: &clap::Command,
    name: &str,
    written: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    let cmd = cmd.clone().name(name.to_string());
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut buf)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, buf)?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        write_tree(dir, sub, &format!("{name}-{}", sub.get_name()), written)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_pages_cover_every_subcommand_and_ternd() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_pages(dir.path()).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "tern.1",
            "tern-run.1",
            "tern-vm-create.1",
            "tern-disk.1",
            "ternd.8",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
        let run = std::fs::read_to_string(dir.path().join("tern-run.1")).unwrap();
        assert!(run.starts_with(".ie") || run.contains(".TH"), "{run}");
        assert!(
            run.contains("listening\\-file"),
            "tern run's options are in its page"
        );
        let ternd = std::fs::read_to_string(dir.path().join("ternd.8")).unwrap();
        assert!(ternd.contains(".TH ternd 8"), "{ternd}");
    }

    #[test]
    fn completions_know_the_subcommands() {
        let mut cmd = command(Program::Tern);
        let mut out = Vec::new();
        clap_complete::generate(Shell::Bash, &mut cmd, "tern", &mut out);
        let text = String::from_utf8(out).unwrap();
        for word in ["run", "migrate", "volume", "--listening-file"] {
            assert!(text.contains(word), "{word} not completed");
        }
        let mut cmd = command(Program::Ternd);
        let mut out = Vec::new();
        clap_complete::generate(Shell::Zsh, &mut cmd, "ternd", &mut out);
        assert!(String::from_utf8(out).unwrap().contains("--state-dir"));
    }
}
