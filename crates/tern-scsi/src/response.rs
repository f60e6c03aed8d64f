//! What a command returns to the transport.

use crate::sense::{Asc, Sense, SenseKey};

/// SCSI status (SAM-5 5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// GOOD.
    Good = 0x00,
    /// CHECK CONDITION: `sense` says why.
    CheckCondition = 0x02,
    /// RESERVATION CONFLICT.
    ReservationConflict = 0x18,
}

/// A completed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Status.
    pub status: Status,
    /// Sense data (empty unless CHECK CONDITION), in the format the
    /// control mode page's D_SENSE selects.
    pub sense: Vec<u8>,
    /// Data for the initiator, at most the data-in buffer's length.
    pub data_in: Vec<u8>,
    /// Bytes of the data-in buffer left unfilled (an underrun).
    pub residual: u32,
    /// The command needed more buffer than the transport gave (data-in
    /// smaller than a READ, data-out smaller than a WRITE): it failed with
    /// ABORTED COMMAND / DATA PHASE ERROR and did nothing. Transports with
    /// an overrun response (virtio-scsi's VIRTIO_SCSI_S_OVERRUN) use it.
    pub overrun: bool,
}

impl Response {
    /// GOOD with `data`, cut to `data_in_len`.
    pub fn good(mut data: Vec<u8>, data_in_len: usize) -> Response {
        data.truncate(data_in_len);
        Response {
            status: Status::Good,
            sense: Vec::new(),
            residual: (data_in_len - data.len()).min(u32::MAX as usize) as u32,
            data_in: data,
            overrun: false,
        }
    }

    /// CHECK CONDITION with `sense`.
    pub fn check(sense: &Sense, descriptor: bool, data_in_len: usize) -> Response {
        Response {
            status: Status::CheckCondition,
            sense: sense.encode(descriptor),
            data_in: Vec::new(),
            residual: data_in_len.min(u32::MAX as usize) as u32,
            overrun: false,
        }
    }

    /// RESERVATION CONFLICT.
    pub fn conflict(data_in_len: usize) -> Response {
        Response {
            status: Status::ReservationConflict,
            sense: Vec::new(),
            data_in: Vec::new(),
            residual: data_in_len.min(u32::MAX as usize) as u32,
            overrun: false,
        }
    }

    /// The transport's buffers are too small for the command.
    pub fn overrun(descriptor: bool, data_in_len: usize) -> Response {
        Response {
            overrun: true,
            ..Response::check(
                &Sense::new(SenseKey::AbortedCommand, Asc::DATA_PHASE_ERROR),
                descriptor,
                data_in_len,
            )
        }
    }

    /// The sense key and ASC/ASCQ, when the response has sense data.
    pub fn sense_code(&self) -> Option<(u8, Asc)> {
        crate::sense::parse_key_asc(&self.sense)
    }
}

/// Why a command did not complete with GOOD (inside the target).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fail {
    /// CHECK CONDITION.
    Check(Sense),
    /// RESERVATION CONFLICT.
    Conflict,
    /// Buffers too small.
    Overrun,
}

impl From<Sense> for Fail {
    fn from(s: Sense) -> Fail {
        Fail::Check(s)
    }
}

/// Cuts data to an allocation length.
pub(crate) fn alloc(mut data: Vec<u8>, len: u32) -> Vec<u8> {
    data.truncate(len as usize);
    data
}
