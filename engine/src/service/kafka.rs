//! Kafka clients of the service: their settings, the topics the engine creates, the changelog restore and the
//! definitions topic.
//!
//! It owns every librdkafka setting the engine relies on for exactly-once (transactional producer with a stable
//! `transactional.id`, read_committed consumers, no auto-commit, an eager assignor) and the shape of the records
//! it writes to its own topics. It never processes events.

use crate::EngineError;
use crate::config::Config;
use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

/// How long a broker request may take before the engine gives up on it.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A failed Kafka client call, as the engine reports and classifies it ([`EngineError::retry`]).
pub(crate) fn kafka_error(what: &str, e: KafkaError) -> EngineError {
    EngineError::kafka(what, e)
}

/// A client configuration with the user's pass-through options, then the engine's own keys on top.
/// The librdkafka features a configuration needs (names as in librdkafka's `builtin.features`), each with
/// the option that needs it. Every input codec is needed whatever the options say: the input topic's
/// producers choose theirs.
pub(crate) fn needed_features(options: &std::collections::BTreeMap<String, String>) -> Vec<(&'static str, String)> {
    let mut needed: Vec<(&'static str, String)> = ["gzip", "snappy", "lz4", "zstd"]
        .into_iter()
        .map(|f| (f, "reading input compressed with it".to_owned()))
        .collect();
    let get = |key: &str| options.get(key).map(|v| v.trim().to_ascii_lowercase());
    if let Some(protocol) = get("security.protocol")
        && (protocol == "ssl" || protocol == "sasl_ssl")
    {
        needed.push(("ssl", format!("security.protocol = {protocol}")));
    }
    let mechanisms = get("sasl.mechanisms").or_else(|| get("sasl.mechanism")).unwrap_or_default();
    for mechanism in mechanisms.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let feature = match mechanism {
            "gssapi" => "sasl_gssapi",
            "plain" => "sasl_plain",
            "scram-sha-256" | "scram-sha-512" => "sasl_scram",
            "oauthbearer" => "sasl_oauthbearer",
            _ => continue,
        };
        needed.push((feature, format!("sasl.mechanisms = {mechanism}")));
    }
    needed
}

/// Refuses a configuration that needs a librdkafka feature this build lacks, naming the option and the
/// feature (before, `security.protocol = "SSL"` failed deep in the client, and gzip input stalled a partition
/// on "Not implemented" decompression errors).
///
/// # Errors
/// [`EngineError::Invalid`] listing every missing feature; a client error reading the features.
pub(crate) fn check_features(cfg: &Config) -> Result<(), EngineError> {
    let native =
        ClientConfig::new().create_native_config().map_err(|e| kafka_error("reading librdkafka's features", e))?;
    let builtin = native.get("builtin.features").map_err(|e| kafka_error("reading librdkafka's features", e))?;
    let have: Vec<&str> = builtin.split(',').map(str::trim).collect();
    let missing: Vec<String> = needed_features(&cfg.kafka.options)
        .into_iter()
        .filter(|(feature, _)| !have.contains(feature))
        .map(|(feature, why)| {
            let hint = if feature == "sasl_gssapi" { " (build caravan with --features gssapi)" } else { "" };
            format!("{why} needs librdkafka's `{feature}`, which this build lacks{hint}")
        })
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(EngineError::Invalid(format!("kafka: {} (built with: {builtin})", missing.join("; "))))
    }
}

pub(crate) fn client_config(cfg: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in &cfg.kafka.options {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &cfg.kafka.brokers);
    c
}

/// Runs a future to completion on this thread (the admin client's futures are completed by its own thread).
pub(crate) fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park_timeout(Duration::from_millis(100)),
        }
    }
}

/// The number of partitions of a topic, if it exists.
pub(crate) fn partitions_of<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
) -> Result<Option<usize>, EngineError> {
    let md = consumer
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .map_err(|e| kafka_error(&format!("reading the metadata of {topic}"), e))?;
    for t in md.topics() {
        tracing::debug!(topic = t.name(), error = ?t.error(), partitions = t.partitions().len(), "Topic metadata.");
    }
    Ok(md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
        .filter(|n| *n > 0))
}

