//! Who is calling the management API and what they may do: configured keys, scoped API tokens
//! (stored as digests), OIDC bearer tokens; plus the audit log of changes.

pub mod keys;
pub mod oidc;

use std::sync::Arc;

use crate::catalog::CatalogError;
use crate::config::Config;
use crate::domain::access::{
    secret_digest, validate_token_name, ApiToken, AuditCursor, AuditEntry, Scope, API_KEY_PREFIX,
};
use crate::domain::{now_millis, RecordId};
use crate::error::Chain;
use crate::store::{AccessStore, StoreError};
use keys::{generate_secret, ApiKeys};
use oidc::{OidcError, OidcVerifier};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// How the audit log names them: `management-token`, `token:<name>`, or
    /// `oidc:<subject>` followed by ` <email>` when the token carries one.
    pub name: String,
    pub scope: Scope,
}

/// What the caller presented.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    /// The `x-api-key` header.
    ApiKey(&'a str),
    /// `Authorization: Bearer …`: an API key or an OIDC access token.
    Bearer(&'a str),
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Rejected(String),
    #[error("{0}")]
    Unavailable(String),
}

pub struct Access {
    store: Arc<dyn AccessStore>,
    configured: ApiKeys,
    oidc: Option<OidcVerifier>,
}

/// At most this many audit entries per page.
pub const MAX_AUDIT_PAGE: usize = 500;

impl Access {
    /// With OIDC when OAUTH_ISSUER is set.
    pub fn from_config(
        config: &Config,
        store: Arc<dyn AccessStore>,
        configured: ApiKeys,
    ) -> Access {
        let oidc = config
            .oauth_issuer
            .as_deref()
            .map(|issuer| OidcVerifier::new(issuer, config.oauth_audience.as_deref()));
        Access {
            store,
            configured,
            oidc,
        }
    }

    pub fn oidc(&self) -> Option<&OidcVerifier> {
        self.oidc.as_ref()
    }

    pub async fn authenticate(&self, credential: Credential<'_>) -> Result<Principal, AuthError> {
        let key = match credential {
            Credential::ApiKey(key) => key,
            Credential::Bearer(token)
                if token.starts_with(API_KEY_PREFIX) || self.configured.accepts(token) =>
            {
                token
            }
            Credential::Bearer(token) => return self.authenticate_oidc(token).await,
        };
        if self.configured.accepts(key) {
            return Ok(Principal {
                name: "management-token".into(),
                scope: Scope::Full,
            });
        }
        match self.store.api_token_by_digest(&secret_digest(key)).await {
            Ok(Some(token)) => Ok(Principal {
                name: format!("token:{}", token.name),
                scope: token.scope,
            }),
            Ok(None) => Err(AuthError::Rejected("unknown or revoked API key".into())),
            Err(e) => Err(AuthError::Unavailable(Chain(&e).to_string())),
        }
    }

    async fn authenticate_oidc(&self, token: &str) -> Result<Principal, AuthError> {
        let verifier = self.oidc.as_ref().ok_or_else(|| {
            AuthError::Rejected(
                "bearer tokens other than API keys need OIDC (OAUTH_ISSUER), which is not \
                 configured"
                    .into(),
            )
        })?;
        match verifier.verify(token).await {
            Ok(identity) => Ok(Principal {
                name: match identity.email {
                    Some(email) => format!("oidc:{} <{email}>", identity.subject),
                    None => format!("oidc:{}", identity.subject),
                },
                scope: Scope::Full,
            }),
            Err(OidcError::Rejected(reason)) => Err(AuthError::Rejected(reason)),
            Err(OidcError::Unavailable(reason)) => Err(AuthError::Unavailable(reason)),
        }
    }

    /// A new token; its secret is returned here and never again.
    pub async fn create_token(
        &self,
        name: &str,
        scope: Scope,
        by: &Principal,
    ) -> Result<(ApiToken, String), CatalogError> {
        validate_token_name(name)?;
        let secret = generate_secret("tok_")
            .map_err(|e| CatalogError::internal("cannot generate a token", e))?;
        let token = ApiToken {
            id: RecordId::generate(),
            name: name.to_string(),
            scope,
            digest: secret_digest(&secret),
            created_at: now_millis(),
            created_by: by.name.clone(),
        };
        self.store
            .insert_api_token(&token)
            .await
            .map_err(|e| match e {
                StoreError::Duplicate(_) => {
                    CatalogError::Duplicate(format!("a token named {name:?} already exists"))
                }
                other => other.into(),
            })?;
        Ok((token, secret))
    }

    pub async fn list_tokens(&self) -> Result<Vec<ApiToken>, CatalogError> {
        Ok(self.store.list_api_tokens().await?)
    }

    /// Revokes at once: the next request with the token is refused. Returns its name.
    pub async fn revoke_token(&self, id: &str) -> Result<String, CatalogError> {
        let id = RecordId::parse(id, "token id")?;
        let not_found = || CatalogError::NotFound(format!("no token with id {id}"));
        let tokens = self.store.list_api_tokens().await?;
        let token = tokens.iter().find(|t| t.id == id).ok_or_else(not_found)?;
        if self.store.delete_api_token(&id).await? {
            Ok(token.name.clone())
        } else {
            Err(not_found())
        }
    }

    /// Stores an audit entry. A failure is logged, not returned: the change it describes has
    /// already happened.
    pub async fn record(&self, entry: AuditEntry) {
        if let Err(e) = self.store.insert_audit(&entry).await {
            tracing::error!(
                error = %Chain(&e), actor = %entry.actor, action = %entry.action, target = %entry.target,
                status = entry.status, "could not store an audit entry"
            );
        }
    }

    /// One page of the audit log, newest first, and the cursor of the next page if any.
    pub async fn audit_page(
        &self,
        before: Option<&AuditCursor>,
        limit: usize,
    ) -> Result<(Vec<AuditEntry>, Option<AuditCursor>), CatalogError> {
        if !(1..=MAX_AUDIT_PAGE).contains(&limit) {
            return Err(CatalogError::Invalid(format!(
                "limit must be between 1 and {MAX_AUDIT_PAGE}"
            )));
        }
        let mut entries = self.store.audit_page(before, limit + 1).await?;
        let next = if entries.len() > limit {
            entries.truncate(limit);
            entries.last().map(AuditCursor::after)
        } else {
            None
        };
        Ok((entries, next))
    }
}
