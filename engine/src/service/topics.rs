//! The topics a run reads and writes: created when missing, their partition counts checked against the
//! input's. It never reads or writes records.

use super::kafka::{self, REQUEST_TIMEOUT};
use crate::EngineError;
use crate::config::Config;
use rdkafka::consumer::BaseConsumer;
use std::time::{Duration, Instant};

/// Checks the build against the options, then creates the definitions topic when missing (`caravan publish`
/// and `caravan stop` start here).
pub(super) fn ensure_definitions_topic(cfg: &Config) -> Result<(), EngineError> {
    kafka::check_features(cfg)?;
    kafka::ensure_topics(cfg, &[(cfg.topics.definitions.clone(), 1, true)])
}

/// What [`ensure_topics`] found.
pub(super) struct RunTopics {
    /// Partitions of the input (and of the changelog and the stage's topics).
    pub(super) partitions: usize,
    pub(super) changelog: String,
    /// The person stage's topics (persons, accounts), with several partitions.
    pub(super) stage: Option<(String, String)>,
}

/// The topics a run reads and writes, created when missing: the input's partition count, the changelog and,
/// with several partitions, the person stage's two topics. Refuses topics whose partition counts do not fit.
pub(super) fn ensure_topics<C: rdkafka::consumer::ConsumerContext>(
    cfg: &Config,
    consumer: &BaseConsumer<C>,
) -> Result<RunTopics, EngineError> {
    if kafka::partitions_of(consumer, &cfg.topics.input)?.is_none() {
        kafka::ensure_topics(cfg, &[(cfg.topics.input.clone(), cfg.topics.partitions, false)])?;
    }
    // A topic just created may take a moment to show in the metadata.
    let asked = Instant::now();
    let partitions = loop {
        match kafka::partitions_of(consumer, &cfg.topics.input)? {
            Some(n) => break n,
            None if asked.elapsed() < REQUEST_TIMEOUT => std::thread::sleep(Duration::from_millis(200)),
            None => {
                return Err(EngineError::Invalid(format!(
                    "kafka: the input topic `{}` does not exist and could not be created",
                    cfg.topics.input
                )));
            }
        }
    };
    let changelog = cfg.changelog_topic();
    let stage_topics = (partitions > 1).then(|| (cfg.persons_repartition_topic(), cfg.accounts_repartition_topic()));
    let mut topics = vec![
        (changelog.clone(), partitions, true),
        (cfg.topics.actions.clone(), partitions, false),
        (cfg.topics.changes.clone(), partitions, false),
        (cfg.topics.rejected.clone(), partitions, false),
        (cfg.topics.definitions.clone(), 1, true),
    ];
    if let Some((persons, accounts)) = &stage_topics {
        topics.push((persons.clone(), partitions, false));
        topics.push((accounts.clone(), partitions, false));
    }
    kafka::ensure_topics(cfg, &topics)?;
    let mut partitioned = vec![(&changelog, "the changelog keeps one partition per input partition")];
    if let Some((persons, accounts)) = &stage_topics {
        let why = "a task reads the same partition number of the input and of the person stage's topics";
        partitioned.extend([(persons, why), (accounts, why)]);
    }
    for (topic, why) in partitioned {
        let n = kafka::partitions_of(consumer, topic)?.unwrap_or(0);
        let fits = if topic == &changelog { n >= partitions } else { n == partitions };
        if !fits {
            return Err(EngineError::Invalid(format!(
                "kafka: `{topic}` has {n} partitions but the input has {partitions}: they must match ({why})"
            )));
        }
    }
    Ok(RunTopics { partitions, changelog, stage: stage_topics })
}