/// Creates missing topics: `(name, partitions, compacted)`. Existing ones are left as they are.
pub(crate) fn ensure_topics(cfg: &Config, topics: &[(String, usize, bool)]) -> Result<(), EngineError> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(cfg).create().map_err(|e| kafka_error("creating the admin client", e))?;
    let compact = [("cleanup.policy", "compact"), ("delete.retention.ms", "604800000")];
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions, compacted)| {
            let t = NewTopic::new(name, *partitions as i32, TopicReplication::Fixed(-1));
            if *compacted { compact.iter().fold(t, |t, (k, v)| t.set(k, v)) } else { t }
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
    let results = block_on(admin.create_topics(&new, &opts)).map_err(|e| kafka_error("creating topics", e))?;
    for r in results {
        match r {
            Ok(name) => tracing::info!(topic = %name, "Created topic."),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => tracing::debug!(topic = %name, "Topic exists."),
            Err((name, code)) => return Err(EngineError::Invalid(format!("kafka: creating topic {name}: {code}"))),
        }
    }
    Ok(())
}

/// Partition changes the consumer saw, for the main loop to act on between batches.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Assignment {
    Revoked(Vec<i32>),
    Assigned(Vec<i32>),
}

/// A consumer configuration: a fetch with nothing to return waits 10 ms, not librdkafka's 500 ms, unless the
/// options say otherwise (a broker that does not answer a long poll early would add that to every record).
fn consumer_config(cfg: &Config) -> ClientConfig {
    let mut c = client_config(cfg);
    if !cfg.kafka.options.contains_key("fetch.wait.max.ms") {
        c.set("fetch.wait.max.ms", "10");
    }
    c
}

/// Counts an error a Kafka client reported (`KAFKA_ERRORS`, by client and librdkafka's error code) and logs it.
pub(crate) fn count_error(client: &'static str, error: &KafkaError, reason: &str) {
    let kind = error.rdkafka_error_code().map_or_else(|| "Other".to_owned(), |code| format!("{code:?}"));
    tracing::warn!(client, kind = kind.as_str(), %error, reason, "Kafka client error.");
    metrics::counter!(crate::telemetry::KAFKA_ERRORS, "client" => client, "kind" => kind).increment(1);
}

/// The input consumer's context: records rebalances (they run inside `poll`, between batches) and, from
/// librdkafka's statistics, where each partition it reads ends.
#[derive(Default)]
pub(crate) struct InputContext {
    pub(crate) events: Mutex<Vec<Assignment>>,
    /// The topics it reads: the input and, with several partitions, the person stage's.
    topics: Vec<String>,
    /// The last stable offset (read_committed's end) of each partition fetched, by topic and partition.
    pub(crate) ends: Mutex<HashMap<(String, i32), i64>>,
}

impl ClientContext for InputContext {
    fn error(&self, error: KafkaError, reason: &str) {
        count_error("input", &error, reason);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut ends = self.ends.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for name in &self.topics {
            let Some(topic) = statistics.topics.get(name) else { continue };
            for (p, part) in &topic.partitions {
                // -1 stands for "not known yet" (and partition -1 for the topic's internal UA partition).
                let end = if part.ls_offset >= 0 { part.ls_offset } else { part.hi_offset };
                if *p >= 0 && end >= 0 {
                    ends.insert((name.clone(), *p), end);
                }
            }
        }
    }
}

impl ConsumerContext for InputContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts = tpl.elements().iter().map(|e| e.partition()).collect();
            self.events.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(Assignment::Revoked(parts));
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts = tpl.elements().iter().map(|e| e.partition()).collect();
                self.events.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(Assignment::Assigned(parts));
            }
            Rebalance::Error(e) => count_error("input", e, "rebalance"),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// The input consumer: the group's member, read_committed, offsets committed only through transactions.
