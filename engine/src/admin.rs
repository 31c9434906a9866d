//! The admin HTTP server: `/metrics`, `/healthz`, `/readyz`, `/v1/journeys` and
//! `/v1/tenants/{tenant}/accounts/{id}`, served on a thread of its own (a one-thread tokio runtime).
//!
//! It owns what the endpoints read: the stores the engine registers (shared handles on the same RocksDB
//! databases, so queries see committed state), the published definitions, readiness, and the access rules
//! (bearer tokens scoped to every tenant or to one). It never writes state and never blocks the engine:
//! queries run on tokio's blocking threads with their own RocksDB reads. Every `/v1` answer is scoped by
//! tenant: state keys begin with the tenant, so a query for one tenant's account cannot find another's.

use crate::EngineError;
use crate::config::Config;
use crate::telemetry;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use caravan_operators::account::{AccountState, Definitions};
use caravan_schemas::time::Timestamp;
use caravan_state::{Store, StoredAccount};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// A count of accounts per journey node scans every account: it is reused for ten times as long as it took
/// (so that scans take a tenth of a core at most), and for one second at least.
const POSITIONS_REUSE_FACTOR: u32 = 10;
const POSITIONS_MIN_REUSE: Duration = Duration::from_secs(1);

/// Who may read what under `/v1`.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// The operators' token: every tenant.
    operator: Option<String>,
    /// Tenant tokens: (token, tenant).
    tenants: Vec<(String, String)>,
    /// The tenant registry, when one is configured: other tenants are unknown.
    registry: Option<Vec<String>>,
}

impl Access {
    /// The rules of a configuration: its admin tokens and tenant registry.
    pub fn from_config(cfg: &Config) -> Access {
        Access {
            operator: cfg.admin.token.clone(),
            tenants: cfg.tenants.iter().filter_map(|t| t.admin_token.clone().map(|k| (k, t.id.clone()))).collect(),
            registry: (!cfg.tenants.is_empty()).then(|| cfg.tenants.iter().map(|t| t.id.clone()).collect()),
        }
    }

    /// The scope of a request's bearer token (everything when no token is configured at all).
    fn scope(&self, headers: &HeaderMap) -> Result<Scope, Refusal> {
        if self.operator.is_none() && self.tenants.is_empty() {
            return Ok(Scope::All);
        }
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let Some(given) = given else {
            return Err(Refusal(
                StatusCode::UNAUTHORIZED,
                "an `Authorization: Bearer <token>` header is required".into(),
            ));
        };
        if self.operator.as_deref() == Some(given) {
            return Ok(Scope::All);
        }
        match self.tenants.iter().find(|(token, _)| token == given) {
            Some((_, tenant)) => Ok(Scope::Tenant(tenant.clone())),
            None => Err(Refusal(StatusCode::UNAUTHORIZED, "the token is not valid".into())),
        }
    }

    /// Refuses a tenant outside the scope (403) or outside the registry (404).
    fn check_tenant(&self, scope: &Scope, tenant: &str) -> Result<(), Refusal> {
        if let Scope::Tenant(own) = scope
            && own != tenant
        {
            return Err(Refusal(StatusCode::FORBIDDEN, format!("this token does not reach tenant `{tenant}`")));
        }
        if self.registry.as_ref().is_some_and(|r| !r.iter().any(|t| t == tenant)) {
            return Err(Refusal(StatusCode::NOT_FOUND, format!("unknown tenant `{tenant}`")));
        }
        Ok(())
    }
}

/// What a request's token reaches.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Scope {
    All,
    Tenant(String),
}

/// A request refused: its status and why.
#[derive(Debug)]
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.0, &self.1)
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

/// Where accounts stand in journeys.
#[derive(Debug, Default)]
struct Positions {
    /// Accounts with an instance of each journey version: (tenant, journey, version) -> accounts.
    instances: BTreeMap<(String, String, u32), u64>,
    /// Accounts at each node: (tenant, journey, version, node) -> accounts. An account in a `split_people`
    /// counts at each node where one of its branches is.
    nodes: BTreeMap<(String, String, u32, String), u64>,
}

