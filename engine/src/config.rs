//! The configuration: one TOML file, every key overridable by an environment variable, checked whole at start.
//!
//! It owns the configuration's shape, its defaults, where values come from and their validation: an unknown
//! key, a value of the wrong type and a rule broken across keys (a tenant registry that pairs one subscription
//! with two sandboxes, a Kafka option the engine owns) are all refused before anything runs, with the key
//! named. It never opens a file other than the configuration, a socket or a state folder.
//!
//! Sources, later ones winning: the defaults, the file, then `CARAVAN_<SECTION>__<KEY>` environment variables
//! (`CARAVAN_KAFKA__BROKERS=host:9092`, `CARAVAN_TIME__ALLOWED_DISORDER=10s`). Only variables with a `__` are
//! configuration, so `CARAVAN_BIN`-style variables of tools and tests never clash with it; among those, an
//! unknown key is an error like one in the file.

use crate::EngineError;
use caravan_schemas::input::DecodeLimits;
use caravan_schemas::time::Timestamp;
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The prefix of configuration environment variables.
pub const ENV_PREFIX: &str = "CARAVAN_";

/// The whole configuration of `caravan run` and `caravan replay --config`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The Kafka cluster and this instance's identity in it.
    pub kafka: KafkaConfig,
    /// Topic names.
    pub topics: TopicsConfig,
    /// Local state and memory.
    pub state: StateConfig,
    /// The admin HTTP server (metrics, health, queries).
    pub admin: AdminConfig,
    /// Event time and timers.
    pub time: TimeConfig,
    /// Limits on input records and de-duplication.
    pub input: InputConfig,
    /// Batching and commits.
    pub commit: CommitConfig,
    /// Logs.
    pub log: LogConfig,
    /// The tenant registry (SPEC §1): empty means every tenant is accepted.
    pub tenants: Vec<TenantConfig>,
}

/// `[kafka]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated.
    pub brokers: String,
    /// The consumer group every instance of one deployment shares.
    pub group_id: String,
    /// This instance's stable name: its transactional id (unless `transactional_id` is set) and, with static
    /// membership, its group member id. Must survive restarts (a killed instance comes back with the same one,
    /// which fences its former self and aborts its open transaction).
    pub instance_id: String,
    /// The producer's transactional id, when it must differ from `instance_id`. A process fences the former
    /// one only if their ids are the same; with another id the former's open transaction is aborted by whoever
    /// initializes its id, or by the broker's transaction timeout. (The crash tests give every incarnation of a
    /// killed instance an id of its own and fence the former one themselves: ARCHITECTURE.md, Kafka mode.)
    pub transactional_id: Option<String>,
    /// Static group membership (KIP-345, `group.instance.id` = the instance id): a restarted instance takes its
    /// place back at once, without a rebalance, but a stopped one keeps its partitions until its session
    /// times out. Turn it on where instances restart in place (a StatefulSet).
    pub static_membership: bool,
    /// librdkafka settings passed through as they are (security, timeouts...); not the keys the engine owns.
    pub options: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            group_id: "caravan".into(),
            instance_id: "caravan-0".into(),
            transactional_id: None,
            static_membership: false,
            options: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// The producer's transactional id: `transactional_id`, else the instance id.
    pub fn transactional_id(&self) -> &str {
        self.transactional_id.as_deref().unwrap_or(&self.instance_id)
    }
}

/// librdkafka keys the engine sets itself: overriding them would break exactly-once or routing.
pub const OWNED_KAFKA_OPTIONS: [&str; 10] = [
    "bootstrap.servers",
    "group.id",
    "group.instance.id",
    "transactional.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "isolation.level",
    "enable.idempotence",
    "partition.assignment.strategy",
    "enable.partition.eof",
];