pub(crate) fn input_consumer(cfg: &Config) -> Result<BaseConsumer<InputContext>, EngineError> {
    let mut c = consumer_config(cfg);
    c.set("group.id", &cfg.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // Eager: a partition is either ours or not, never half-moved while a batch is in flight.
        .set("partition.assignment.strategy", "range");
    if cfg.kafka.static_membership {
        c.set("group.instance.id", &cfg.kafka.instance_id);
    }
    if !cfg.kafka.options.contains_key("session.timeout.ms") {
        c.set("session.timeout.ms", "10000");
    }
    // Statistics carry each partition's end offset: the consumer lag metric.
    if !cfg.kafka.options.contains_key("statistics.interval.ms") {
        c.set("statistics.interval.ms", "5000");
    }
    // The person stage's topics are read only with several partitions; their statistics are absent otherwise.
    let topics = vec![cfg.topics.input.clone(), cfg.persons_repartition_topic(), cfg.accounts_repartition_topic()];
    let context = InputContext { topics, ..InputContext::default() };
    c.create_with_context(context).map_err(|e| kafka_error("creating the input consumer", e))
}

/// The reader's context: the end of a partition is what a reader waits for, not an error to log.
pub(crate) struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(error, KafkaError::PartitionEOF(_))
            || matches!(error, KafkaError::Global(rdkafka::error::RDKafkaErrorCode::PartitionEOF));
        if !eof {
            count_error("reader", &error, reason);
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// A consumer outside any group that reads assigned partitions to their end (restores, definitions).
pub(crate) fn reader(cfg: &Config) -> Result<BaseConsumer<ReaderContext>, EngineError> {
    let mut c = consumer_config(cfg);
    c.set("group.id", format!("{}.reader", cfg.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true");
    c.create_with_context(ReaderContext).map_err(|e| kafka_error("creating a reader", e))
}

/// The producer's context: the highest changelog offset delivered per partition, to know how far the local
/// stores are after a commit, and the records sent but not yet acknowledged, to wait for them without polling.
#[derive(Default)]
pub(crate) struct OutputContext {
    pub(crate) changelog_topic: String,
    pub(crate) delivered: Mutex<HashMap<i32, i64>>,
    pub(crate) failed: Mutex<Option<String>>,
    /// Records handed to the producer whose delivery report has not come yet.
    pending: Mutex<u64>,
    /// Signalled when `pending` reaches zero.
    settled: Condvar,
}

impl OutputContext {
    fn lock_pending(&self) -> std::sync::MutexGuard<'_, u64> {
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a record about to be sent (before the send: its report may come at once).
    pub(crate) fn sending(&self) {
        *self.lock_pending() += 1;
    }

    /// Uncounts a record whose send failed (no report will come).
    pub(crate) fn not_sent(&self) {
        let mut p = self.lock_pending();
        *p = p.saturating_sub(1);
    }

    /// Forgets records of an aborted transaction (their reports may still come; they count for nothing).
    pub(crate) fn reset(&self) {
        *self.lock_pending() = 0;
    }

    /// Waits until every record sent has its delivery report, or `timeout`; false on timeout.
    pub(crate) fn wait_delivered(&self, timeout: Duration) -> bool {
        let guard = self.lock_pending();
        let (guard, _) = self
            .settled
            .wait_timeout_while(guard, timeout, |p| *p > 0)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *guard == 0
    }
}

impl ClientContext for OutputContext {
    fn error(&self, error: KafkaError, reason: &str) {
        count_error("output", &error, reason);
    }
}

impl ProducerContext for OutputContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        {
            let mut p = self.lock_pending();
            *p = p.saturating_sub(1);
            if *p == 0 {
                self.settled.notify_all();
            }
        }
        match result {
            Ok(m) if m.topic() == self.changelog_topic => {
                let mut d = self.delivered.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let e = d.entry(m.partition()).or_insert(-1);
                *e = (*e).max(m.offset());
            }
            Ok(_) => {}
            Err((e, m)) => {
                count_error("output", e, "delivery");
                let mut f = self.failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                f.get_or_insert_with(|| format!("delivery to {} failed: {e}", m.topic()));
            }
        }
    }
}

/// The transactional producer of this instance (its transactional id is the instance id unless configured
/// apart: a restarted instance fences its former self). A `ThreadedProducer`: its thread serves the delivery
/// reports as they come, and the service waits for them on [`OutputContext::wait_delivered`].
/// (rust-rdkafka's `BaseProducer::poll` rounds its timeout down to whole milliseconds and loops until its
/// deadline, so polling for reports on the service thread either spins or waits out the whole timeout.)
pub(crate) fn producer(cfg: &Config) -> Result<ThreadedProducer<OutputContext>, EngineError> {
    let mut c = client_config(cfg);
    c.set("transactional.id", cfg.kafka.transactional_id())
        .set("enable.idempotence", "true")
        .set("linger.ms", cfg.kafka.options.get("linger.ms").map_or("1", String::as_str))
        .set("queue.buffering.max.messages", "1000000");
    // A transaction that starts right after the previous commit may be told CONCURRENT_TRANSACTIONS until the
    // broker has written the commit markers; librdkafka's default 100 ms retry backoff then becomes latency.
    if !cfg.kafka.options.contains_key("retry.backoff.ms") {
        c.set("retry.backoff.ms", "5");
    }
    let ctx = OutputContext { changelog_topic: cfg.changelog_topic(), ..OutputContext::default() };
    let p: ThreadedProducer<OutputContext> =
        c.create_with_context(ctx).map_err(|e| kafka_error("creating the producer", e))?;
    use rdkafka::producer::Producer;
    p.init_transactions(REQUEST_TIMEOUT).map_err(|e| {
        kafka_error("initializing transactions (fencing any previous instance with this transactional id)", e)
    })?;
    Ok(p)
}

/// Assigns a reader to one partition from `offset` (it keeps reading there).
pub(crate) fn assign_from(
    reader: &BaseConsumer<ReaderContext>,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<(), EngineError> {
    let mut tpl = TopicPartitionList::new();
    let start = if offset <= 0 { Offset::Beginning } else { Offset::Offset(offset) };
    tpl.add_partition_offset(topic, partition, start).map_err(|e| kafka_error("assigning", e))?;
    reader.assign(&tpl).map_err(|e| kafka_error(&format!("assigning {topic}/{partition}"), e))
}

/// Reads one partition from `from` to its end (the last stable offset): calls `each(key, value, offset)`.
/// Returns the offset after the last record read (`from` when there was none).
pub(crate) fn read_to_end(
    reader: &BaseConsumer<ReaderContext>,
    topic: &str,
    partition: i32,
    from: i64,
    mut each: impl FnMut(&[u8], Option<&[u8]>, i64) -> Result<(), EngineError>,
) -> Result<i64, EngineError> {
    assign_from(reader, topic, partition, from)?;
    let mut next = from.max(0);
    let mut last_progress = Instant::now();
    loop {
        match reader.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                each(m.key().unwrap_or_default(), m.payload(), m.offset())?;
                next = m.offset() + 1;
                last_progress = Instant::now();
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => return Err(kafka_error(&format!("reading {topic}/{partition}"), e)),
            None if last_progress.elapsed() > REQUEST_TIMEOUT * 4 => {
                return Err(EngineError::Invalid(format!(
                    "kafka: reading {topic}/{partition} made no progress for {:?}",
                    REQUEST_TIMEOUT * 4
                )));
            }
            None => {}
        }
    }
    reader.unassign().map_err(|e| kafka_error("unassigning", e))?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn needed(pairs: &[(&str, &str)]) -> Vec<&'static str> {
        let options: BTreeMap<String, String> = pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        needed_features(&options).into_iter().map(|(f, _)| f).collect()
    }

    #[test]
    fn the_features_a_configuration_needs_follow_its_security_options_and_every_codec() {
        assert_eq!(needed(&[]), ["gzip", "snappy", "lz4", "zstd"], "input may come compressed with any codec");
        assert_eq!(needed(&[("security.protocol", "SSL")])[4..], ["ssl"]);
        assert_eq!(
            needed(&[("security.protocol", "SASL_PLAINTEXT"), ("sasl.mechanisms", "PLAIN")])[4..],
            ["sasl_plain"]
        );
        assert_eq!(
            needed(&[("security.protocol", "SASL_SSL"), ("sasl.mechanism", "SCRAM-SHA-512")])[4..],
            ["ssl", "sasl_scram"]
        );
        assert_eq!(needed(&[("sasl.mechanisms", "GSSAPI, OAUTHBEARER")])[4..], ["sasl_gssapi", "sasl_oauthbearer"]);
    }

    /// This build has what a platform's cluster needs, short of Kerberos (a cargo feature of its own).
    #[test]
    fn this_build_has_tls_scram_and_every_codec() {
        let mut cfg = Config::default();
        for (k, v) in [("security.protocol", "SASL_SSL"), ("sasl.mechanisms", "SCRAM-SHA-256")] {
            cfg.kafka.options.insert(k.into(), v.into());
        }
        check_features(&cfg).expect("TLS, SCRAM and every codec are built in");
        cfg.kafka.options.insert("sasl.mechanisms".into(), "GSSAPI".into());
        let result = check_features(&cfg);
        if cfg!(feature = "gssapi") {
            result.expect("built with gssapi");
        } else {
            let e = result.expect_err("no Kerberos without the feature").to_string();
            assert!(e.contains("sasl_gssapi") && e.contains("--features gssapi"), "{e}");
        }
    }
}
