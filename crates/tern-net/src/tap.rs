//! A tap device with the virtio-net header on every frame.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;

/// Length of the header in front of every frame read or written: virtio
/// 1.x's `virtio_net_hdr` including `num_buffers`, which is what a guest
/// with VERSION_1 uses on both rings.
pub const VNET_HDR_LEN: usize = 12;

/// Longest interface name (IFNAMSIZ less the NUL).
pub const MAX_NAME: usize = libc::IFNAMSIZ - 1;

/// The tap's offloads (`TUNSETOFFLOAD`): what the kernel may hand the
/// reader without finishing it (partial checksums, GSO frames).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offloads {
    /// Frames may carry a partial checksum (`TUN_F_CSUM`).
    pub csum: bool,
    /// TCPv4 segmentation left to the reader (`TUN_F_TSO4`).
    pub tso4: bool,
    /// TCPv6 segmentation (`TUN_F_TSO6`).
    pub tso6: bool,
    /// Explicit congestion notification with TSO (`TUN_F_TSO_ECN`).
    pub tso_ecn: bool,
}

impl Offloads {
    fn flags(self) -> libc::c_uint {
        let mut f = 0;
        if self.csum {
            f |= libc::TUN_F_CSUM;
            // The kernel accepts TSO only with checksum offload.
            if self.tso4 {
                f |= libc::TUN_F_TSO4;
            }
            if self.tso6 {
                f |= libc::TUN_F_TSO6;
            }
            if self.tso_ecn && (self.tso4 || self.tso6) {
                f |= libc::TUN_F_TSO_ECN;
            }
        }
        f
    }
}