/// `[topics]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    /// Input events (account-keyed, or person-keyed without `account_id`).
    pub input: String,
    /// Partitions of the input topic when the engine has to create it (an existing topic keeps its own).
    pub partitions: usize,
    /// Published definitions and stops (compacted).
    pub definitions: String,
    /// Actions out.
    pub actions: String,
    /// Change events out.
    pub changes: String,
    /// Rejected records out.
    pub rejected: String,
    /// The state changelog (compacted, one partition per input partition); default `<group_id>.changelog`.
    pub changelog: Option<String>,
    /// The person stage's input (person routes and records about persons whose account their partition does
    /// not know; keyed by person); default `<group_id>.persons-repartition`.
    pub persons_repartition: Option<String>,
    /// Records the person stage resolved, to their account's partition; default
    /// `<group_id>.accounts-repartition`.
    pub accounts_repartition: Option<String>,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            input: "caravan.input".into(),
            partitions: 4,
            definitions: "caravan.definitions".into(),
            actions: "caravan.actions".into(),
            changes: "caravan.changes".into(),
            rejected: "caravan.rejected".into(),
            changelog: None,
            persons_repartition: None,
            accounts_repartition: None,
        }
    }
}

/// `[state]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Local state folder (one RocksDB per input partition in `caravan run`).
    pub dir: PathBuf,
    /// Accounts cached in memory over all partitions.
    pub cache_accounts: usize,
    /// Person index entries cached in memory.
    pub cache_persons: usize,
    /// RocksDB block cache, MiB.
    pub block_cache_mib: usize,
    /// Cap on RocksDB memtables, MiB.
    pub memtables_mib: usize,
    /// fsync every commit.
    pub sync: bool,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: PathBuf::from("caravan-state"),
            cache_accounts: 400_000,
            cache_persons: 2_000_000,
            block_cache_mib: 64,
            memtables_mib: 64,
            sync: false,
        }
    }
}

impl StateConfig {
    /// The RocksDB tuning these settings give.
    pub fn store_options(&self) -> caravan_state::StoreOptions {
        let memtables = self.memtables_mib.max(4) << 20;
        caravan_state::StoreOptions {
            block_cache_bytes: self.block_cache_mib.max(1) << 20,
            write_buffer_total_bytes: memtables,
            write_buffer_bytes: memtables / 4,
            sync_commits: self.sync,
            ..caravan_state::StoreOptions::default()
        }
    }
}

/// `[admin]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of `/metrics` (and the admin endpoints). `caravan run` defaults to 127.0.0.1:9464; a replay
    /// serves nothing unless it is set.
    pub listen: Option<SocketAddr>,
    /// Bearer token of operators: every `/v1` endpoint, every tenant. With any token configured (this or a
    /// tenant's `admin_token`), `/v1` requires one; `/healthz`, `/readyz` and `/metrics` never do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// The admin address of `caravan run` when none is configured.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9464";

/// What drives timers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeMode {
    /// Event time: the watermark is the largest `ts` read minus the allowed disorder.
    #[default]
    Event,
    /// Processing time: the wall clock (Kafka mode only).
    Processing,
}

/// `[time]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeConfig {
    /// Event or processing time.
    pub mode: TimeMode,
    /// How far behind the largest event time the watermark stays.
    #[serde(with = "humantime_serde")]
    pub allowed_disorder: Duration,
}

impl Default for TimeConfig {
    fn default() -> Self {
        TimeConfig { mode: TimeMode::Event, allowed_disorder: Duration::from_secs(5) }
    }
}

impl TimeConfig {
    /// The allowed disorder in nanoseconds.
    pub fn allowed_disorder_ns(&self) -> i64 {
        i64::try_from(self.allowed_disorder.as_nanos()).unwrap_or(i64::MAX)
    }
}

