//! `tern vm console`: the VM's serial console on the terminal, over the
//! daemon's WebSocket.

use std::io::{IsTerminal, Write};

use futures_util::{SinkExt, StreamExt};
use tern_api::client::WsMessage;
use tern_api::Client;

use super::{code, CmdResult, Fail};

/// Parses `ctrl-X` (or `^X`) into the control byte it sends.
pub(super) fn parse_detach_key(s: &str) -> Result<u8, String> {
    let c = s
        .strip_prefix("ctrl-")
        .or_else(|| s.strip_prefix("^"))
        .filter(|c| c.len() == 1)
        .ok_or_else(|| format!("bad detach key '{s}': expected ctrl-X"))?
        .as_bytes()[0]
        .to_ascii_uppercase();
    match c {
        b'A'..=b'Z' | b'[' | b'\\' | b']' | b'^' | b'_' => Ok(c & 0x1f),
        _ => Err(format!("bad detach key '{s}': expected ctrl-X")),
    }
}

/// Puts the terminal in raw mode while alive (only when stdin is one).
struct RawMode(Option<rustix::termios::Termios>);

impl RawMode {
    fn enter() -> RawMode {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return RawMode(None);
        }
        let Ok(old) = rustix::termios::tcgetattr(&stdin) else {
            return RawMode(None);
        };
        let mut raw = old.clone();
        raw.make_raw();
        if rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw).is_err()
        {
            return RawMode(None);
        }
        RawMode(Some(old))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            let _ = rustix::termios::tcsetattr(
                std::io::stdin(),
                rustix::termios::OptionalActions::Now,
                old,
            );
        }
    }
}

/// Bridges stdin/stdout to the VM's serial console until the detach key,
/// the end of stdin, or the end of the VM.
pub(super) async fn attach(c: &Client, name: &str, detach_key: u8) -> CmdResult {
    let ws = c.console(name).await?;
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "Connected to {name}'s console. Detach with Ctrl-{}.\r",
            (detach_key | 0x40) as char
        );
    }
    let _raw = RawMode::enter();
    let (mut tx, mut rx) = ws.split();
    // Stdin is read on a thread: tokio's stdin would keep the runtime from
    // exiting while a read blocks.
    let (in_tx, mut in_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 256];
        while let Ok(n @ 1..) = std::io::Read::read(&mut stdin, &mut buf) {
            if in_tx.blocking_send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    let mut stdout = std::io::stdout();
    let mut stdin_open = true;
    let end = loop {
        tokio::select! {
            msg = rx.next() => match msg {
                Some(Ok(WsMessage::Binary(b))) => {
                    let _ = stdout.write_all(&b);
                    let _ = stdout.flush();
                }
                Some(Ok(WsMessage::Text(t))) => {
                    let _ = stdout.write_all(t.as_bytes());
                    let _ = stdout.flush();
                }
                Some(Ok(WsMessage::Close(f))) => {
                    break f.map(|f| f.reason.to_string()).unwrap_or_else(|| "closed".into());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(Fail(code::FAILED, format!("console connection lost: {e}"))),
                None => break "closed".into(),
            },
            data = in_rx.recv(), if stdin_open => match data {
                Some(d) => {
                    if let Some(i) = d.iter().position(|&b| b == detach_key) {
                        if i > 0 {
                            let _ = tx.send(WsMessage::Binary(d[..i].to_vec().into())).await;
                        }
                        let _ = tx.send(WsMessage::Close(None)).await;
                        break "detached".into();
                    }
                    if tx.send(WsMessage::Binary(d.into())).await.is_err() {
                        break "closed".into();
                    }
                }
                // Without input the console goes on showing output.
                None => stdin_open = false,
            },
        }
    };
    drop(_raw);
    eprintln!("\r\n[tern: console of {name}: {end}]");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_parse() {
        assert_eq!(parse_detach_key("ctrl-]"), Ok(0x1d));
        assert_eq!(parse_detach_key("ctrl-a"), Ok(0x01));
        assert_eq!(parse_detach_key("^Q"), Ok(0x11));
        assert!(parse_detach_key("x").is_err());
        assert!(parse_detach_key("ctrl-1").is_err());
    }
}