struct Shared {
    metrics: Option<PrometheusHandle>,
    access: Access,
    ready: AtomicBool,
    /// The stores this process holds, by input partition (a replay has one, numbered 0).
    stores: RwLock<BTreeMap<i32, Arc<Store>>>,
    definitions: RwLock<Arc<Definitions>>,
    /// The last count of positions: until when it is reused, and the count.
    positions: Mutex<Option<(Instant, Arc<Positions>)>>,
}

/// The engine's handle on the admin server's view: it registers stores and definitions and says when it is
/// ready. Cloning it is cheap; every clone is the same view.
#[derive(Clone)]
pub struct Admin {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").field("ready", &self.shared.ready.load(Ordering::Relaxed)).finish_non_exhaustive()
    }
}

impl Admin {
    /// A view with these access rules; `metrics` renders `/metrics` (none: the endpoint answers 404).
    pub fn new(metrics: Option<PrometheusHandle>, access: Access) -> Admin {
        Admin {
            shared: Arc::new(Shared {
                metrics,
                access,
                ready: AtomicBool::new(false),
                stores: RwLock::new(BTreeMap::new()),
                definitions: RwLock::new(Arc::new(Definitions::default())),
                positions: Mutex::new(None),
            }),
        }
    }

    /// Says whether the engine's state is restored and it is consuming (`/readyz`).
    pub fn set_ready(&self, ready: bool) {
        self.shared.ready.store(ready, Ordering::Release);
        metrics::gauge!(telemetry::READY).set(if ready { 1.0 } else { 0.0 });
    }

    /// Registers the store of an input partition (a replay's: 0).
    pub fn add_store(&self, partition: i32, store: Arc<Store>) {
        self.shared.stores.write().unwrap_or_else(PoisonError::into_inner).insert(partition, store);
        self.forget_positions();
    }

    /// Forgets the store of a partition this process no longer holds.
    pub fn remove_store(&self, partition: i32) {
        self.shared.stores.write().unwrap_or_else(PoisonError::into_inner).remove(&partition);
        self.forget_positions();
    }

    /// Sets the definitions in force.
    pub fn set_definitions(&self, defs: Arc<Definitions>) {
        *self.shared.definitions.write().unwrap_or_else(PoisonError::into_inner) = defs;
        self.forget_positions();
    }