/// `[input]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    /// Records longer than this are rejected as `too_large`.
    pub max_record_bytes: usize,
    /// Earliest accepted `ts` (RFC 3339, inclusive).
    pub min_ts: String,
    /// Latest accepted `ts` (RFC 3339, exclusive).
    pub max_ts: String,
    /// Event ids remembered for de-duplication, per run (replay) or per partition (Kafka); 0 turns it off.
    pub dedup_window: usize,
    /// Event ids are also forgotten once their event time is this far behind the largest one applied
    /// ("7d"); "0s": no age bound, the window is bounded by count alone.
    #[serde(with = "humantime_serde")]
    pub dedup_max_age: Duration,
    /// Kafka mode with several partitions: how long a record about a person with no known account waits for
    /// the person's account to become known (event time by the person stage's watermark, or the clock in
    /// processing time) before it is rejected as `unknown_person_account`.
    #[serde(with = "humantime_serde")]
    pub unknown_person_wait: Duration,
    /// The records' format: Caravan's native events, or XDM B2B records (`schemas/XDM.md`).
    pub format: InputFormat,
    /// The tenant of every record of an XDM source (XDM records carry none); only with `format = "xdm"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// The format of an input source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum InputFormat {
    /// Caravan's events (SPEC §2), each naming its tenant.
    #[default]
    Native,
    /// XDM B2B records in the platform's form, of one tenant named by the source.
    Xdm,
}

impl Default for InputConfig {
    fn default() -> Self {
        InputConfig {
            max_record_bytes: 1 << 20,
            min_ts: "2000-01-01T00:00:00Z".into(),
            max_ts: "2100-01-01T00:00:00Z".into(),
            dedup_window: 1_000_000,
            dedup_max_age: Duration::ZERO,
            unknown_person_wait: Duration::from_secs(60),
            format: InputFormat::Native,
            tenant: None,
        }
    }
}

impl InputConfig {
    /// The de-duplication age bound in nanoseconds (0: none).
    pub fn dedup_max_age_ns(&self) -> i64 {
        i64::try_from(self.dedup_max_age.as_nanos()).unwrap_or(i64::MAX)
    }

    /// The unknown-person wait in nanoseconds.
    pub fn unknown_person_wait_ns(&self) -> i64 {
        i64::try_from(self.unknown_person_wait.as_nanos()).unwrap_or(i64::MAX)
    }

    /// The decoder's limits.
    ///
    /// # Errors
    /// [`EngineError::Invalid`] for a bound that is not RFC 3339 (checked by [`Config::validate`] first, so
    /// only on a hand-built value).
    pub fn limits(&self) -> Result<DecodeLimits, EngineError> {
        let bound = |key: &str, e| EngineError::Invalid(format!("input.{key}: {e}"));
        let ts_min = Timestamp::parse_rfc3339(&self.min_ts).map_err(|e| bound("min_ts", e))?;
        let ts_max = Timestamp::parse_rfc3339(&self.max_ts).map_err(|e| bound("max_ts", e))?;
        Ok(DecodeLimits { max_record_bytes: self.max_record_bytes, ts_min, ts_max })
    }
}

/// `[commit]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommitConfig {
    /// Commit at least this often (Kafka: one transaction; replay: one epoch).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Commit at least every this many input records.
    pub max_records: u64,
}

impl Default for CommitConfig {
    fn default() -> Self {
        CommitConfig { interval: Duration::from_millis(20), max_records: 20_000 }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

/// `[log]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Text or JSON.
    pub format: LogFormat,
    /// A `RUST_LOG`-style filter (`RUST_LOG` itself wins when set).
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Text, level: "info".into() }
    }
}

/// One `[[tenants]]` entry: a platform sandbox paired with an execution subscription.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// The tenant id records carry.
    pub id: String,
    /// The platform sandbox.
    pub sandbox: String,
    /// The execution subscription.
    pub subscription: String,
    /// Bearer token that reaches this tenant's admin endpoints, and no other tenant's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
}

/// Durations as humantime strings ("5s", "250ms") in TOML and environment variables.
mod humantime_serde {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("`{text}` is not a duration (e.g. 5s, 250ms): {e}")))
    }
}

