//! The Kubernetes operator: `Bundle` and `Release` resources reconciled into the same catalog
//! the REST API uses. It runs inside the server process, on the lease holder only.

pub mod bundles;
pub mod conditions;
pub mod crd;
pub mod fetch;
pub mod leader;
pub mod releases;

use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Resource, ResourceExt};

use crate::catalog::{Catalog, CatalogError};
use crate::domain::ownership::ADOPT_ANNOTATION;
use crate::domain::Actor;
use crate::error::Chain;
use conditions::Outcome;

/// The field manager of every status write, and the events' reporting controller.
pub const MANAGER: &str = "capgo-server";
/// Finalizer on both kinds: records are removed before the resource goes.
pub const FINALIZER: &str = "capgo-server.io/cleanup";
/// When to look again at a resource whose spec cannot be satisfied as written.
pub const STALLED_RETRY: Duration = Duration::from_secs(300);
/// When to look again at a resource waiting on another one (a Bundle being fetched).
pub const WAITING_RETRY: Duration = Duration::from_secs(10);

/// Why a reconcile must be retried. A spec a person must change is not an error: it becomes
/// a `Stalled` condition (see [`Failure`]).
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("Kubernetes API request failed")]
    Kube(#[from] kube::Error),
    #[error("the catalog failed")]
    Catalog(#[from] CatalogError),
    #[error("fetching {url} failed")]
    Fetch {
        url: String,
        #[source]
        source: crate::error::BoxError,
    },
    #[error("a deletion waits: {0}")]
    DeletionHeld(String),
    #[error("finalizer step failed")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<OperatorError>>),
}

/// How a reconcile step failed: the spec must change (a `Stalled` outcome with its reason),
/// or the world must (retried).
#[derive(Debug)]
pub enum Failure {
    Stalled(Outcome),
    Retry(OperatorError),
}

impl From<CatalogError> for Failure {
    /// The one place catalog refusals are sorted into stalls and retries.
    fn from(error: CatalogError) -> Failure {
        match conditions::stall_reason(&error) {
            Some(reason) => Failure::Stalled(Outcome::Stalled {
                reason: reason.into(),
                message: error.to_string(),
            }),
            None => Failure::Retry(error.into()),
        }
    }
}

impl From<kube::Error> for Failure {
    fn from(error: kube::Error) -> Failure {
        Failure::Retry(error.into())
    }
}

/// What the reconcilers share.
pub struct Context {
    pub client: kube::Client,
    pub catalog: Arc<Catalog>,
    /// Fetches `Bundle` sources under BUNDLE_SOURCE_* rules.
    pub sources: fetch::SourceFetcher,
    pub recorder: Recorder,
}

impl Context {
    pub fn new(
        client: kube::Client,
        catalog: Arc<Catalog>,
        identity: &str,
        sources: fetch::SourceFetcher,
    ) -> Context {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: Some(identity.into()),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            catalog,
            sources,
        }
    }

    /// Publishes an Event on `object` for what a person must see; failing to publish is only
    /// logged (the condition carries the same message).
    pub async fn publish<K>(&self, object: &K, type_: EventType, reason: &str, note: &str)
    where
        K: Resource<DynamicType = ()>,
    {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(error = %e, object = object.meta().name.as_deref().unwrap_or_default(), "cannot publish an event");
        }
    }
}

/// Writes `status` (server-side apply, one field manager) unless the resource already has it,
/// publishes a Warning Event when the outcome is a stall, and says when to look again. One
/// rule for both kinds, so an unchanged resource never causes a write.
pub async fn apply_status<K, S>(
    ctx: &Context,
    api: &Api<K>,
    object: &K,
    current: Option<&S>,
    status: S,
    outcome: &conditions::Outcome,
) -> Result<kube::runtime::controller::Action, OperatorError>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: serde::Serialize + PartialEq,
{
    use conditions::Outcome;
    use kube::runtime::controller::Action;
    if current != Some(&status) {
        let patch = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": status,
        });
        let params = kube::api::PatchParams::apply(MANAGER).force();
        api.patch_status(&object.name_any(), &params, &kube::api::Patch::Apply(patch))
            .await?;
        if let Outcome::Stalled { reason, message } = outcome {
            ctx.publish(object, EventType::Warning, reason, message)
                .await;
        }
    }
    Ok(match outcome {
        Outcome::Ready { .. } => Action::await_change(),
        Outcome::Progressing { .. } => Action::requeue(WAITING_RETRY),
        Outcome::Stalled { .. } => Action::requeue(STALLED_RETRY),
    })
}

/// Who acts for `object` on the records it owns: the resource, adopting records made through
/// the API when it carries the adopt annotation.
pub fn actor_of<K: ResourceExt>(object: &K, owner: crate::domain::ResourceRef) -> Actor {
    let adopts = object
        .annotations()
        .get(ADOPT_ANNOTATION)
        .is_some_and(|value| value == "true");
    if adopts {
        Actor::AdoptingResource(owner)
    } else {
        Actor::Resource(owner)
    }
}

