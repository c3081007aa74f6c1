//! The Kubernetes operator: `Bundle`, `Release` and `Channel` resources reconciled into the
//! same catalog the REST API uses. It runs inside the server process, on the lease holder only.

pub mod bundles;
pub mod channels;
pub mod conditions;
pub mod crd;
pub mod fetch;
pub mod leader;
pub mod releases;
pub mod rollouts;

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
use crd::Condition;

/// The field manager of every status write, and the events' reporting controller.
pub const MANAGER: &str = "capgo-server";
/// Finalizer on every kind: records are removed before the resource goes.
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

impl OperatorError {
    /// The API server's words when this is an RBAC denial (HTTP 403), wherever it happened.
    pub fn denied(&self) -> Option<String> {
        use kube::runtime::finalizer::Error as Finalize;
        let forbidden = |error: &kube::Error| match error {
            kube::Error::Api(status) if status.code == 403 => Some(status.message.clone()),
            _ => None,
        };
        match self {
            OperatorError::Kube(error) => forbidden(error),
            OperatorError::Finalizer(inner) => match inner.as_ref() {
                Finalize::AddFinalizer(error) | Finalize::RemoveFinalizer(error) => {
                    forbidden(error)
                }
                Finalize::ApplyFailed(error) | Finalize::CleanupFailed(error) => error.denied(),
                _ => None,
            },
            _ => None,
        }
    }
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
        self.publish_action(object, type_, reason, "Reconcile", note)
            .await
    }

    /// [`Context::publish`] for an `action` other than reconciling (a rollout moving).
    pub async fn publish_action<K>(
        &self,
        object: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) where
        K: Resource<DynamicType = ()>,
    {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(error = %e, object = object.meta().name.as_deref().unwrap_or_default(), "cannot publish an event");
        }
    }
}

/// Writes `status` (server-side apply, one field manager) unless the resource already has it,
/// publishes a Warning Event when the outcome is a new stall, and says when to look again. One
/// rule for every kind, so an unchanged resource never causes a write.
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
    S: conditions::WithConditions + serde::Serialize + PartialEq,
{
    if write_status(api, object, current, &status).await? {
        let previous = current.map(|c| c.conditions()).unwrap_or_default();
        announce_stall(ctx, object, previous, outcome).await;
    }
    Ok(next_look(outcome))
}

/// Writes `status` with server-side apply under [`MANAGER`], unless the resource already has
/// it; says whether it wrote.
pub async fn write_status<K, S>(
    api: &Api<K>,
    object: &K,
    current: Option<&S>,
    status: &S,
) -> Result<bool, OperatorError>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: serde::Serialize + PartialEq,
{
    if current == Some(status) {
        return Ok(false);
    }
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    let params = kube::api::PatchParams::apply(MANAGER).force();
    api.patch_status(&object.name_any(), &params, &kube::api::Patch::Apply(patch))
        .await?;
    Ok(true)
}

/// Publishes a Warning Event for a stall the `previous` conditions did not show yet (a
/// resource that stays stalled is not announced again at every status write).
pub async fn announce_stall<K>(ctx: &Context, object: &K, previous: &[Condition], outcome: &Outcome)
where
    K: Resource<DynamicType = ()>,
{
    if let Some((reason, message)) = conditions::new_stall(previous, outcome) {
        ctx.publish(object, EventType::Warning, reason, message)
            .await;
    }
}

/// When to look again at a resource after `outcome`.
pub fn next_look(outcome: &Outcome) -> kube::runtime::controller::Action {
    use kube::runtime::controller::Action;
    match outcome {
        Outcome::Ready { .. } => Action::await_change(),
        Outcome::Progressing { .. } => Action::requeue(WAITING_RETRY),
        Outcome::Stalled { .. } => Action::requeue(STALLED_RETRY),
    }
}