impl Config {
    /// Reads the configuration: defaults, then `file` (if any), then the environment; validated.
    ///
    /// # Errors
    /// [`EngineError::Invalid`] naming the key: an unreadable file, an unknown key, a bad value, or a rule
    /// broken across keys.
    pub fn load(file: Option<&Path>) -> Result<Config, EngineError> {
        Config::load_from(file, std::env::vars())
    }

    /// [`Config::load`] with the environment given (tests).
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, EngineError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(EngineError::Invalid(format!("configuration file {} not found", path.display())));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let overrides = EnvOverrides::from_vars(env);
        let config: Config = figment.merge(overrides).extract().map_err(|e| EngineError::Invalid(describe(e)))?;
        config.validate().map_err(|problems| EngineError::Invalid(problems.join("\n")))?;
        Ok(config)
    }

    /// Every rule across keys; each problem names its key.
    ///
    /// # Errors
    /// The list of problems.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        match self.input.limits() {
            Err(e) => problems.push(e.to_string()),
            Ok(l) if l.ts_min >= l.ts_max => problems.push("input.min_ts must be earlier than input.max_ts".into()),
            Ok(_) => {}
        }
        if self.input.max_record_bytes == 0 {
            problems.push("input.max_record_bytes must be at least 1".into());
        }
        if self.commit.max_records == 0 {
            problems.push("commit.max_records must be at least 1".into());
        }
        if self.topics.partitions == 0 {
            problems.push("topics.partitions must be at least 1".into());
        }
        if self.commit.interval.is_zero() {
            problems.push("commit.interval must be longer than 0".into());
        }
        for (key, value) in [
            ("kafka.brokers", &self.kafka.brokers),
            ("kafka.group_id", &self.kafka.group_id),
            ("kafka.instance_id", &self.kafka.instance_id),
            ("topics.input", &self.topics.input),
            ("topics.definitions", &self.topics.definitions),
            ("topics.actions", &self.topics.actions),
            ("topics.changes", &self.topics.changes),
            ("topics.rejected", &self.topics.rejected),
        ] {
            if value.trim().is_empty() {
                problems.push(format!("{key} must not be empty"));
            }
        }
        if self.kafka.transactional_id.as_deref().is_some_and(|t| t.trim().is_empty()) {
            problems.push("kafka.transactional_id must not be empty (leave it out to use kafka.instance_id)".into());
        }
        for key in self.kafka.options.keys() {
            if OWNED_KAFKA_OPTIONS.contains(&key.as_str()) {
                problems.push(format!(
                    "kafka.options.\"{key}\" is set by the engine itself and cannot be overridden (owned keys: {})",
                    OWNED_KAFKA_OPTIONS.join(", ")
                ));
            }
        }
        problems.extend(registry_problems(&self.tenants));
        if let Err(e) = source_tenant(self.input.format, self.input.tenant.as_deref(), &self.tenants) {
            problems.push(e.to_string());
        }
        problems.extend(token_problems(self.admin.token.as_deref(), &self.tenants));
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }

    /// The changelog topic's name.
    pub fn changelog_topic(&self) -> String {
        self.topics.changelog.clone().unwrap_or_else(|| format!("{}.changelog", self.kafka.group_id))
    }

    /// The person stage's topic's name.
    pub fn persons_repartition_topic(&self) -> String {
        self.topics
            .persons_repartition
            .clone()
            .unwrap_or_else(|| format!("{}.persons-repartition", self.kafka.group_id))
    }

    /// The topic of records resolved by the person stage.
    pub fn accounts_repartition_topic(&self) -> String {
        self.topics
            .accounts_repartition
            .clone()
            .unwrap_or_else(|| format!("{}.accounts-repartition", self.kafka.group_id))
    }

    /// The admin address of `caravan run`.
    pub fn run_admin_listen(&self) -> SocketAddr {
        self.admin
            .listen
            .unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9464))))
    }

    /// The configuration as TOML, for `caravan config check`; admin tokens show as `<redacted>`.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        let redact = |t: &mut Option<String>| {
            if t.is_some() {
                *t = Some("<redacted>".into());
            }
        };
        redact(&mut shown.admin.token);
        for t in &mut shown.tenants {
            redact(&mut t.admin_token);
        }
        for (key, value) in &mut shown.kafka.options {
            if is_secret_option(key) {
                *value = "<redacted>".into();
            }
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot print the configuration: {e}\n"))
    }
}

