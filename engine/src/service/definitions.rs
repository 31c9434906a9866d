//! The definitions topic: published journeys, buying group templates and stops, shared by every instance.
//!
//! It owns the topic's record format and the in-memory [`Definitions`] built from it. Keys name what a record
//! is (`journey/<tenant>/<id>/<version>`, `template/<tenant>/<id>/<version>`, `stop/<tenant>/<journey>`), so the
//! compacted topic keeps every version ever published and the latest stop of each journey. Values are the
//! documents as JSON text, and for a stop the newest version it applies to. The topic is the only source of
//! definitions in Kafka mode: an instance reads it whole at start and keeps reading it between batches. It
//! never applies a publication to accounts: partition tasks do, each exactly once (their progress records the
//! offset they reached).

use super::kafka::{self, REQUEST_TIMEOUT};
use crate::EngineError;
use crate::config::Config;
use caravan_operators::account::Definitions;
use caravan_operators::buying_group::Template;
use caravan_operators::journey::Journey;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use std::sync::Arc;

/// One applied record of the topic.
#[derive(Clone)]
pub(crate) enum Published {
    Journey(Arc<Journey>),
    Template(Arc<Template>),
    Stop { tenant: String, journey: String },
}

/// The topic as read so far.
pub(crate) struct Feed {
    reader: BaseConsumer<kafka::ReaderContext>,
    topic: String,
    pub(crate) defs: Arc<Definitions>,
    /// The next offset to read.
    pub(crate) next: i64,
    /// What each offset published, for partition tasks that have not applied it yet.
    pub(crate) log: Vec<(i64, Published)>,
}

impl Feed {
    /// Opens the topic and reads it to its end.
    ///
    /// # Errors
    /// The topic cannot be read.
    pub(crate) fn open(cfg: &Config) -> Result<Feed, EngineError> {
        let mut feed = Feed {
            reader: kafka::reader(cfg)?,
            topic: cfg.topics.definitions.clone(),
            defs: Arc::new(Definitions::default()),
            next: 0,
            log: Vec::new(),
        };
        feed.read_from(0)?;
        Ok(feed)
    }

    /// Reads the topic from `from` to its end and applies what it holds; true when there was something.
    fn read_from(&mut self, from: i64) -> Result<bool, EngineError> {
        let mut records = Vec::new();
        let next = kafka::read_to_end(&self.reader, &self.topic, 0, from, |k, v, offset| {
            records.push((String::from_utf8_lossy(k).into_owned(), v.map(<[u8]>::to_vec), offset));
            Ok(())
        })?;
        self.next = self.next.max(next);
        let any = !records.is_empty();
        self.apply_all(records);
        Ok(any)
    }

    /// Takes what was published since the last call; true when something was. It asks the broker where the
    /// topic ends (one request) and reads only when that moved: a reader left on an idle partition fetches
    /// all the time (on Kafka a request per `fetch.wait.max.ms`; the bundled test broker answers empty fetches
    /// at once, so there it spins).
    ///
    /// # Errors
    /// The topic cannot be read.
    pub(crate) fn catch_up(&mut self) -> Result<bool, EngineError> {
        let (_, end) = self
            .reader
            .fetch_watermarks(&self.topic, 0, REQUEST_TIMEOUT)
            .map_err(|e| kafka::kafka_error("reading where the definitions topic ends", e))?;
        if end <= self.next {
            return Ok(false);
        }
        let any = self.read_from(self.next)?;
        // Read to its end: compaction may have left nothing below `end` to read.
        self.next = self.next.max(end);
        Ok(any)
    }

    fn apply_all(&mut self, records: Vec<(String, Option<Vec<u8>>, i64)>) {
        if records.is_empty() {
            return;
        }
        let defs = Arc::make_mut(&mut self.defs);
        for (key, value, offset) in records {
            match apply(defs, &key, value.as_deref()) {
                Ok(Some(p)) => self.log.push((offset, p)),
                Ok(None) => {}
                Err(e) => tracing::error!(key, offset, error = %e, "Ignoring a definitions record."),
            }
        }
    }
}

