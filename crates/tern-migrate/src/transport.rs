//! Transports: TCP (one control and N data connections) and a UNIX socket
//! (same host; guest memory handed over as a memfd with SCM_RIGHTS).

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Where a migration goes to or is awaited on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `tcp:HOST:PORT`.
    Tcp(String),
    /// `unix:PATH` (same host, zero-copy).
    Unix(PathBuf),
}

impl FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(a) = s.strip_prefix("tcp:") {
            if a.rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                return Err(format!("'{s}': expected tcp:HOST:PORT"));
            }
            Ok(Endpoint::Tcp(a.to_string()))
        } else if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err(format!("'{s}': expected unix:PATH"));
            }
            Ok(Endpoint::Unix(p.into()))
        } else {
            Err(format!("'{s}': expected tcp:HOST:PORT or unix:PATH"))
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "tcp:{a}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A connected byte stream of either kind.
#[derive(Debug)]
pub enum Stream {
    /// TCP.
    Tcp(TcpStream),
    /// UNIX stream socket.
    Unix(UnixStream),
}

impl Stream {
    /// Connects to `ep`.
    pub fn connect(ep: &Endpoint, timeout: Duration) -> io::Result<Stream> {
        match ep {
            Endpoint::Tcp(a) => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
                for addr in a.to_socket_addrs()? {
                    match TcpStream::connect_timeout(&addr, timeout) {
                        Ok(s) => {
                            s.set_nodelay(true)?;
                            return Ok(Stream::Tcp(s));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
            Endpoint::Unix(p) => UnixStream::connect(p).map(Stream::Unix),
        }
    }

    /// Sets read and write timeouts (None: block forever).
    pub fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
            Stream::Unix(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
        }
    }

    /// A second handle to the same socket.
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }

    /// Closes both directions, waking a reader blocked on another handle.
    pub fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }

    /// Bytes written but not yet taken by the peer (TCP: not yet
    /// acknowledged), from the socket's send queue.
    pub fn unsent(&self) -> io::Result<u64> {
        let mut n: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int to the pointer.
        if unsafe { libc::ioctl(self.as_fd().as_raw_fd(), libc::TIOCOUTQ, &mut n) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n.max(0) as u64)
    }

    /// The UNIX socket, if this is one.
    pub fn as_unix(&self) -> Option<&UnixStream> {
        match self {
            Stream::Unix(s) => Some(s),
            Stream::Tcp(_) => None,
        }
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

/// Most iovecs one readv/writev takes (Linux: IOV_MAX).
const IOV_MAX: usize = 1024;

/// Drops the first `n` bytes of `iov` (a partial transfer); returns how
/// many entries were used up entirely.
fn advance(iov: &mut [libc::iovec], mut n: usize) -> usize {
    let mut done = 0;
    for v in iov.iter_mut() {
        if n < v.iov_len {
            // SAFETY: stays inside the buffer (n < iov_len).
            v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n) }.cast();
            v.iov_len -= n;
            return done;
        }
        n -= v.iov_len;
        v.iov_len = 0;
        done += 1;
    }
    done
}

/// Writes every byte that `iov` describes to `fd` (writev, resumed after
/// partial writes; EINTR retried). `iov` is used up in the process.
///
/// # Safety
///
/// Every entry must describe memory readable for its length for the
/// whole call (it may change meanwhile: what goes out is then whatever
/// the kernel read).
pub unsafe fn write_all_vectored(fd: BorrowedFd<'_>, iov: &mut [libc::iovec]) -> io::Result<()> {
    // SAFETY: the caller's promise is writev's.
    unsafe { all_vectored(fd, iov, libc::writev, io::ErrorKind::WriteZero) }
}

/// Fills every buffer that `iov` describes from `fd` (readv, resumed after
/// partial reads; EINTR retried); the end of the stream before that is
/// an `UnexpectedEof` error. `iov` is used up in the process.
///
/// # Safety
///
/// Every entry must describe memory writable for its length for the
/// whole call, that nothing else reads or writes meanwhile.
pub unsafe fn read_exact_vectored(fd: BorrowedFd<'_>, iov: &mut [libc::iovec]) -> io::Result<()> {
    // SAFETY: the caller's promise is readv's.
    unsafe { all_vectored(fd, iov, libc::readv, io::ErrorKind::UnexpectedEof) }
}

/// `readv` or `writev`.
type VectoredIo = unsafe extern "C" fn(libc::c_int, *const libc::iovec, libc::c_int) -> isize;

/// Runs `op` until every entry of `iov` is used up; a result of 0 bytes
/// before that is the error `at_zero`.
///
/// # Safety
///
/// As for the public callers: the buffers are valid for `op` throughout.
unsafe fn all_vectored(
    fd: BorrowedFd<'_>,
    mut iov: &mut [libc::iovec],
    op: VectoredIo,
    at_zero: io::ErrorKind,
) -> io::Result<()> {
    loop {
        // Empty entries first: a readv of nothing would look like the end.
        let skip = advance(iov, 0);
        iov = &mut iov[skip..];
        if iov.is_empty() {
            return Ok(());
        }
        let cnt = iov.len().min(IOV_MAX);
        // SAFETY: the caller vouches for the buffers; `iov` is a live array
        // of `cnt` entries.
        let n = unsafe { op(fd.as_raw_fd(), iov.as_ptr(), cnt as libc::c_int) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(at_zero.into());
        }
        let done = advance(iov, n as usize);
        iov = &mut iov[done..];
    }
}

/// Reads exactly `buf.len()` bytes from `fd`.
pub fn read_exact_fd(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<()> {
    let mut iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    // SAFETY: `buf` is an exclusively borrowed buffer of that length.
    unsafe { read_exact_vectored(fd, &mut iov) }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A listening endpoint.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// UNIX.
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Listens on `ep` (a TCP port of 0 picks a free one; see
    /// [`Listener::local`]). A stale UNIX socket file is replaced.
    pub fn bind(ep: &Endpoint) -> io::Result<Listener> {
        match ep {
            Endpoint::Tcp(a) => TcpListener::bind(a.as_str()).map(Listener::Tcp),
            Endpoint::Unix(p) => {
                if p.exists() && UnixStream::connect(p).is_err() {
                    std::fs::remove_file(p)?;
                }
                UnixListener::bind(p).map(|l| Listener::Unix(l, p.clone()))
            }
        }
    }

    /// The endpoint actually bound.
    pub fn local(&self) -> io::Result<Endpoint> {
        Ok(match self {
            Listener::Tcp(l) => Endpoint::Tcp(l.local_addr()?.to_string()),
            Listener::Unix(_, p) => Endpoint::Unix(p.clone()),
        })
    }

    /// Waits for the next connection.
    pub fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept()?;
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
            Listener::Unix(l, _) => Ok(Stream::Unix(l.accept()?.0)),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Sends one byte carrying `fd` as SCM_RIGHTS.
pub fn send_fd(sock: &UnixStream, fd: &File) -> io::Result<()> {
    let mut byte = [b'M'];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // A u64 array keeps the control buffer aligned for cmsghdr.
    let mut cbuf = [0u64; 8];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    assert!(space <= std::mem::size_of_val(&cbuf));
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg_control points at `cbuf`, large enough for one cmsghdr
    // with an int (checked above), so CMSG_FIRSTHDR is non-null and the
    // writes stay inside `cbuf`.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>(), fd.as_raw_fd());
    }
    // SAFETY: `msg` points at live buffers (`byte`, `cbuf`) for the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n != 1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives the byte sent by [`send_fd`] and the descriptor it carries.
pub fn recv_fd(sock: &UnixStream) -> io::Result<File> {
    let mut byte = [0u8];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut cbuf = [0u64; 8];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
    // SAFETY: `msg` points at live buffers for the call; CLOEXEC keeps the
    // descriptor out of children.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("control data truncated"));
    }
    // SAFETY: the kernel filled `msg` (and `cbuf`) for `n` bytes; the CMSG
    // macros walk only within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                // The kernel installed a new descriptor for us: we own it.
                return Ok(File::from(OwnedFd::from_raw_fd(fd)));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Err(io::Error::other("no file descriptor in the message"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            "tcp:127.0.0.1:4000".parse::<Endpoint>(),
            Ok(Endpoint::Tcp("127.0.0.1:4000".into()))
        );
        assert_eq!(
            "unix:/run/x.sock".parse::<Endpoint>(),
            Ok(Endpoint::Unix("/run/x.sock".into()))
        );
        for bad in ["tcp:host", "tcp::1", "udp:x:1", "unix:", "127.0.0.1:80"] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn vectored_io_moves_every_byte_across_partial_transfers() {
        let (a, b) = UnixStream::pair().unwrap();
        // Far more than a socket buffer: writev and readv return short.
        let src: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i * 7 + i / 4093) as u8)
            .collect();
        let pieces = [0usize, 1, 4095, 1_000_000, 3_000_000];
        let t = {
            let src = src.clone();
            std::thread::spawn(move || {
                let mut iov: Vec<libc::iovec> = pieces
                    .windows(2)
                    .map(|w| libc::iovec {
                        iov_base: src[w[0]..].as_ptr() as *mut _,
                        iov_len: w[1] - w[0],
                    })
                    .collect();
                // SAFETY: `src` outlives the call and is only read.
                unsafe { write_all_vectored(a.as_fd(), &mut iov) }.unwrap();
            })
        };
        let mut dst = vec![0u8; src.len()];
        let mut iov: Vec<libc::iovec> = [0usize, 17, 2_000_000, 3_000_000]
            .windows(2)
            .map(|w| libc::iovec {
                iov_base: dst[w[0]..].as_mut_ptr().cast(),
                iov_len: w[1] - w[0],
            })
            .collect();
        // SAFETY: `dst` is ours alone for the call.
        unsafe { read_exact_vectored(b.as_fd(), &mut iov) }.unwrap();
        t.join().unwrap();
        assert!(dst == src);
        drop(b);
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        let mut buf = [0u8; 4];
        let e = read_exact_fd(b.as_fd(), &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_file_travels_over_scm_rights() {
        let (a, b) = UnixStream::pair().unwrap();
        let f = tempfile::tempfile().unwrap();
        f.write_all_at(b"shared", 0).unwrap();
        send_fd(&a, &f).unwrap();
        let g = recv_fd(&b).unwrap();
        let mut buf = [0u8; 6];
        g.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"shared");
    }
}