/// Whether a librdkafka option holds a secret that must never be printed: passwords, secrets, tokens, private
/// keys and SASL/JAAS configurations (which embed credentials), e.g. `sasl.password`, `ssl.key.password`,
/// `ssl.keystore.password`, `sasl.oauthbearer.client.secret`, `ssl.key.pem`, `sasl.jaas.config`.
pub fn is_secret_option(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "token", "key.pem", "private", "jaas", "credential"].iter().any(|word| key.contains(word))
        || key == "sasl.oauthbearer.config"
}

/// The `CARAVAN_SECTION__KEY` variables of an environment, as a figment provider whose errors name the variable.
///
/// `kafka.options` keys are librdkafka's dotted names, which a variable name cannot hold: in
/// `CARAVAN_KAFKA__OPTIONS__<NAME>` each `_` of the name stands for a dot (`CARAVAN_KAFKA__OPTIONS__SASL_PASSWORD`
/// sets `sasl.password`; librdkafka's settable names have no underscore), and the value stays a string.
struct EnvOverrides {
    /// (key path, value, whether the value is kept as a string) triples.
    vars: Vec<(Vec<String>, String, bool)>,
}

impl EnvOverrides {
    fn from_vars(env: impl IntoIterator<Item = (String, String)>) -> EnvOverrides {
        let vars = env
            .into_iter()
            .filter_map(|(name, value)| {
                let rest = name.strip_prefix(ENV_PREFIX)?;
                if let Some(option) = rest.strip_prefix("KAFKA__OPTIONS__") {
                    let option = option.to_ascii_lowercase().replace('_', ".");
                    return Some((vec!["kafka".to_owned(), "options".to_owned(), option], value, true));
                }
                let path = rest.to_ascii_lowercase().split("__").map(str::to_owned).collect();
                rest.contains("__").then_some((path, value, false))
            })
            .collect();
        EnvOverrides { vars }
    }
}

/// The variable that sets a dotted key.
fn env_name(keys: &[&str]) -> String {
    format!("{ENV_PREFIX}{}", keys.join("__").to_ascii_uppercase())
}

impl figment::Provider for EnvOverrides {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("environment variable")
            .interpolater(|_: &figment::Profile, keys: &[&str]| env_name(keys))
    }

    fn data(&self) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let mut root = figment::value::Dict::new();
        for (path, text, as_string) in &self.vars {
            // Values read the way figment reads environment values: numbers and booleans by their look (a
            // librdkafka option's value stays the string it is).
            let value = if *as_string {
                figment::value::Value::from(text.clone())
            } else {
                text.parse::<figment::value::Value>().unwrap_or_else(|_| figment::value::Value::from(text.clone()))
            };
            let Some((last, parts)) = path.split_last() else { continue };
            let mut dict = &mut root;
            for part in parts {
                let entry = dict
                    .entry(part.clone())
                    .or_insert_with(|| figment::value::Value::from(figment::value::Dict::new()));
                let figment::value::Value::Dict(_, inner) = entry else {
                    let key = path.join(".");
                    return Err(figment::Error::from(format!("{} sets a key inside a value", env_name(&[&key]))));
                };
                dict = inner;
            }
            dict.insert(last.clone(), value);
        }
        Ok(figment::Profile::Default.collect(root))
    }
}

