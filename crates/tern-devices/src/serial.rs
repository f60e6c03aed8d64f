//! The 16550 UART (COM1) on top of `vm-superio`, with its output sinks and
//! input sources.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use vm_superio::serial::NoEvents;
pub use vm_superio::serial::SerialState;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Raises the serial interrupt by signalling an eventfd the VMM registered
/// as an irqfd.
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps `evt`.
    pub fn new(evt: EventFd) -> Self {
        EventFdTrigger(evt)
    }
}

impl Trigger for EventFdTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Where the guest's serial output goes (`--serial`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialMode {
    /// The worker's standard output.
    Stdout,
    /// Appended to a file.
    File(PathBuf),
    /// A UNIX socket the worker listens on; every connected client gets the
    /// output and may type input.
    Socket(PathBuf),
    /// Discarded.
    Null,
}

impl std::str::FromStr for SerialMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stdout" => Ok(SerialMode::Stdout),
            "null" => Ok(SerialMode::Null),
            _ => {
                if let Some(p) = s.strip_prefix("file:").filter(|p| !p.is_empty()) {
                    Ok(SerialMode::File(p.into()))
                } else if let Some(p) = s.strip_prefix("socket:").filter(|p| !p.is_empty()) {
                    Ok(SerialMode::Socket(p.into()))
                } else {
                    Err(format!(
                        "bad serial mode '{s}': expected stdout, null, file:PATH or socket:PATH"
                    ))
                }
            }
        }
    }
}

/// Errors opening a serial sink.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// The output file could not be opened.
    #[error("cannot open serial output file {path}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A saved UART state was refused.
    #[error("saved serial state is invalid: {0}")]
    State(String),
    /// The console socket could not be created.
    #[error("cannot listen on serial socket {path}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The serial output sink; a write never fails towards the guest (a broken
/// console must not stop the VM), errors only drop output.
pub struct SerialOut {
    kind: OutKind,
}

enum OutKind {
    Stdout(io::Stdout),
    File(File),
    Clients(Arc<Mutex<Vec<UnixStream>>>),
    Null,
}

impl Write for SerialOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.kind {
            OutKind::Stdout(s) => {
                let _ = s.write_all(buf);
            }
            OutKind::File(f) => {
                let _ = f.write_all(buf);
            }
            OutKind::Clients(c) => {
                let mut clients = c.lock().unwrap_or_else(|p| p.into_inner());
                clients.retain_mut(|s| s.write_all(buf).is_ok());
            }
            OutKind::Null => {}
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if let OutKind::Stdout(s) = &mut self.kind {
            let _ = s.flush();
        }
        Ok(())
    }
}

/// The COM1 device as placed on the PIO bus.
pub struct SerialDevice {
    uart: Serial<EventFdTrigger, NoEvents, SerialOut>,
}

/// A serial device shared between the bus and input threads.
pub type SharedSerial = Arc<Mutex<SerialDevice>>;

impl SerialDevice {
    /// Creates COM1 writing to `mode`, interrupting through `irq`. For
    /// [`SerialMode::Socket`] a listener thread accepts console clients.
    pub fn open(mode: &SerialMode, irq: EventFd) -> Result<SharedSerial, SerialError> {
        Self::open_with_state(mode, irq, None)
    }

    /// Like [`SerialDevice::open`], continuing from a saved register state.
    pub fn open_with_state(
        mode: &SerialMode,
        irq: EventFd,
        state: Option<&SerialState>,
    ) -> Result<SharedSerial, SerialError> {
        let mut listener = None;
        let kind = match mode {
            SerialMode::Stdout => OutKind::Stdout(io::stdout()),
            SerialMode::Null => OutKind::Null,
            SerialMode::File(path) => OutKind::File(
                File::options()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| SerialError::File {
                        path: path.clone(),
                        source,
                    })?,
            ),
            SerialMode::Socket(path) => {
                let l = bind_socket(path).map_err(|source| SerialError::Socket {
                    path: path.clone(),
                    source,
                })?;
                let clients = Arc::new(Mutex::new(Vec::new()));
                listener = Some((l, clients.clone()));
                OutKind::Clients(clients)
            }
        };
        let out = SerialOut { kind };
        let uart = match state {
            None => Serial::new(EventFdTrigger::new(irq), out),
            Some(st) => Serial::from_state(st, EventFdTrigger::new(irq), NoEvents, out)
                .map_err(|e| SerialError::State(format!("{e:?}")))?,
        };
        let dev = Arc::new(Mutex::new(SerialDevice { uart }));
        if let Some((l, clients)) = listener {
            let dev = dev.clone();
            std::thread::Builder::new()
                .name("serial-accept".into())
                .spawn(move || accept_clients(l, clients, dev))
                .map_err(|source| SerialError::Socket {
                    path: PathBuf::new(),
                    source,
                })?;
        }
        Ok(dev)
    }

    /// The UART's registers and pending input, for saving.
    pub fn state(&self) -> SerialState {
        self.uart.state()
    }

    /// Queues bytes typed by the user for the guest to read.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