/// Applies one record to the definitions.
///
/// # Errors
/// [`EngineError::Invalid`] for a record that is not a publication or a stop (named in the text).
fn apply(defs: &mut Definitions, key: &str, value: Option<&[u8]>) -> Result<Option<Published>, EngineError> {
    let Some(value) = value else { return Ok(None) };
    let text = std::str::from_utf8(value).map_err(|_| EngineError::Invalid("the value is not UTF-8".to_owned()))?;
    let parts: Vec<&str> = key.split('/').collect();
    match parts.as_slice() {
        ["journey" | "template", ..] => {
            let before: Vec<_> = defs.all().cloned().collect();
            let before_t: Vec<_> = defs.all_templates().cloned().collect();
            crate::definitions::publish_text(defs, text).map_err(|p| EngineError::Invalid(p.join("; ")))?;
            let new_j = defs.all().find(|j| !before.iter().any(|b| Arc::ptr_eq(b, j))).cloned();
            let new_t = defs.all_templates().find(|t| !before_t.iter().any(|b| Arc::ptr_eq(b, t))).cloned();
            Ok(new_j.map(Published::Journey).or(new_t.map(Published::Template)))
        }
        ["stop", tenant, journey] => {
            let version: u32 =
                text.trim().parse().map_err(|_| EngineError::Invalid(format!("bad stop version `{text}`")))?;
            defs.restore_stop(tenant, journey, version);
            Ok(Some(Published::Stop { tenant: (*tenant).to_owned(), journey: (*journey).to_owned() }))
        }
        _ => Err(EngineError::Invalid(format!("unknown definitions key `{key}`"))),
    }
}

fn write(cfg: &Config, records: &[(String, String)]) -> Result<(), EngineError> {
    let mut c = kafka::client_config(cfg);
    c.set("enable.idempotence", "true").set("acks", "all");
    let producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext> =
        c.create().map_err(|e| kafka::kafka_error("creating a producer", e))?;
    for (key, value) in records {
        producer
            .send(BaseRecord::to(&cfg.topics.definitions).key(key).payload(value).partition(0))
            .map_err(|(e, _)| kafka::kafka_error("publishing", e))?;
    }
    producer.flush(REQUEST_TIMEOUT).map_err(|e| kafka::kafka_error("publishing", e))
}

/// `caravan publish`: checks the documents against what the topic holds (a version published with another
/// document is refused), then writes the new ones. Returns the keys written.
///
/// # Errors
/// [`EngineError::Invalid`] listing conflicts; a broker failure.
pub fn publish(cfg: &Config, defs: &Definitions) -> Result<Vec<String>, EngineError> {
    super::topics::ensure_definitions_topic(cfg)?;
    let mut feed = Feed::open(cfg)?;
    let current = Arc::make_mut(&mut feed.defs);
    let mut problems = Vec::new();
    let registered = |tenant: &str| cfg.tenants.is_empty() || cfg.tenants.iter().any(|t| t.id == tenant);
    for tenant in defs.all().map(|j| &j.tenant).chain(defs.all_templates().map(|t| &t.tenant)) {
        if !registered(tenant) {
            problems.push(format!("tenant `{tenant}` is not in the tenant registry (unknown_tenant)"));
        }
    }
    problems.dedup();
    let mut records = Vec::new();
    for j in defs.all() {
        let known = current.get(&j.tenant, &j.id, j.version).is_some();
        match current.publish((**j).clone()) {
            Ok(()) if !known => {
                records.push((format!("journey/{}/{}/{}", j.tenant, j.id, j.version), j.document.to_string()));
            }
            Ok(()) => {}
            Err(e) => problems.push(e.to_string()),
        }
    }
    for t in defs.all_templates() {
        let known = current.all_templates().any(|x| x.tenant == t.tenant && x.id == t.id && x.version == t.version);
        match current.publish_template((**t).clone()) {
            Ok(()) if !known => {
                records.push((format!("template/{}/{}/{}", t.tenant, t.id, t.version), t.document.to_string()));
            }
            Ok(()) => {}
            Err(e) => problems.push(e.to_string()),
        }
    }
    if !problems.is_empty() {
        return Err(EngineError::Invalid(problems.join("\n")));
    }
    // Templates first, so that a journey published with its template finds the groups.
    records.sort_by_key(|(k, _)| !k.starts_with("template/"));
    write(cfg, &records)?;
    Ok(records.into_iter().map(|(k, _)| k).collect())
}

/// `caravan stop` in Kafka mode: records a stop of the journey's newest version. Returns that version.
///
/// # Errors
/// A journey the topic never published; a broker failure.
pub fn stop(cfg: &Config, tenant: &str, journey: &str) -> Result<u32, EngineError> {
    super::topics::ensure_definitions_topic(cfg)?;
    let mut feed = Feed::open(cfg)?;
    let Some(version) = Arc::make_mut(&mut feed.defs).stop(tenant, journey) else {
        return Err(EngineError::Invalid(format!("tenant `{tenant}` has published no journey `{journey}`")));
    };
    write(cfg, &[(format!("stop/{tenant}/{journey}"), version.to_string())])?;
    Ok(version)
}
