//! Bringing a virtio-mmio device up (virtio 1.2 §3.1.1): the steps every
//! driver of the probe shares. A driver calls [`begin`], [`negotiate`],
//! [`queue`] for each of its queues and [`driver_ok`]; on any error it
//! calls [`fail`] so the device knows the driver gave up.

use crate::virtio::{reg, status, Mmio, QueueMem, SplitQueue, Timeout, MAGIC, VIRTIO_F_VERSION_1};
use core::fmt;

/// Longest wait for a reset.
const RESET_TIMEOUT_MS: u64 = 10_000;

/// Why a device could not be brought up; shown as `reason=WORD` plus
/// details.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetupError {
    /// MagicValue, Version or DeviceID are not those of a modern
    /// virtio-mmio device of the kind the driver drives.
    WrongDevice {
        want: u32,
        magic: u32,
        version: u32,
        id: u32,
    },
    /// The device does not offer VIRTIO_F_VERSION_1, or cleared
    /// FEATURES_OK for what the driver asked.
    FeaturesRefused { offered: u64, wanted: u64 },
    /// A queue is missing, too small, or still enabled after a reset.
    QueueUnavailable { queue: u32, max: u32 },
    /// The device set DEVICE_NEEDS_RESET or refused DRIVER_OK.
    NeedsReset { status: u32 },
    /// The device did not finish a reset in time.
    Timeout,
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SetupError::WrongDevice {
                want,
                magic,
                version,
                id,
            } => write!(
                f,
                "reason=wrong-device want_id={want} magic={magic:#x} version={version} device_id={id}"
            ),
            SetupError::FeaturesRefused { offered, wanted } => write!(
                f,
                "reason=features-refused offered={offered:#x} wanted={wanted:#x}"
            ),
            SetupError::QueueUnavailable { queue, max } => {
                write!(f, "reason=queue-unavailable queue={queue} max={max}")
            }
            SetupError::NeedsReset { status } => {
                write!(f, "reason=needs-reset device_status={status:#x}")
            }
            SetupError::Timeout => write!(f, "reason=timeout waiting_for=reset"),
        }
    }
}

/// Checks that `mmio` is a modern device with `device_id`, resets it and
/// sets ACKNOWLEDGE and DRIVER.
pub fn begin(mmio: Mmio, device_id: u32, ticks_per_sec: u64) -> Result<(), SetupError> {
    let (magic, version, id) = (
        mmio.read(reg::MAGIC_VALUE),
        mmio.read(reg::VERSION),
        mmio.read(reg::DEVICE_ID),
    );
    if magic != MAGIC || version != 2 || id != device_id {
        return Err(SetupError::WrongDevice {
            want: device_id,
            magic,
            version,
            id,
        });
    }
    reset(mmio, ticks_per_sec)?;
    mmio.write(reg::STATUS, status::ACKNOWLEDGE);
    mmio.write(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    Ok(())
}

/// Writes 0 to Status and waits until it reads back 0, as a driver must
/// before it sets the device up again (or leaves it).
pub fn reset(mmio: Mmio, ticks_per_sec: u64) -> Result<(), SetupError> {
    mmio.write(reg::STATUS, 0);
    let t = Timeout::ms(ticks_per_sec, RESET_TIMEOUT_MS);
    if crate::virtio::spin_until(t, || mmio.read(reg::STATUS) == 0) {
        Ok(())
    } else {
        Err(SetupError::Timeout)
    }
}

/// Accepts VIRTIO_F_VERSION_1 (required) and whichever of `usable` the
/// device offers, and sets FEATURES_OK. Returns the accepted features.
pub fn negotiate(mmio: Mmio, usable: u64) -> Result<u64, SetupError> {
    let offered = mmio.device_features();
    let wanted = 1 << VIRTIO_F_VERSION_1 | offered & usable;
    if offered & 1 << VIRTIO_F_VERSION_1 == 0 {
        return Err(SetupError::FeaturesRefused { offered, wanted });
    }
    mmio.set_driver_features(wanted);
    mmio.write(reg::STATUS, features_ok());
    if mmio.read(reg::STATUS) & status::FEATURES_OK == 0 {
        return Err(SetupError::FeaturesRefused { offered, wanted });
    }
    Ok(wanted)
}

fn features_ok() -> u32 {
    status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK
}

/// The entries a queue gets: the largest power of two up to both the
/// device's maximum and `limit`, if that is at least `min`.
fn queue_size(max: u32, limit: u32, min: u32) -> Option<u32> {
    let l = max.min(limit);
    (l >= min.max(1)).then(|| 1u32 << (31 - l.leading_zeros()))
}

/// Sets queue `index` up at `mem` with as many entries as [`queue_size`]
/// allows, and enables it. Returns the queue and its size.
///
/// # Safety
/// `mem`'s three areas must be free memory of this driver, sized for the
/// largest size allowed, that nothing else uses while the queue lives; the
/// device must have been reset since it last had a queue there.
pub unsafe fn queue(
    mmio: Mmio,
    index: u32,
    mem: QueueMem,
    limit: u32,
    min: u32,
) -> Result<(SplitQueue, u16), SetupError> {
    mmio.write(reg::QUEUE_SEL, index);
    let max = mmio.read(reg::QUEUE_NUM_MAX);
    let busy = mmio.read(reg::QUEUE_READY) != 0;
    let Some(size) = queue_size(max, limit, min).filter(|_| !busy) else {
        return Err(SetupError::QueueUnavailable { queue: index, max });
    };
    // SAFETY: the caller vouches for the areas (this function's contract).
    let q = unsafe { SplitQueue::new(mem, size as u16) };
    mmio.write(reg::QUEUE_NUM, size);
    mmio.write64(reg::QUEUE_DESC_LOW, mem.desc);
    mmio.write64(reg::QUEUE_DRIVER_LOW, mem.avail);
    mmio.write64(reg::QUEUE_DEVICE_LOW, mem.used);
    mmio.write(reg::QUEUE_READY, 1);
    if mmio.read(reg::QUEUE_READY) != 1 {
        return Err(SetupError::QueueUnavailable { queue: index, max });
    }
    Ok((q, size as u16))
}

/// Sets DRIVER_OK and checks the device took it.
pub fn driver_ok(mmio: Mmio) -> Result<(), SetupError> {
    mmio.write(reg::STATUS, features_ok() | status::DRIVER_OK);
    let now = mmio.read(reg::STATUS);
    if now & status::DEVICE_NEEDS_RESET != 0 || now & status::DRIVER_OK == 0 {
        return Err(SetupError::NeedsReset { status: now });
    }
    Ok(())
}

/// Tells the device the driver gave up (§3.1.1, step 8).
pub fn fail(mmio: Mmio) {
    let s = mmio.read(reg::STATUS);
    mmio.write(reg::STATUS, s | status::FAILED);
}