/// After the API server refused the operator a request (RBAC), says so on the resource: a
/// `Stalled` condition with reason `PermissionDenied` and a Warning Event, as far as the
/// operator may still write those (the log always has it, from [`error_policy`]).
pub async fn report_denial<K, S>(
    ctx: &Context,
    api: &Api<K>,
    object: &K,
    current: Option<&S>,
    denied: &str,
) where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: conditions::WithConditions + serde::Serialize + PartialEq,
{
    let outcome = Outcome::Stalled {
        reason: "PermissionDenied".into(),
        message: format!(
            "the operator was denied a request; grant it in the operator's Role: {denied}"
        ),
    };
    let mut status = current.cloned().unwrap_or_default();
    let generation = object.meta().generation.unwrap_or_default();
    status.set_conditions(conditions::conditions_for(
        &outcome,
        generation,
        status.conditions(),
        &now_rfc3339(),
    ));
    if let Err(e) = apply_status(ctx, api, object, current, status, &outcome).await {
        tracing::debug!(error = %Chain(&e), "cannot write the denial to the status either");
    }
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

/// The longest wait between two start-up checks of the cluster.
pub const STARTUP_RETRY_MAX: Duration = Duration::from_secs(20);

/// Runs the operator until `shutdown`: waits until the cluster answers and serves the CRDs,
/// then reconciles while holding the lease. Start-up problems (API server not reachable yet,
/// CRDs applied after the server started, a Role not bound yet) are retried with backoff and
/// logged; the HTTP servers run meanwhile.
pub async fn run(
    settings: OperatorSettings,
    ctx: Context,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let ctx = Arc::new(ctx);
    let mut backoff = Backoff::new(STARTUP_RETRY_MAX);
    let lease = loop {
        let ready = match check_cluster(&settings, &ctx.client).await {
            Ok(()) => build_lease(&settings, &ctx.client).await,
            Err(problem) => Err(problem),
        };
        match ready {
            Ok(lease) => break lease,
            Err(problem) => {
                tracing::warn!(
                    retry_in_seconds = backoff.next.as_secs(),
                    "the operator cannot start yet: {problem}"
                );
                if !backoff.wait(&shutdown).await {
                    return;
                }
            }
        }
    };
    if backoff.retried {
        tracing::info!("the cluster answers and serves the CRDs: the operator starts");
    }
    let (leading, lease_task) = lease.watch().await;
    leader::while_leading(leading, shutdown, |stop| {
        run_controllers(settings.namespaces.clone(), ctx.clone(), stop)
    })
    .await;
    lease_task.abort();
}

/// Exponential backoff from one second up to a ceiling, cut short by shutdown.
struct Backoff {
    next: Duration,
    max: Duration,
    retried: bool,
}

impl Backoff {
    fn new(max: Duration) -> Backoff {
        Backoff {
            next: Duration::from_secs(1),
            max,
            retried: false,
        }
    }

    /// Sleeps the current delay and doubles it; `false` when shutdown came first.
    async fn wait(&mut self, shutdown: &tokio_util::sync::CancellationToken) -> bool {
        self.retried = true;
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = shutdown.cancelled() => false,
        }
    }
}

/// Lists Bundles in every watched namespace (or cluster-wide), saying in words what is wrong
/// when that fails.
async fn check_cluster(settings: &OperatorSettings, client: &kube::Client) -> Result<(), String> {
    check_listable::<crd::Bundle>(
        &settings.namespaces,
        client,
        "the Bundle and Release CRDs are not installed (kubectl apply --server-side -f crds/)",
    )
    .await
}

/// Lists `K` in every watched namespace (or cluster-wide, for none), saying in words what is
/// wrong when that fails; `not_installed` is the words for an API server that does not serve
/// the kind.
async fn check_listable<K>(
    namespaces: &[String],
    client: &kube::Client,
    not_installed: &str,
) -> Result<(), String>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    for scope in scopes(namespaces) {
        let api: Api<K> = match scope {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let place = scope.map_or("any namespace".to_string(), |ns| format!("namespace {ns}"));
        match api.list(&kube::api::ListParams::default().limit(1)).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {
                return Err(not_installed.into())
            }
            Err(kube::Error::Api(status)) if status.code == 403 => {
                return Err(format!(
                    "the service account may not list {}s in {place} (check its Role and RoleBinding): {}",
                    K::kind(&()),
                    status.message
                ))
            }
            Err(e) => {
                return Err(format!(
                    "cannot reach the Kubernetes API server: {}",
                    Chain(&e)
                ))
            }
        }
    }
    Ok(())
}

/// The watched namespaces, or `None` once for every namespace.
fn scopes(namespaces: &[String]) -> Vec<Option<&String>> {
    if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().map(Some).collect()
    }
}

