//! The 16550 UART (COM1) on top of `vm-superio`, with its output sinks and
//! input sources.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

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
    Clients(Arc<Console>),
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
            OutKind::Clients(c) => c.write(buf),
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

impl Drop for SerialOut {
    fn drop(&mut self) {
        if let OutKind::Clients(c) = &self.kind {
            c.close();
        }
    }
}
/// Output a console client may have queued and not yet read, beyond what
/// the kernel's socket buffer holds. Past it, output for that client is
/// dropped (and counted) until it catches up.
pub const CLIENT_BACKLOG: usize = 64 << 10;

/// Output a client may lose in one stretch before it is disconnected.
pub const DISCONNECT_AFTER: u64 = 1 << 20;

/// How long a disconnected client has to read its farewell notice.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the flusher retries clients with a backlog.
const FLUSH_INTERVAL: Duration = Duration::from_millis(20);

/// The line a client gets where output was dropped for it.
fn dropped_marker(bytes: u64) -> String {
    format!("\r\n[tern: console output dropped: {bytes} bytes]\r\n")
}

/// The last line a client gets before it is disconnected for falling behind.
fn disconnect_notice(bytes: u64) -> String {
    format!("\r\n[tern: console disconnected: {bytes} bytes behind]\r\n")
}

/// The console clients of a `socket:` serial port. The vCPU thread only
/// appends to bounded per-client backlogs and makes non-blocking sends; a
/// flusher thread drains the backlogs, so a client that stops reading
/// never stalls the guest.
pub(crate) struct Console {
    clients: Mutex<Clients>,
    wake: Condvar,
}

#[derive(Default)]
struct Clients {
    list: Vec<Client>,
    closed: bool,
}

struct Client {
    stream: UnixStream,
    /// Output not yet taken by the socket, at most [`CLIENT_BACKLOG`] bytes.
    backlog: VecDeque<u8>,
    /// Bytes dropped since the client last got a marker.
    dropped: u64,
    /// Set when the client fell too far behind: only the farewell notice is
    /// left to send, until this deadline.
    closing: Option<Instant>,
    /// The socket failed or the client is done: remove it.
    gone: bool,
}

/// What a non-blocking send achieved.
enum Sent {
    /// This many bytes were taken.
    Bytes(usize),
    /// The socket buffer is full.
    Full,
    /// The client went away.
    Gone,
}

fn send(stream: &UnixStream, buf: &[u8]) -> Sent {
    use rustix::net::SendFlags;
    // Per-call non-blocking: the input thread reads the same socket and
    // must keep blocking reads, so O_NONBLOCK (shared by the clone) is out.
    loop {
        match rustix::net::send(stream, buf, SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
            Ok(n) => return Sent::Bytes(n),
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => return Sent::Full,
            Err(_) => return Sent::Gone,
        }
    }
}

impl Client {
    fn new(stream: UnixStream) -> Self {
        Client {
            stream,
            backlog: VecDeque::new(),
            dropped: 0,
            closing: None,
            gone: false,
        }
    }

    /// Queues `data` for this client; returns whether a backlog remains for
    /// the flusher.
    fn push(&mut self, mut data: &[u8]) -> bool {
        if self.gone || self.closing.is_some() {
            return !self.backlog.is_empty();
        }
        if self.backlog.is_empty() && self.dropped == 0 {
            match send(&self.stream, data) {
                Sent::Bytes(n) => data = &data[n..],
                Sent::Full => {}
                Sent::Gone => {
                    self.gone = true;
                    return false;
                }
            }
        }
        if self.dropped == 0 {
            let room = CLIENT_BACKLOG - self.backlog.len();
            let (kept, lost) = data.split_at(data.len().min(room));
            self.backlog.extend(kept);
            data = lost;
        }
        self.dropped += data.len() as u64;
        if self.dropped > DISCONNECT_AFTER {
            // Whatever it still had queued is stale: replace it with the
            // reason it is being disconnected.
            self.backlog.clear();
            self.backlog
                .extend(disconnect_notice(self.dropped).as_bytes());
            self.closing = Some(Instant::now() + FAREWELL_TIMEOUT);
        }
        !self.backlog.is_empty()
    }

