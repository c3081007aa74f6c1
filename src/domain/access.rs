//! Who may do what through the management API: the scope of a credential, the permission each
//! route needs, API tokens as stored, and the audit trail of changes.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use super::{InvalidInput, RecordId, UnixMillis};

/// What a credential may do. Configured MANAGEMENT_API_TOKENS and OIDC users have `Full`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Full,
    /// Lists and activity; no change of any kind.
    ReadOnly,
    /// Uploads bundles and nothing else: for CI pipelines.
    Upload,
}

/// What a management route needs from the caller's scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Reading the catalog: bundles, releases, activity.
    Read,
    /// Adding a bundle.
    Upload,
    /// Every other change, and reading tokens and the audit log.
    Admin,
    /// Only being who one is (`whoami`): any valid credential.
    Authenticated,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Full, Scope::ReadOnly, Scope::Upload];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Full => "full",
            Scope::ReadOnly => "read-only",
            Scope::Upload => "upload",
        }
    }

    pub fn permits(self, permission: Permission) -> bool {
        matches!(
            (self, permission),
            (Scope::Full, _)
                | (_, Permission::Authenticated)
                | (Scope::ReadOnly, Permission::Read)
                | (Scope::Upload, Permission::Upload)
        )
    }
}

impl FromStr for Scope {
    type Err = InvalidInput;

    fn from_str(value: &str) -> Result<Scope, InvalidInput> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == value)
            .ok_or_else(|| {
                InvalidInput(format!(
                    "unknown scope {value:?}: expected one of full, read-only, upload"
                ))
            })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The prefix of every API key this server makes, so a key in a bearer header is told apart
/// from an OIDC access token.
pub const API_KEY_PREFIX: &str = "capgo_";

/// A named, scoped API token. Only the SHA-256 of its secret is stored: the secret is shown
/// once, when it is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub id: RecordId,
    pub name: String,
    pub scope: Scope,
    /// Lowercase hex SHA-256 of the secret.
    pub digest: String,
    pub created_at: UnixMillis,
    /// Who created it (a principal name).
    pub created_by: String,
}

/// How a secret is stored and looked up.
pub fn secret_digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A token name: 1 to 64 letters, digits, spaces, `.`, `_` or `-`.
pub fn validate_token_name(name: &str) -> Result<(), InvalidInput> {
    let valid = (1..=64).contains(&name.len())
        && name.trim() == name
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '.' | '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(InvalidInput(format!(
            "invalid token name {name:?}: use 1 to 64 letters, digits, spaces, '.', '_' or '-', \
             with no space at either end"
        )))
    }
}

/// One change (or attempted change) made through the management API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: RecordId,
    pub at: UnixMillis,
    /// The principal: `token:<name>`, `oidc:<subject>` or `management-token`.
    pub actor: String,
    /// The route, such as `releases.set-active`.
    pub action: String,
    /// What it acted on, such as `release 65f…` or `bundle com.shop/1.2.0`; empty when the
    /// call failed before naming one.
    pub target: String,
    pub client_ip: String,
    pub status: u16,
    /// The error shown to the caller, empty on success.
    pub message: String,
}

impl AuditEntry {
    pub fn succeeded(&self) -> bool {
        self.status < 400
    }
}

/// Where the next page of the audit log starts: entries strictly older than this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCursor {
    pub at: UnixMillis,
    pub id: RecordId,
}

impl AuditCursor {
    pub fn after(entry: &AuditEntry) -> AuditCursor {
        AuditCursor {
            at: entry.at,
            id: entry.id.clone(),
        }
    }

    /// `<millis>-<id>`, opaque to clients.
    pub fn encode(&self) -> String {
        format!("{}-{}", self.at, self.id)
    }

    pub fn decode(value: &str) -> Result<AuditCursor, InvalidInput> {
        let invalid = || {
            InvalidInput(format!(
                "invalid cursor {value:?}: pass `next` from the previous page"
            ))
        };
        let (at, id) = value.split_once('-').ok_or_else(invalid)?;
        Ok(AuditCursor {
            at: at.parse().map_err(|_| invalid())?,
            id: RecordId::parse(id, "cursor").map_err(|_| invalid())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_permit_only_their_routes() {
        use Permission::*;
        assert!(
            Scope::Full.permits(Read) && Scope::Full.permits(Upload) && Scope::Full.permits(Admin)
        );
        assert!(Scope::ReadOnly.permits(Read));
        assert!(!Scope::ReadOnly.permits(Upload) && !Scope::ReadOnly.permits(Admin));
        assert!(Scope::Upload.permits(Upload));
        assert!(!Scope::Upload.permits(Read) && !Scope::Upload.permits(Admin));
        for scope in Scope::ALL {
            assert!(scope.permits(Authenticated), "{scope}");
        }
    }

    #[test]
    fn scope_names_round_trip() {
        for scope in Scope::ALL {
            assert_eq!(scope.as_str().parse::<Scope>().unwrap(), scope);
        }
        assert!("admin"
            .parse::<Scope>()
            .unwrap_err()
            .0
            .contains("read-only"));
    }

    #[test]
    fn token_names_are_checked() {
        assert!(validate_token_name("ci upload-1.2_x").is_ok());
        for bad in ["", " lead", "trail ", "semi;colon", &"x".repeat(65)] {
            assert!(validate_token_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let cursor = AuditCursor {
            at: 1_700_000_000_000,
            id: RecordId::generate(),
        };
        assert_eq!(AuditCursor::decode(&cursor.encode()).unwrap(), cursor);
        for bad in ["", "12", "x-0123456789abcdef01234567", "12-nothex"] {
            assert!(AuditCursor::decode(bad).is_err(), "{bad:?}");
        }
    }
}