    fn forget_positions(&self) {
        *self.shared.positions.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    fn stores(&self) -> Vec<(i32, Arc<Store>)> {
        let stores = self.shared.stores.read().unwrap_or_else(PoisonError::into_inner);
        stores.iter().map(|(p, s)| (*p, Arc::clone(s))).collect()
    }

    fn definitions(&self) -> Arc<Definitions> {
        Arc::clone(&self.shared.definitions.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Accounts per journey node over every registered store (a recent count is reused, see
    /// [`POSITIONS_REUSE_FACTOR`]).
    fn positions(&self) -> Result<Arc<Positions>, EngineError> {
        if let Some((until, p)) = &*self.shared.positions.lock().unwrap_or_else(PoisonError::into_inner)
            && Instant::now() < *until
        {
            return Ok(Arc::clone(p));
        }
        let started = Instant::now();
        let mut counts = Positions::default();
        for (_, store) in self.stores() {
            store.each_account(|tenant, _, rec| {
                for i in &rec.instances {
                    let journey = (tenant.to_string(), i.journey_id.to_string(), i.journey_version);
                    *counts.instances.entry(journey).or_default() += 1;
                    let mut nodes: Vec<&str> = vec![i.node.as_str()];
                    nodes.extend(i.branches.iter().map(|b| b.node.as_str()));
                    nodes.sort_unstable();
                    nodes.dedup();
                    for node in nodes {
                        let key = (tenant.to_string(), i.journey_id.to_string(), i.journey_version, node.to_string());
                        *counts.nodes.entry(key).or_default() += 1;
                    }
                }
            })?;
        }
        let counts = Arc::new(counts);
        let reuse = (started.elapsed() * POSITIONS_REUSE_FACTOR).max(POSITIONS_MIN_REUSE);
        *self.shared.positions.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((Instant::now() + reuse, Arc::clone(&counts)));
        Ok(counts)
    }

    /// Sets the gauges read from the stores (state size, block cache, accounts per journey node).
    fn refresh_gauges(&self) -> Result<(), EngineError> {
        let stores = self.stores();
        let size: u64 = stores.iter().map(|(_, s)| s.approximate_size_bytes()).sum();
        let cache: u64 = stores.iter().map(|(_, s)| s.block_cache_usage_bytes()).sum();
        metrics::gauge!(telemetry::STATE_SIZE).set(size as f64);
        metrics::gauge!(telemetry::BLOCK_CACHE_USAGE).set(cache as f64);
        let positions = self.positions()?;
        for journey in self.definitions().all() {
            for ix in 0..journey.nodes.len() {
                let node = journey.node_name(ix);
                let key = (journey.tenant.clone(), journey.id.clone(), journey.version, node.to_string());
                let labels = [
                    ("tenant", journey.tenant.clone()),
                    ("journey", journey.id.clone()),
                    ("version", journey.version.to_string()),
                    ("node", node.to_string()),
                ];
                metrics::gauge!(telemetry::JOURNEY_ACCOUNTS, &labels)
                    .set(positions.nodes.get(&key).copied().unwrap_or(0) as f64);
            }
        }
        Ok(())
    }

    /// Starts serving on `addr` (bound before this returns, so a taken port is an error here); returns the
    /// address bound (port 0 picks one).
    ///
    /// # Errors
    /// When the address cannot be bound or the server thread cannot start.
    pub fn serve(&self, addr: SocketAddr) -> Result<SocketAddr, EngineError> {
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| EngineError::io(format!("binding the admin address {addr}"), e))?;
        listener.set_nonblocking(true).map_err(|e| EngineError::io("configuring the admin listener".into(), e))?;
        let bound = listener.local_addr().map_err(|e| EngineError::io("reading the admin address".into(), e))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| EngineError::io("starting the admin runtime".into(), e))?;
        let app = axum::Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics_text))
            .route("/v1/journeys", get(journeys))
            .route("/v1/tenants/{tenant}/accounts/{account}", get(account))
            .with_state(self.clone());
        std::thread::Builder::new()
            .name("caravan-admin".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => {
                            if let Err(e) = axum::serve(l, app).await {
                                tracing::error!(error = %e, "The admin server stopped.");
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "The admin server could not start."),
                    }
                });
            })
            .map_err(|e| EngineError::io("starting the admin thread".into(), e))?;
        Ok(bound)
    }
}

/// Runs a blocking query off the server's thread; a failure is a 500 with the error.
async fn blocking<F>(f: F) -> Response
where
    F: FnOnce() -> Result<Response, EngineError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("the query failed: {e}")),
    }
}

async fn readyz(State(admin): State<Admin>) -> Response {
    let partitions: Vec<i32> = admin.stores().into_iter().map(|(p, _)| p).collect();
    let ready = admin.shared.ready.load(Ordering::Acquire);
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(json!({ "ready": ready, "partitions": partitions }))).into_response()
}

async fn metrics_text(State(admin): State<Admin>) -> Response {
    blocking(move || {
        let Some(handle) = &admin.shared.metrics else {
            return Ok(error(StatusCode::NOT_FOUND, "metrics are not recorded by this process"));
        };
        admin.refresh_gauges()?;
        Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response())
    })
    .await
}

#[derive(serde::Deserialize)]
struct JourneysQuery {
    tenant: Option<String>,
}