/// `ns/name` of a resource, for logs.
pub fn display_name<K: ResourceExt>(object: &K) -> String {
    format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

/// Now as RFC 3339, for condition transition times.
pub fn now_rfc3339() -> String {
    crate::domain::rfc3339(crate::domain::now_millis())
}

/// What the operator needs from the configuration.
#[derive(Debug, Clone)]
pub struct OperatorSettings {
    /// Namespaces to watch; empty means every namespace.
    pub namespaces: Vec<String>,
    pub lease_namespace: String,
    pub lease_name: String,
    /// This replica's name in the lease (the pod name in Kubernetes).
    pub identity: String,
}

/// Runs the operator until `shutdown`: connects to the cluster, checks the CRDs are installed,
/// then reconciles while holding the lease. Problems that need a person (no cluster, no CRDs)
/// are logged clearly and leave the HTTP servers running.
pub async fn run(
    settings: OperatorSettings,
    ctx: Context,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let ctx = Arc::new(ctx);
    let probe_namespace = settings
        .namespaces
        .first()
        .cloned()
        .unwrap_or_else(|| settings.lease_namespace.clone());
    let probe: Api<crd::Bundle> = Api::namespaced(ctx.client.clone(), &probe_namespace);
    match probe.list(&kube::api::ListParams::default().limit(1)).await {
        Err(kube::Error::Api(status)) if status.code == 404 => {
            tracing::error!(
                "the Bundle and Release CRDs are not installed (kubectl apply -f crds/capgo-server.yaml); the operator is off"
            );
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot list Bundles; check the service account's RBAC; the operator is off");
            return;
        }
        Ok(_) => {}
    }
    let lease =
        kube_lease_manager::LeaseManagerBuilder::new(ctx.client.clone(), &settings.lease_name)
            .with_namespace(&settings.lease_namespace)
            .with_identity(&settings.identity)
            .with_duration(15)
            .with_grace(5)
            .build()
            .await;
    let lease = match lease {
        Ok(lease) => lease,
        Err(e) => {
            tracing::error!(error = %e, "cannot set up the controller lease; the operator is off");
            return;
        }
    };
    let (leading, lease_task) = lease.watch().await;
    leader::while_leading(leading, shutdown, |stop| {
        run_controllers(settings.namespaces.clone(), ctx.clone(), stop)
    })
    .await;
    lease_task.abort();
}

async fn run_controllers(
    namespaces: Vec<String>,
    ctx: Arc<Context>,
    stop: tokio_util::sync::CancellationToken,
) {
    use kube::runtime::{watcher, Controller};
    let apis = |namespace: Option<&String>| -> (Api<crd::Bundle>, Api<crd::Release>) {
        match namespace {
            Some(ns) => (
                Api::namespaced(ctx.client.clone(), ns),
                Api::namespaced(ctx.client.clone(), ns),
            ),
            None => (Api::all(ctx.client.clone()), Api::all(ctx.client.clone())),
        }
    };
    let scopes: Vec<Option<&String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().map(Some).collect()
    };
    let mut controllers = Vec::new();
    for scope in scopes {
        let (bundles, releases) = apis(scope);
        let stop_bundles = stop.clone();
        controllers.push(
            Controller::new(bundles, watcher::Config::default())
                .graceful_shutdown_on(async move { stop_bundles.cancelled().await })
                .run(bundles::reconcile, error_policy, ctx.clone())
                .for_each(|result| async move { log_result(result) })
                .boxed(),
        );
        let stop_releases = stop.clone();
        controllers.push(
            Controller::new(releases, watcher::Config::default())
                .graceful_shutdown_on(async move { stop_releases.cancelled().await })
                .run(releases::reconcile, error_policy, ctx.clone())
                .for_each(|result| async move { log_result(result) })
                .boxed(),
        );
    }
    futures_util::future::join_all(controllers).await;
}

fn log_result<R: std::fmt::Debug, E: std::error::Error + 'static>(result: Result<R, E>) {
    if let Err(e) = result {
        tracing::debug!(error = %Chain(&e), "reconcile ended with an error (retried)");
    }
}

/// Errors are retried: soon when something may come back (the API server, storage, a
/// source), more slowly for a deletion that waits on a person.
fn error_policy<K: ResourceExt>(
    object: Arc<K>,
    error: &OperatorError,
    _ctx: Arc<Context>,
) -> kube::runtime::controller::Action {
    let held = match error {
        OperatorError::Finalizer(inner) => matches!(
            inner.as_ref(),
            kube::runtime::finalizer::Error::CleanupFailed(OperatorError::DeletionHeld(_))
        ),
        other => matches!(other, OperatorError::DeletionHeld(_)),
    };
    let resource = display_name(object.as_ref());
    if held {
        tracing::info!(resource, error = %Chain(error), "deletion held; looking again later");
        return kube::runtime::controller::Action::requeue(WAITING_RETRY * 3);
    }
    tracing::warn!(resource, error = %Chain(error), "reconcile failed; retrying");
    kube::runtime::controller::Action::requeue(WAITING_RETRY)
}

/// Runs the finalizer around `apply` and `cleanup`, keeping its errors typed.
pub async fn with_finalizer<K, Apply, Cleanup>(
    api: &Api<K>,
    object: Arc<K>,
    apply: impl FnOnce(Arc<K>) -> Apply,
    cleanup: impl FnOnce(Arc<K>) -> Cleanup,
) -> Result<kube::runtime::controller::Action, OperatorError>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    Apply: std::future::Future<Output = Result<kube::runtime::controller::Action, OperatorError>>,
    Cleanup: std::future::Future<Output = Result<kube::runtime::controller::Action, OperatorError>>,
{
    use kube::runtime::finalizer::{finalizer, Event as Finalize};
    finalizer(api, FINALIZER, object, |event| async move {
        match event {
            Finalize::Apply(object) => apply(object).await,
            Finalize::Cleanup(object) => cleanup(object).await,
        }
    })
    .await
    .map_err(|e| OperatorError::Finalizer(Box::new(e)))
}