async fn build_lease(
    settings: &OperatorSettings,
    client: &kube::Client,
) -> Result<kube_lease_manager::LeaseManager, String> {
    kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &settings.lease_name)
        .with_namespace(&settings.lease_namespace)
        .with_identity(&settings.identity)
        .with_duration(LEASE_DURATION_SECONDS)
        .with_grace(LEASE_GRACE_SECONDS)
        .build()
        .await
        .map_err(|e| {
            format!(
                "cannot set up the controller lease {}/{} (the service account needs get, create, update and patch on leases there): {}",
                settings.lease_namespace,
                settings.lease_name,
                Chain(&e)
            )
        })
}

/// How long a lease holder's claim lasts without renewal: the longest a crashed leader
/// delays the others.
pub const LEASE_DURATION_SECONDS: u64 = 15;
/// How long before expiry the holder renews.
pub const LEASE_GRACE_SECONDS: u64 = 5;

async fn run_controllers(
    namespaces: Vec<String>,
    ctx: Arc<Context>,
    stop: tokio_util::sync::CancellationToken,
) {
    use kube::runtime::{watcher, Controller};
    let mut controllers = Vec::new();
    for scope in scopes(&namespaces) {
        let bundles: Api<crd::Bundle> = apis(&ctx.client, scope);
        let releases: Api<crd::Release> = apis(&ctx.client, scope);
        let stop_bundles = stop.clone();
        controllers.push(
            Controller::new(bundles.clone(), watcher::Config::default())
                // A Release that changes or goes lets a deletion it held proceed at once.
                .watches(releases.clone(), watcher::Config::default(), |release| {
                    bundles::named_by(&release)
                })
                .graceful_shutdown_on(async move { stop_bundles.cancelled().await })
                .run(bundles::reconcile, error_policy, ctx.clone())
                .for_each(|result| async move { log_result(result) })
                .boxed(),
        );
        let stop_releases = stop.clone();
        let release_controller = Controller::new(releases, watcher::Config::default());
        let known_releases = release_controller.store();
        controllers.push(
            release_controller
                // A Bundle that turns Ready (or changes) re-reconciles the Releases naming it.
                .watches(bundles, watcher::Config::default(), move |bundle| {
                    releases::naming(&known_releases, &bundle)
                })
                .graceful_shutdown_on(async move { stop_releases.cancelled().await })
                .run(releases::reconcile, error_policy, ctx.clone())
                .for_each(|result| async move { log_result(result) })
                .boxed(),
        );
    }
    controllers.push(run_channel_controllers(namespaces.clone(), ctx.clone(), stop).boxed());
    futures_util::future::join_all(controllers).await;
}

/// The API of `K` in one namespace, or in all for `None`.
fn apis<K>(client: &kube::Client, scope: Option<&String>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match scope {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Reconciles Channels once the API server serves them to the operator. The Channel CRD came
/// later than the other two, and Helm does not upgrade CRDs: until someone applies it (or
/// grants the operator its rules), Bundles and Releases are reconciled as before, and the
/// operator looks again with backoff, starting the controller without a restart.
async fn run_channel_controllers(
    namespaces: Vec<String>,
    ctx: Arc<Context>,
    stop: tokio_util::sync::CancellationToken,
) {
    use kube::runtime::{watcher, Controller};
    let mut backoff = Backoff::new(STARTUP_RETRY_MAX);
    while let Err(problem) = check_listable::<crd::Channel>(
        &namespaces,
        &ctx.client,
        "the Channel CRD is not installed (kubectl apply --server-side -f crds/)",
    )
    .await
    {
        if backoff.retried {
            tracing::debug!("Channels are not reconciled yet: {problem}");
        } else {
            tracing::warn!(
                "Channel resources are not reconciled (Bundles and Releases are; the operator keeps checking): {problem}"
            );
        }
        if !backoff.wait(&stop).await {
            return;
        }
    }
    if backoff.retried {
        tracing::info!("Channels are served now: the Channel controller starts");
    }
    let controllers = scopes(&namespaces).into_iter().map(|scope| {
        let stop = stop.clone();
        Controller::new(
            apis::<crd::Channel>(&ctx.client, scope),
            watcher::Config::default(),
        )
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(channels::reconcile, error_policy, ctx.clone())
        .for_each(|result| async move { log_result(result) })
    });
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
    if let Some(denied) = error.denied() {
        tracing::error!(
            resource,
            "the operator was denied a request (check its Role): {denied}"
        );
        return kube::runtime::controller::Action::requeue(STALLED_RETRY / 10);
    }
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