/// A figment error as one line per problem, each naming the key and where its value came from.
fn describe(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let path = &e.path;
            let key = if path.is_empty() { "(top level)".to_owned() } else { path.join(".") };
            let source = match &e.metadata {
                Some(m) if m.name == "environment variable" => {
                    format!(" (from {})", m.interpolate(&figment::Profile::Default, path))
                }
                Some(m) => m.source.as_ref().map(|s| format!(" (from {s})")).unwrap_or_default(),
                None => String::new(),
            };
            format!("configuration key `{key}`: {}{source}", e.kind)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The tenant of an XDM source, checked: set for XDM (and registered, with a registry), unset for native.
///
/// # Errors
/// [`EngineError::Invalid`]: the rule broken, naming the keys.
pub fn source_tenant(
    format: InputFormat,
    tenant: Option<&str>,
    registry: &[TenantConfig],
) -> Result<Option<String>, EngineError> {
    let refused = |why: String| Err(EngineError::Invalid(why));
    match (format, tenant) {
        (InputFormat::Native, None) => Ok(None),
        (InputFormat::Native, Some(_)) => {
            refused("input.tenant is only for input.format = \"xdm\": native records name their own tenant".into())
        }
        (InputFormat::Xdm, None) => {
            refused("input.tenant must be set when input.format = \"xdm\": XDM records carry no tenant".into())
        }
        (InputFormat::Xdm, Some(t)) if t.trim().is_empty() => refused("input.tenant must not be empty".into()),
        (InputFormat::Xdm, Some(t)) if !registry.is_empty() && !registry.iter().any(|r| r.id == t) => {
            refused(format!("input.tenant `{t}` is not in the tenant registry"))
        }
        (InputFormat::Xdm, Some(t)) => Ok(Some(t.to_owned())),
    }
}

/// Admin tokens: none empty, none shared (a token names exactly one scope).
fn token_problems(operator: Option<&str>, tenants: &[TenantConfig]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen: Vec<(&str, String)> = Vec::new();
    let all = operator.map(|t| (t, "admin.token".to_string())).into_iter().chain(
        tenants
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.admin_token.as_deref().map(|x| (x, format!("tenants[{i}].admin_token")))),
    );
    for (token, key) in all {
        if token.trim().is_empty() {
            problems.push(format!("{key} must not be empty"));
        } else if let Some((_, first)) = seen.iter().find(|(t, _)| *t == token) {
            problems.push(format!("{key} repeats {first}: every admin token must be different"));
        }
        seen.push((token, key));
    }
    problems
}

/// The one-to-one rule of the tenant registry: no two tenants share an id, a sandbox or a subscription.
fn registry_problems(tenants: &[TenantConfig]) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, a) in tenants.iter().enumerate() {
        for (key, value) in [("id", &a.id), ("sandbox", &a.sandbox), ("subscription", &a.subscription)] {
            if value.trim().is_empty() {
                problems.push(format!("tenants[{i}].{key} must not be empty"));
            }
        }
        for b in &tenants[..i] {
            if a.id == b.id {
                problems.push(format!("tenants: tenant `{}` is registered twice", a.id));
            }
            if a.subscription == b.subscription {
                problems.push(format!(
                    "tenants: subscription `{}` is paired with two sandboxes, `{}` (tenant `{}`) and `{}` (tenant `{}`); \
                     a subscription belongs to exactly one sandbox",
                    a.subscription, b.sandbox, b.id, a.sandbox, a.id
                ));
            }
            if a.sandbox == b.sandbox {
                problems.push(format!(
                    "tenants: sandbox `{}` is paired with two subscriptions, `{}` (tenant `{}`) and `{}` (tenant `{}`); \
                     a sandbox belongs to exactly one subscription",
                    a.sandbox, b.subscription, b.id, a.subscription, a.id
                ));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests;