/// Errors opening or configuring a tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name is empty, too long or has a NUL or `/`.
    #[error("bad tap name '{0}' (1 to {MAX_NAME} bytes, no NUL, '/' or whitespace)")]
    BadName(String),
    /// `/dev/net/tun` cannot be opened.
    #[error("cannot open /dev/net/tun (is the tun module loaded, and are we allowed to?)")]
    OpenTun(#[source] io::Error),
    /// An ioctl failed.
    #[error("tap {name}: {what} failed")]
    Ioctl {
        /// The interface.
        name: String,
        /// Which request.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The kernel gave the tap another name than asked for.
    #[error("asked for tap '{asked}', the kernel made '{got}'")]
    Renamed {
        /// The name asked for.
        asked: String,
        /// The name made.
        got: String,
    },
}

/// An open tap device. Reads and writes are non-blocking; poll the fd
/// ([`AsFd`]) for readiness.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

/// `struct ifreq` as TUNSETIFF uses it: a name and a flags word.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl Tap {
    /// Opens (creating if needed) the tap `name` with the virtio-net header
    /// and no offloads yet (see [`Tap::set_offloads`]). A persistent tap
    /// made beforehand (`ip tuntap add mode tap vnet_hdr`) is attached to.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if name.is_empty()
            || name.len() > MAX_NAME
            || name
                .bytes()
                .any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace())
        {
            return Err(TapError::BadName(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _pad: [0; 22],
        };
        for (d, s) in req.name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        let tap = Tap {
            file,
            name: name.to_string(),
        };
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` has its
        // layout (16-byte name, then the union whose first member is the
        // flags short, padded to 40 bytes) and lives across the call.
        let r = unsafe { libc::ioctl(tap.fd(), libc::TUNSETIFF, &mut req as *mut IfReq) };
        tap.check(r, "TUNSETIFF")?;
        // SAFETY: the kernel NUL-terminates the name it writes back within
        // IFNAMSIZ, and `req.name` is IFNAMSIZ long and zeroed beyond it.
        let got = unsafe { CStr::from_ptr(req.name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        if got != name {
            return Err(TapError::Renamed {
                asked: name.into(),
                got,
            });
        }
        let len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which
        // points at `len`, alive across the call.
        let r = unsafe { libc::ioctl(tap.fd(), libc::TUNSETVNETHDRSZ, &len as *const libc::c_int) };
        tap.check(r, "TUNSETVNETHDRSZ")?;
        tap.set_offloads(Offloads::default())?;
        Ok(tap)
    }

    /// Makes the tap outlive this handle (`TUNSETPERSIST`): the daemon
    /// creates a VM's tap and enslaves it to a bridge before the worker
    /// opens it by name; `false` lets the kernel remove it when the last
    /// handle closes.
    pub fn set_persist(&self, persist: bool) -> Result<(), TapError> {
        // SAFETY: TUNSETPERSIST takes its argument by value (0 or 1); no
        // memory is passed.
        let r =
            unsafe { libc::ioctl(self.fd(), libc::TUNSETPERSIST, libc::c_ulong::from(persist)) };
        self.check(r, "TUNSETPERSIST")
    }

    fn fd(&self) -> libc::c_int {
        self.file.as_raw_fd()
    }

    fn check(&self, r: libc::c_int, what: &'static str) -> Result<(), TapError> {
        if r < 0 {
            return Err(TapError::Ioctl {
                name: self.name.clone(),
                what,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets what the kernel may hand us unfinished: only what the guest
    /// accepted (a guest without GUEST_TSO4 cannot take a 64 KiB frame).
    pub fn set_offloads(&self, o: Offloads) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned
        // long of TUN_F_* bits); no memory is passed.
        let r = unsafe { libc::ioctl(self.fd(), libc::TUNSETOFFLOAD, o.flags() as libc::c_ulong) };
        self.check(r, "TUNSETOFFLOAD")
    }

    /// Reads one frame (header first) into `buf`; `Ok(None)` when none is
    /// waiting. A frame longer than `buf` is cut by the kernel: give at
    /// least [`VNET_HDR_LEN`] + 65550 bytes when GSO offloads are on.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match (&self.file).read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes one frame (header first). `Ok(false)`: the tap's queue is
    /// full (or the interface is down) and the frame was not taken.
    pub fn write_frame(&self, frame: &[u8]) -> io::Result<bool> {
        match (&self.file).write(frame) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_names() {
        for n in ["", "a/b", "has space", "0123456789abcdef"] {
            assert!(matches!(Tap::open(n), Err(TapError::BadName(_))), "{n:?}");
        }
    }

    #[test]
    fn offload_flags_follow_the_kernel_rules() {
        assert_eq!(Offloads::default().flags(), 0);
        let all = Offloads {
            csum: true,
            tso4: true,
            tso6: true,
            tso_ecn: true,
        };
        assert_eq!(all.flags(), 0x01 | 0x02 | 0x04 | 0x08);
        // TSO without checksum offload is not a thing.
        let no_csum = Offloads { csum: false, ..all };
        assert_eq!(no_csum.flags(), 0);
    }

    /// Opens a real tap (needs CAP_NET_ADMIN and /dev/net/tun), writes a
    /// frame into the kernel and reads nothing back from an interface
    /// that is down.
    #[test]
    fn opens_a_real_tap() {
        let name = format!("tnt{}", std::process::id() % 100_000);
        let tap = match Tap::open(&name) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("SKIP opens_a_real_tap: {e}");
                return;
            }
        };
        assert_eq!(tap.name(), name);
        tap.set_offloads(Offloads {
            csum: true,
            tso4: true,
            tso6: true,
            tso_ecn: false,
        })
        .unwrap();
        let mut buf = vec![0u8; 2048];
        assert!(tap.read_frame(&mut buf).unwrap().is_none());
        let mut frame = vec![0u8; VNET_HDR_LEN + 60];
        frame[VNET_HDR_LEN..VNET_HDR_LEN + 6].fill(0xff);
        frame[VNET_HDR_LEN + 12] = 0x08;
        frame[VNET_HDR_LEN + 13] = 0x06;
        // Down: the kernel drops it (EIO) or takes it; neither panics.
        let _ = tap.write_frame(&frame);
    }
}