    /// Sends what the socket takes of the backlog; once it has room again,
    /// tells the client how much it lost. Returns whether a backlog remains.
    fn flush(&mut self, now: Instant) -> bool {
        loop {
            while !self.backlog.is_empty() && !self.gone {
                match send(&self.stream, self.backlog.as_slices().0) {
                    Sent::Bytes(n) => drop(self.backlog.drain(..n)),
                    Sent::Full => break,
                    Sent::Gone => self.gone = true,
                }
            }
            if self.gone {
                return false;
            }
            if let Some(deadline) = self.closing {
                if self.backlog.is_empty() || now >= deadline {
                    self.gone = true;
                }
                return !self.gone;
            }
            let marker = dropped_marker(self.dropped);
            // Resume only with room to spare, so a client that reads a
            // little at a time is not told about every few bytes lost.
            if self.dropped == 0 || self.backlog.len() + marker.len() > CLIENT_BACKLOG / 2 {
                return !self.backlog.is_empty();
            }
            self.backlog.extend(marker.as_bytes());
            self.dropped = 0;
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Ends the client's input thread too (it reads a clone).
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

impl Console {
    /// A console with no clients yet, and its flusher thread.
    fn start() -> io::Result<Arc<Console>> {
        let console = Arc::new(Console {
            clients: Mutex::new(Clients::default()),
            wake: Condvar::new(),
        });
        let weak = Arc::downgrade(&console);
        std::thread::Builder::new()
            .name("serial-flush".into())
            .spawn(move || flush_clients(weak))?;
        Ok(console)
    }

    fn lock(&self) -> MutexGuard<'_, Clients> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a connected client; it gets output from now on.
    fn add(&self, stream: UnixStream) {
        let mut clients = self.lock();
        if !clients.closed {
            clients.list.push(Client::new(stream));
        }
    }

    /// Hands guest output to every client without blocking.
    fn write(&self, buf: &[u8]) {
        let mut clients = self.lock();
        let mut backlog = false;
        for c in &mut clients.list {
            backlog |= c.push(buf);
        }
        clients.list.retain(|c| !c.gone);
        if backlog {
            self.wake.notify_one();
        }
    }

    /// Stops the flusher and disconnects every client.
    fn close(&self) {
        let mut clients = self.lock();
        clients.closed = true;
        clients.list.clear();
        self.wake.notify_one();
    }
}

/// The flusher thread: drains backlogs, retrying every [`FLUSH_INTERVAL`]
/// while any remains, sleeping otherwise.
fn flush_clients(console: Weak<Console>) {
    while let Some(console) = console.upgrade() {
        let mut clients = console.lock();
        if clients.closed {
            return;
        }
        let now = Instant::now();
        let mut backlog = false;
        for c in &mut clients.list {
            backlog |= c.flush(now);
        }
        clients.list.retain(|c| !c.gone);
        if backlog {
            drop(console.wake.wait_timeout(clients, FLUSH_INTERVAL));
        } else {
            drop(console.wake.wait(clients));
        }
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
                let console = Console::start().map_err(|source| SerialError::Socket {
                    path: path.clone(),
                    source,
                })?;
                listener = Some((l, console.clone()));
                OutKind::Clients(console)
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

fn accept_clients(l: UnixListener, console: Arc<Console>, dev: SharedSerial) {
    for stream in l.incoming().flatten() {
        if let Ok(reader) = stream.try_clone() {
            spawn_input(dev.clone(), reader);
        }
        console.add(stream);
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

    /// A console on a fresh socket, and a client connected to it and
    /// registered (the accept thread adds clients asynchronously).
    fn console_with_clients(n: usize) -> (tempfile::TempDir, SharedSerial, Vec<UnixStream>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.sock");
        let dev = SerialDevice::open(&SerialMode::Socket(path.clone()), EventFd::new(0).unwrap())
            .unwrap();
        let clients: Vec<UnixStream> = (0..n)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        let console = match &dev.lock().unwrap().uart.writer().kind {
            OutKind::Clients(c) => c.clone(),
            _ => unreachable!(),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while console.lock().list.len() < n {
            assert!(Instant::now() < deadline, "clients never registered");
            std::thread::sleep(Duration::from_millis(5));
        }
        (dir, dev, clients)
    }

    /// Guest output as the vCPU produces it: one byte per register write.
    fn transmit(dev: &SharedSerial, bytes: &[u8]) {
        for b in bytes {
            dev.lock().unwrap().write(0, &[*b]);
        }
    }

    /// Reads what `s` has until `until` appears in it or `timeout` passes.
    fn read_until(s: &mut UnixStream, until: &[u8], timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        while !got.windows(until.len()).any(|w| w == until) && Instant::now() < deadline {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
        got
    }

    #[test]
    fn a_client_that_never_reads_stalls_nothing_and_is_told_what_it_lost() {
        let (_dir, dev, mut clients) = console_with_clients(2);
        let mut reader = clients.pop().unwrap();
        let mut stuck = clients.pop().unwrap();
        // Far more than the stuck client's kernel buffer and backlog hold
        // (with byte-sized sends the old blocking code stalled after a few
        // hundred bytes), in lines the reading client reads as they come.
        let line = [b'a'; 1023];
        let lines = 512;
        let started = Instant::now();
        let mut seen = 0;
        for i in 0..lines {
            transmit(&dev, &line);
            transmit(&dev, b"\n");
            let got = read_until(&mut reader, b"\n", Duration::from_secs(5));
            assert_eq!(got.len(), 1024, "line {i} reached the reading client whole");
            seen += got.len();
        }
        assert_eq!(seen, lines * 1024);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "output took {:?}",
            started.elapsed()
        );
        // The stuck client, once it reads, gets what fitted, then the
        // marker (the flusher adds it once the backlog drained), then any
        // new output.
        let got = read_until(&mut stuck, b" bytes]\r\n", Duration::from_secs(5));
        let text = String::from_utf8_lossy(&got);
        let at = text
            .find("[tern: console output dropped: ")
            .unwrap_or_else(|| panic!("no marker in {} bytes", got.len()));
        let lost: u64 = text[at..]
            .trim_start_matches("[tern: console output dropped: ")
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let kept = text[..at].trim_end_matches("\r\n").len() as u64;
        assert!(kept >= CLIENT_BACKLOG as u64, "kept {kept}");
        assert_eq!(
            kept + lost,
            (lines * 1024) as u64,
            "every byte kept or counted"
        );
        transmit(&dev, b"after\n");
        assert!(read_until(&mut stuck, b"after\n", Duration::from_secs(5)).ends_with(b"after\n"));
    }

    #[test]
    fn a_client_far_behind_is_disconnected_with_a_notice() {
        let (_dir, dev, mut clients) = console_with_clients(1);
        let mut stuck = clients.pop().unwrap();
        let chunk = [b'z'; 4096];
        let total = DISCONNECT_AFTER as usize + 512 * 1024;
        for _ in 0..total / chunk.len() {
            // Straight into the sink: the per-byte path is exercised above.
            let _ = dev.lock().unwrap().uart.writer_mut().write(&chunk);
        }
        let got = read_until(&mut stuck, b" bytes behind]\r\n", Duration::from_secs(10));
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.contains("[tern: console disconnected: "),
            "no notice in {} bytes",
            got.len()
        );
        // Then end of file: the worker closed its side.
        let mut rest = Vec::new();
        stuck
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stuck.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "{} bytes after the notice", rest.len());
        assert!(
            match &dev.lock().unwrap().uart.writer().kind {
                OutKind::Clients(c) => c.lock().list.is_empty(),
                _ => false,
            },
            "client still registered"
        );
    }
}