async fn journeys(State(admin): State<Admin>, headers: HeaderMap, Query(q): Query<JourneysQuery>) -> Response {
    let access = &admin.shared.access;
    let scope = match access.scope(&headers) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let tenant = match (&scope, q.tenant) {
        (_, Some(t)) => {
            if let Err(r) = access.check_tenant(&scope, &t) {
                return r.into_response();
            }
            Some(t)
        }
        (Scope::Tenant(own), None) => Some(own.clone()),
        (Scope::All, None) => None,
    };
    blocking(move || {
        let positions = admin.positions()?;
        let defs = admin.definitions();
        let list: Vec<Value> = defs
            .all()
            .filter(|j| tenant.as_ref().is_none_or(|t| *t == j.tenant))
            .map(|j| {
                let nodes: serde_json::Map<String, Value> = (0..j.nodes.len())
                    .map(|ix| {
                        let node = j.node_name(ix).to_string();
                        let key = (j.tenant.clone(), j.id.clone(), j.version, node.clone());
                        (node, json!(positions.nodes.get(&key).copied().unwrap_or(0)))
                    })
                    .collect();
                let key = (j.tenant.clone(), j.id.clone(), j.version);
                let accounts = positions.instances.get(&key).copied().unwrap_or(0);
                let newest = defs.newest_for_tenant(&j.tenant).any(|n| n.id == j.id && n.version == j.version);
                json!({
                    "tenant": j.tenant,
                    "journey_id": j.id,
                    "version": j.version,
                    "newest": newest,
                    "stopped": defs.is_stopped(&j.tenant, &j.id, j.version),
                    "accounts": accounts,
                    "nodes": nodes,
                })
            })
            .collect();
        Ok(axum::Json(json!({ "journeys": list, "partitions": admin.stores().len() })).into_response())
    })
    .await
}

async fn account(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Path((tenant, account)): Path<(String, String)>,
) -> Response {
    let access = &admin.shared.access;
    if let Err(r) = access.scope(&headers).and_then(|scope| access.check_tenant(&scope, &tenant)) {
        return r.into_response();
    }
    blocking(move || {
        let defs = admin.definitions();
        for (partition, store) in admin.stores() {
            if let Some(mut view) = account_view(&store, &defs, &tenant, &account)? {
                if let Some(obj) = view.as_object_mut() {
                    obj.insert("partition".into(), json!(partition));
                }
                return Ok(axum::Json(view).into_response());
            }
        }
        Ok(error(StatusCode::NOT_FOUND, &format!("no account `{account}` in tenant `{tenant}` on this instance")))
    })
    .await
}

/// A store's committed position as `caravan inspect` shows it: named counters, times in RFC 3339, and only
/// the fields of the mode that wrote it.
pub fn position_view(p: &caravan_state::Position) -> Value {
    let time = |t: Option<i64>| t.map(|t| Timestamp(t).to_rfc3339());
    let mut view = json!({
        "mode": match p.mode { caravan_state::Mode::Replay => "replay", caravan_state::Mode::Kafka => "kafka" },
        "epoch": p.epoch,
        "input_next": p.input_next,
        "seq": p.seq,
        "max_ts": time(p.max_ts),
        "applied": p.totals[0], "rejected": p.totals[1], "duplicates": p.totals[2],
        "actions": p.totals[3], "changes": p.totals[4], "late": p.totals[5],
    });
    if let Some(obj) = view.as_object_mut() {
        match p.mode {
            caravan_state::Mode::Replay => {
                obj.insert("input_bytes".into(), json!(p.input_bytes));
                obj.insert("output_lengths".into(), json!(p.output_lengths));
            }
            caravan_state::Mode::Kafka => {
                obj.insert("definitions_next".into(), json!(p.definitions_next));
                obj.insert(
                    "stage".into(),
                    json!({"persons_next": p.stage.persons_next, "accounts_next": p.stage.accounts_next,
                        "max_ts": time(p.stage.max_ts)}),
                );
            }
        }
    }
    view
}

/// The latest event time a store has committed (the `now` of derived values such as buying group
/// engagement), from its position, whichever mode wrote it.
fn committed_time(store: &Store) -> Result<Timestamp, EngineError> {
    Ok(Timestamp(store.position()?.and_then(|p| p.max_ts).unwrap_or(0)))
}

