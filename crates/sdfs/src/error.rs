//! What can go wrong with a file operation, as the layers that call SDFS
//! in process see it. The gRPC service turns each kind into its status
//! code, and statuses from other nodes come back as the same kinds.

use tonic::{Code, Status};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SdfsError {
    /// No such file, or no such version of it.
    #[error("{0}")]
    NotFound(String),
    /// The request itself is wrong (a bad name, a size that does not add
    /// up): trying again changes nothing.
    #[error("{0}")]
    Invalid(String),
    /// Not now: too few replicas, no coordinator leader, a node that
    /// cannot be reached. Worth trying again.
    #[error("{0}")]
    Unavailable(String),
    /// Bytes that are not what was stored (a corrupt replica).
    #[error("{0}")]
    DataLoss(String),
    /// The caller's stream stopped or went quiet.
    #[error("{0}")]
    Interrupted(String),
    #[error("{0}")]
    Internal(String),
}

impl From<SdfsError> for Status {
    fn from(e: SdfsError) -> Status {
        match e {
            SdfsError::NotFound(m) => Status::not_found(m),
            SdfsError::Invalid(m) => Status::invalid_argument(m),
            SdfsError::Unavailable(m) => Status::unavailable(m),
            SdfsError::DataLoss(m) => Status::data_loss(m),
            SdfsError::Interrupted(m) => Status::cancelled(m),
            SdfsError::Internal(m) => Status::internal(m),
        }
    }
}

impl From<Status> for SdfsError {
    fn from(s: Status) -> SdfsError {
        let m = s.message().to_string();
        match s.code() {
            Code::NotFound => SdfsError::NotFound(m),
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => SdfsError::Invalid(m),
            Code::DataLoss => SdfsError::DataLoss(m),
            Code::Cancelled | Code::DeadlineExceeded => SdfsError::Interrupted(m),
            Code::Internal | Code::Unknown | Code::Unimplemented => SdfsError::Internal(m),
            _ => SdfsError::Unavailable(m),
        }
    }
}

impl From<crate::BlobError> for SdfsError {
    fn from(e: crate::BlobError) -> SdfsError {
        use crate::BlobError;
        match e {
            BlobError::Missing(_) => SdfsError::NotFound(e.to_string()),
            BlobError::Corrupt { .. } | BlobError::Mismatch { .. } => SdfsError::DataLoss(e.to_string()),
            BlobError::Io { .. } => SdfsError::Internal(e.to_string()),
        }
    }
}

impl From<idunno_coordinator::CoordError> for SdfsError {
    fn from(e: idunno_coordinator::CoordError) -> SdfsError {
        match e {
            idunno_coordinator::CoordError::BadCommand(m) => SdfsError::Invalid(m),
            e => SdfsError::Unavailable(e.to_string()),
        }
    }
}

/// A name SDFS takes: 1 to 1024 characters, none of them control
/// characters.
pub fn check_name(name: &str) -> Result<(), SdfsError> {
    if name.is_empty() || name.len() > 1024 || name.chars().any(|c| c.is_control()) {
        return Err(SdfsError::Invalid(format!("bad file name {name:?}: 1 to 1024 characters, no control characters")));
    }
    Ok(())
}
