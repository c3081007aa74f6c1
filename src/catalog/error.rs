//! What a catalog operation can fail with. Each kind is mapped once per edge: to an HTTP
//! status by the management API (`http::management::error`), to a device refusal by the
//! device API, and to a condition reason by the operator (`operator::conditions`).

use crate::domain::ownership::OwnershipRefusal;
use crate::domain::InvalidInput;
use crate::error::BoxError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A request or spec that cannot work as written.
    #[error("{0}")]
    Invalid(String),
    /// The bytes are not what the caller said they would be.
    #[error("{0}")]
    ChecksumMismatch(String),
    #[error("{0}")]
    NotFound(String),
    /// The name is taken: a bundle's version name, a release's native build, a token's name.
    #[error("{0}")]
    Duplicate(String),
    /// The record is still referred to: a bundle a release uses.
    #[error("{0}")]
    InUse(String),
    /// A concurrent change got in the way; the same call, made again, settles it.
    #[error("{0}")]
    Busy(String),
    /// The record is managed elsewhere (by a Kubernetes resource, or through the REST API
    /// for a resource that has not adopted it).
    #[error("{message}")]
    Owned {
        message: String,
        /// True when the acting resource may take the record over by adopting it.
        adoptable: bool,
    },
    #[error("{0}")]
    TooLarge(String),
    /// Storage cannot be reached now; the same call may work later.
    #[error("{context}")]
    Unavailable {
        context: String,
        #[source]
        source: BoxError,
    },
    /// A failure of ours: storage, the disk, a task.
    #[error("{context}")]
    Internal {
        context: String,
        #[source]
        source: BoxError,
    },
}

impl CatalogError {
    pub fn internal(context: impl Into<String>, source: impl Into<BoxError>) -> CatalogError {
        CatalogError::Internal {
            context: context.into(),
            source: source.into(),
        }
    }

    /// Whether the same call may succeed later without anyone changing the request.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            CatalogError::Busy(_)
                | CatalogError::Unavailable { .. }
                | CatalogError::Internal { .. }
        )
    }

    /// The refusal of a change to a record `record` (e.g. "release android com.x 1.0 (1)").
    pub(crate) fn owned(refusal: OwnershipRefusal, record: &str) -> CatalogError {
        CatalogError::Owned {
            adoptable: matches!(refusal, OwnershipRefusal::NotAdopted(_)),
            message: refusal.message(record),
        }
    }
}

impl From<InvalidInput> for CatalogError {
    fn from(e: InvalidInput) -> CatalogError {
        CatalogError::Invalid(e.0)
    }
}

/// Store failures the caller did not map to a domain refusal (duplicates and references are
/// mapped where they are expected, with a message naming the record).
impl From<StoreError> for CatalogError {
    fn from(e: StoreError) -> CatalogError {
        match e {
            StoreError::Unavailable { .. } => CatalogError::Unavailable {
                context: "storage is unavailable".into(),
                source: e.into(),
            },
            other => CatalogError::internal("storage failed", other),
        }
    }
}