/// Types `bytes` on the guest's serial port, waiting (up to `timeout`) for
/// the guest to drain the UART's small FIFO. Returns how many it took.
pub fn type_input(dev: &SharedSerial, mut bytes: &[u8], timeout: std::time::Duration) -> usize {
    let deadline = std::time::Instant::now() + timeout;
    let total = bytes.len();
    while !bytes.is_empty() {
        let took = dev
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .enqueue_input(bytes);
        bytes = &bytes[took..];
        if took == 0 {
            if std::time::Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    total - bytes.len()
}

/// Forwards everything read from `input` to the guest's serial port, from a
/// thread of its own, until end of file.
pub fn spawn_input<R: Read + Send + 'static>(dev: SharedSerial, mut input: R) {
    let _ = std::thread::Builder::new()
        .name("serial-input".into())
        .spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok(n @ 1..) = input.read(&mut buf) {
                let mut rest = &buf[..n];
                // The UART FIFO is small: wait as long as the guest takes.
                while !rest.is_empty() {
                    let took = type_input(&dev, rest, std::time::Duration::from_secs(1));
                    rest = &rest[took..];
                }
            }
        });
}

fn bind_socket(path: &Path) -> io::Result<UnixListener> {
    // A stale socket from a dead worker would block the bind; a live one is
    // refused because connecting to it succeeds.
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another process serves this socket",
            ));
        }
        std::fs::remove_file(path)?;
    }
    UnixListener::bind(path)
}

fn accept_clients(l: UnixListener, clients: Arc<Mutex<Vec<UnixStream>>>, dev: SharedSerial) {
    for stream in l.incoming().flatten() {
        if let Ok(reader) = stream.try_clone() {
            spawn_input(dev.clone(), reader);
        }
        clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(stream);
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.uart.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&b), Ok(off)) = (data.first(), u8::try_from(offset)) {
            // The only error is a failed interrupt trigger; the byte is out.
            let _ = self.uart.write(off, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn parses_modes() {
        assert_eq!("stdout".parse(), Ok(SerialMode::Stdout));
        assert_eq!("null".parse(), Ok(SerialMode::Null));
        assert_eq!("file:/x".parse(), Ok(SerialMode::File("/x".into())));
        assert_eq!("socket:/s".parse(), Ok(SerialMode::Socket("/s".into())));
        assert!("file:".parse::<SerialMode>().is_err());
        assert!("tcp:1".parse::<SerialMode>().is_err());
    }

    #[test]
    fn file_sink_gets_transmitted_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let dev =
            SerialDevice::open(&SerialMode::File(path.clone()), EventFd::new(0).unwrap()).unwrap();
        for b in b"hi\n" {
            dev.lock().unwrap().write(0, &[*b]);
        }
        assert_eq!(std::fs::read(&path).unwrap(), b"hi\n");
    }

    #[test]
    fn socket_clients_see_output_and_can_type() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.sock");
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let dev = SerialDevice::open(&SerialMode::Socket(path.clone()), irq.try_clone().unwrap())
            .unwrap();
        let mut client = UnixStream::connect(&path).unwrap();
        // Wait until the accept thread registered the client.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            dev.lock().unwrap().write(0, b"x");
            client
                .set_read_timeout(Some(std::time::Duration::from_millis(50)))
                .unwrap();
            let mut b = [0u8; 1];
            if client.read(&mut b).is_ok() {
                assert_eq!(&b, b"x");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no output reached client"
            );
        }
        // Enable the RX interrupt, type, and read it back from the data register.
        dev.lock().unwrap().write(1, &[1]);
        client.write_all(b"k").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let mut lsr = [0u8];
            dev.lock().unwrap().read(5, &mut lsr);
            if lsr[0] & 1 != 0 {
                let mut d = [0u8];
                dev.lock().unwrap().read(0, &mut d);
                assert_eq!(&d, b"k");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "input never arrived");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(irq.read().unwrap() >= 1, "input raised the interrupt");
    }
}