/// One account as committed in `store`: attributes, people, opportunities, journey positions, buying
/// groups and pending timers; `None` when the store holds nothing of it.
///
/// # Errors
/// A store read failure.
pub fn account_view(
    store: &Store,
    defs: &Definitions,
    tenant: &str,
    account: &str,
) -> Result<Option<Value>, EngineError> {
    let Some(StoredAccount { record, persons, opportunities }) = store.load_account(tenant, account)? else {
        return Ok(None);
    };
    let now = committed_time(store)?;
    let state = AccountState::from_records(tenant, account, record.clone(), persons.clone(), opportunities.clone());
    // Buying groups are internal (never on the change stream): this is where they can be read.
    let buying_groups: serde_json::Map<String, Value> = record
        .groups
        .iter()
        .map(|g| {
            let value = caravan_operators::buying_group::group_value(defs, &state, &g.solution, now);
            (g.solution.to_string(), value)
        })
        .collect();
    let timers: Vec<Value> = store
        .timers_of(tenant, account)?
        .into_iter()
        .map(|x| {
            json!({"journey_id": x.journey_id, "instance": x.instance, "slot": x.slot,
                "due": Timestamp(x.timer.due).to_rfc3339()})
        })
        .collect();
    let journeys: Vec<Value> = record
        .instances
        .iter()
        .map(|i| {
            let branches: Vec<Value> =
                i.branches.iter().map(|b| json!({"path": b.path, "node": b.node, "people": b.people})).collect();
            json!({"journey_id": i.journey_id, "journey_version": i.journey_version, "instance": i.instance,
                "node": i.node, "branches": branches})
        })
        .collect();
    let people: Vec<Value> = persons
        .iter()
        .filter(|p| p.present)
        .map(|p| {
            let activity: BTreeMap<String, u64> = p
                .activity()
                .iter()
                .map(|h| (h.kind.to_string(), h.times.iter().map(|(_, n)| u64::from(*n)).sum::<u64>()))
                .collect();
            json!({"person_id": p.person_id, "attributes": p.attributes.to_map(), "version": p.version,
                "lists": p.lists(), "activity": activity})
        })
        .collect();
    let opportunities: Vec<Value> = opportunities
        .iter()
        .filter(|o| o.present)
        .map(|o| json!({"opportunity_id": o.opportunity_id, "attributes": o.attributes.to_map(), "version": o.version}))
        .collect();
    Ok(Some(json!({
        "tenant": tenant,
        "account_id": account,
        "exists": record.exists,
        "attributes": record.attributes.to_map(),
        "version": record.version,
        "audiences": record.audiences,
        "lists": record.lists,
        "journeys": journeys,
        "entries": record.entries,
        "persons": people,
        "opportunities": opportunities,
        "timers": timers,
        "buying_groups": buying_groups,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(operator: Option<&str>, tenants: &[(&str, &str)], registry: Option<&[&str]>) -> Access {
        Access {
            operator: operator.map(String::from),
            tenants: tenants.iter().map(|(k, t)| (k.to_string(), t.to_string())).collect(),
            registry: registry.map(|r| r.iter().map(|t| t.to_string()).collect()),
        }
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, format!("Bearer {token}").parse().expect("a valid header"));
        h
    }

    #[test]
    fn tokens_scope_requests_to_their_tenant() {
        let a = access(Some("op"), &[("ka", "a"), ("kb", "b")], None);
        assert_eq!(a.scope(&bearer("op")).ok(), Some(Scope::All));
        assert_eq!(a.scope(&bearer("ka")).ok(), Some(Scope::Tenant("a".into())));
        let status = |r: Result<Scope, Refusal>| r.err().map(|r| r.0);
        assert_eq!(status(a.scope(&bearer("nope"))), Some(StatusCode::UNAUTHORIZED));
        assert_eq!(status(a.scope(&HeaderMap::new())), Some(StatusCode::UNAUTHORIZED));
        let tenant_a = Scope::Tenant("a".into());
        assert!(a.check_tenant(&tenant_a, "a").is_ok());
        assert_eq!(a.check_tenant(&tenant_a, "b").err().map(|r| r.0), Some(StatusCode::FORBIDDEN));
        assert!(a.check_tenant(&Scope::All, "b").is_ok());
    }

    #[test]
    fn no_token_means_open_and_the_registry_bounds_tenants() {
        let a = access(None, &[], Some(&["a"]));
        assert_eq!(a.scope(&HeaderMap::new()).ok(), Some(Scope::All));
        assert!(a.check_tenant(&Scope::All, "a").is_ok());
        assert_eq!(a.check_tenant(&Scope::All, "zz").err().map(|r| r.0), Some(StatusCode::NOT_FOUND));
    }
}
