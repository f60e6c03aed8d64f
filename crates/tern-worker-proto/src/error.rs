//! A request the worker refused: a code to match on and a message for
//! people.

use serde::{Deserialize, Serialize};

/// What kind of refusal; callers decide by this, never by the message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// The request is malformed or a value in it is invalid.
    BadRequest,
    /// What the request names (a disk, a checkpoint) does not exist.
    NotFound,
    /// Something of the same kind is in progress (a migration).
    Busy,
    /// The VM's state does not allow it now (paused, stopping, no
    /// migration running).
    Conflict,
    /// This worker was not started with what the request needs (no
    /// checkpoint store) or cannot do it at all.
    Unsupported,
    /// The guest did not take what was given in time (console input).
    Timeout,
    /// The request was valid but failed; the message says why.
    #[default]
    Failed,
    /// A code this client does not know (from a newer worker).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad-request",
            ErrorCode::NotFound => "not-found",
            ErrorCode::Busy => "busy",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Failed => "failed",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The worker refused or failed a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct WorkerError {
    /// What kind of refusal (absent on the wire from workers older than
    /// the typed protocol: [`ErrorCode::Failed`]).
    #[serde(default)]
    pub code: ErrorCode,
    /// What went wrong, for people (the wire field is `error`).
    #[serde(rename = "error")]
    pub message: String,
}

impl WorkerError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WorkerError {
            code,
            message: message.into(),
        }
    }

    /// [`ErrorCode::BadRequest`].
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// [`ErrorCode::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// [`ErrorCode::Busy`].
    pub fn busy(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Busy, message)
    }

    /// [`ErrorCode::Conflict`].
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }

    /// [`ErrorCode::Unsupported`].
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unsupported, message)
    }

    /// [`ErrorCode::Failed`].
    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Failed, message)
    }
}
