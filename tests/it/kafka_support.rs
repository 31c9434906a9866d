//! Helpers of the Kafka tests: a broker named only by its bootstrap address (`KAFKA_BOOTSTRAP`, set by
//! `ops/test.sh` after it starts one), topics with random names, producing input, reading outputs back with a
//! read_committed consumer, and running `caravan run` instances.

use crate::support::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

/// The broker's bootstrap address.
pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| {
        panic!("KAFKA_BOOTSTRAP is not set: start a broker (bash ops/kafka-broker.sh start) or run ops/test.sh")
    })
}

fn block_on<F: Future>(fut: F) -> F::Output {
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
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park_timeout(Duration::from_millis(50));
    }
}

/// One test's names on the broker: topics, group and instance ids, all with a random prefix.
pub struct Cluster {
    pub prefix: String,
    pub partitions: usize,
    pub config: PathBuf,
}

impl Cluster {
    /// A fresh namespace with an input topic of `partitions` partitions and a configuration file in `dir`.
    pub fn new(dir: &Path, partitions: usize) -> Cluster {
        let prefix = format!("t{:016x}", rand::random::<u64>());
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", bootstrap()).create().expect("admin client");
        let input = format!("{prefix}.input");
        let topic = NewTopic::new(&input, partitions as i32, TopicReplication::Fixed(1));
        let res = block_on(admin.create_topics([&topic], &AdminOptions::new())).expect("create topics");
        for r in res {
            r.expect("input topic created");
        }
        let config = dir.join(format!("{prefix}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"[kafka]
brokers = "{}"
group_id = "{prefix}"
instance_id = "{prefix}-0"
options = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "1000", "max.poll.interval.ms" = "10000" }}

[topics]
input = "{prefix}.input"
definitions = "{prefix}.definitions"
actions = "{prefix}.actions"
changes = "{prefix}.changes"
rejected = "{prefix}.rejected"

[commit]
interval = "20ms"
max_records = 5000

[log]
level = "info"
"#,
                bootstrap()
            ),
        )
        .expect("write config");
        Cluster { prefix, partitions, config }
    }

    pub fn topic(&self, role: &str) -> String {
        format!("{}.{role}", self.prefix)
    }

    /// Runs `caravan ARGS --config <this cluster's>` to completion.
    pub fn caravan(&self, args: &[&str]) -> std::process::Output {
        let out = Command::new(caravan_bin())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "warn")
            .output()
            .expect("caravan runs");
        assert!(
            out.status.success(),
            "caravan {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Starts `caravan run` as instance `n` with its own state folder and admin port 0 (no clash).
    pub fn start(&self, n: usize, state: &Path, log: &Path) -> Child {
        self.start_with(n, state, log, &[])
    }

    /// [`Cluster::start`] with more environment (configuration overrides).
    pub fn start_with(&self, n: usize, state: &Path, log: &Path, env: &[(&str, &str)]) -> Child {
        let log = std::fs::File::create(log).expect("log file");
        Command::new(caravan_bin())
            .envs(env.iter().copied())
            .args(["run", "--config"])
            .arg(&self.config)
            .env("CARAVAN_KAFKA__INSTANCE_ID", format!("{}-{n}", self.prefix))
            .env("CARAVAN_STATE__DIR", state)
            .env("CARAVAN_ADMIN__LISTEN", "127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("caravan run starts")
    }

    /// Fences the producers of a transactional id, as a restart with that id would: the broker aborts its open
    /// transaction, if any, and refuses the former producer from then on.
    pub fn fence(&self, transactional_id: &str) {
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("transactional.id", transactional_id)
            .create()
            .expect("producer");
        producer.init_transactions(Duration::from_secs(30)).expect("the former producer is fenced");
    }

    /// Records of a topic that a read_committed consumer does not see: those of aborted transactions, and of
    /// an open one (with everything after it).
    pub fn invisible_records(&self, role: &str) -> usize {
        // Read first: a commit between the two reads then makes the difference smaller, never negative.
        let committed = self.read_all(role, "read_committed").len();
        self.read_all(role, "read_uncommitted").len().saturating_sub(committed)
    }

    /// Produces the lines of an NDJSON file to the input topic, keyed by the account they name (else the
    /// person, else the opportunity): the platform's partitioning.
    pub fn produce_file(&self, input: &Path) -> u64 {
        let text = std::fs::read_to_string(input).expect("input");
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        self.produce(&lines)
    }

    pub fn produce(&self, lines: &[&str]) -> u64 {
        let keyed: Vec<(String, &str)> = lines
            .iter()
            .map(|line| {
                let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
                let key = v["account_id"].as_str().or(v["person_id"].as_str()).or(v["opportunity_id"].as_str());
                (key.unwrap_or("").to_owned(), *line)
            })
            .collect();
        self.produce_keyed(&keyed)
    }

    /// Produces `(key, value)` records to the input topic.
    pub fn produce_keyed(&self, records: &[(String, &str)]) -> u64 {
        self.produce_keyed_with(records, "none")
    }

    /// Produces lines as [`Cluster::produce`] does, in batches compressed with `codec` (`gzip`, `zstd`, `lz4`,
    /// `snappy`), as a platform's producer may.
    pub fn produce_compressed(&self, lines: &[&str], codec: &str) -> u64 {
        let keyed: Vec<(String, &str)> = lines
            .iter()
            .map(|line| {
                let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
                (v["account_id"].as_str().or(v["person_id"].as_str()).unwrap_or("").to_owned(), *line)
            })
            .collect();
        self.produce_keyed_with(&keyed, codec)
    }

    fn produce_keyed_with(&self, records: &[(String, &str)], codec: &str) -> u64 {
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("compression.codec", codec)
            .create()
            .expect("producer");
        let topic = self.topic("input");
        for (key, line) in records {
            let mut rec = BaseRecord::to(&topic).key(key).payload(*line);
            loop {
                match producer.send(rec) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        rec = r;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        }
        producer.flush(Duration::from_secs(60)).expect("flush");
        records.len() as u64
    }

    /// A consumer of the service's group that never joins it: to read and set the group's offsets.
    fn group_client(&self) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("group.id", &self.prefix)
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer")
    }

    /// Commits `offset` for the group on input partition `partition`, as the group's offset tools do while no
    /// member runs (to skip input on purpose).
    pub fn commit_offset(&self, partition: i32, offset: i64) {
        let c = self.group_client();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic("input"), partition, Offset::Offset(offset)).expect("tpl");
        c.commit(&tpl, rdkafka::consumer::CommitMode::Sync).expect("offset committed");
    }

    /// The offsets the group has committed, summed over the input partitions.
    pub fn committed(&self) -> i64 {
        let c = self.group_client();
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition(&self.topic("input"), p as i32);
        }
        match c.committed_offsets(tpl, Duration::from_secs(10)) {
            Ok(t) => t.elements().iter().map(|e| if let Offset::Offset(o) = e.offset() { o } else { 0 }).sum(),
            Err(_) => 0,
        }
    }

    /// The input's end offsets summed (what the group must reach).
    pub fn input_end(&self) -> i64 {
        let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap()).create().expect("consumer");
        (0..self.partitions as i32)
            .map(|p| c.fetch_watermarks(&self.topic("input"), p, Duration::from_secs(10)).expect("watermarks").1)
            .sum()
    }

    /// Waits until the group has committed the whole input, and with several partitions until the person
    /// stage has nothing left either (records held for a claim apply only once its answer is consumed).
    pub fn wait_caught_up(&self, timeout: Duration) {
        if self.partitions > 1 {
            return self.wait_quiet(timeout);
        }
        let end = self.input_end();
        let t = Instant::now();
        while self.committed() < end {
            assert!(t.elapsed() < timeout, "the service did not commit the input within {timeout:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Reads an output topic whole with a read_committed consumer.
    pub fn read_committed(&self, role: &str) -> Vec<Value> {
        self.read_all(role, "read_committed")
            .iter()
            .map(|payload| serde_json::from_slice(payload).expect("JSON"))
            .collect()
    }

    /// The payloads of a topic, every partition from its start, at an isolation level.
    fn read_all(&self, role: &str, isolation: &str) -> Vec<Vec<u8>> {
        let topic = self.topic(role);
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("group.id", format!("{}.check", self.prefix))
            .set("isolation.level", isolation)
            .set("enable.partition.eof", "true")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let md = c.fetch_metadata(Some(&topic), Duration::from_secs(10)).expect("metadata");
        let parts = md.topics().first().map_or(0, |t| t.partitions().len());
        let mut out = Vec::new();
        for p in 0..parts as i32 {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, p, Offset::Beginning).expect("tpl");
            c.assign(&tpl).expect("assign");
            loop {
                match c.poll(Duration::from_secs(10)) {
                    Some(Ok(m)) => out.push(m.payload().unwrap_or_default().to_vec()),
                    Some(Err(KafkaError::PartitionEOF(_))) => break,
                    Some(Err(e)) => panic!("reading {topic}: {e}"),
                    None => panic!("reading {topic}/{p}: no end within 10 s"),
                }
            }
        }
        out
    }

    /// Writes the committed outputs as a replay's three files, so replay helpers can read them.
    pub fn outputs_to(&self, dir: &Path) {
        std::fs::create_dir_all(dir).expect("dir");
        for (role, file) in
            [("actions", "actions.ndjson"), ("changes", "changes.ndjson"), ("rejected", "rejected.ndjson")]
        {
            let mut text = String::new();
            for v in self.read_committed(role) {
                text.push_str(&v.to_string());
                text.push('\n');
            }
            std::fs::write(dir.join(file), text).expect("write");
        }
    }
}

/// The admin port an instance chose (it says where on standard error, in its log).
pub fn admin_port(log: &Path) -> u16 {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let port = text
            .lines()
            .find_map(|l| l.split("admin endpoints on http://").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|addr| addr.rsplit(':').next())
            .and_then(|p| p.parse().ok());
        if let Some(p) = port {
            return p;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no admin address in {}:\n{text}", log.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends SIGTERM and waits for the exit status.
pub fn terminate(mut child: Child) -> std::process::ExitStatus {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("status") {
            return s;
        }
        if t.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("caravan run did not stop within 60 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Records grouped by account, each account's in their order.
pub fn by_account(records: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut m: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in records {
        m.entry(r["account_id"].as_str().unwrap_or_default().to_owned()).or_default().push(r.clone());
    }
    m
}

impl Cluster {
    /// A producer of records to chosen partitions of the input topic, kept for many batches (making one
    /// costs a round of requests).
    pub fn partition_producer(&self) -> PartitionProducer {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("enable.idempotence", "true")
            .set("linger.ms", "0")
            .create()
            .expect("producer");
        PartitionProducer { producer, topic: self.topic("input") }
    }

    /// The name of one of the person stage's internal topics (`persons` or `accounts`): the engine's default,
    /// `<group>.<stage>-repartition` (the group id is the cluster's prefix).
    pub fn stage_topic(&self, stage: &str) -> String {
        self.topic(&format!("{stage}-repartition"))
    }

    /// Waits until the group has committed every input partition to its end (each partition, not the sum).
    pub fn wait_input_committed(&self, timeout: Duration) {
        let probe = Probe::new(self);
        let input = self.topic("input");
        let started = Instant::now();
        while !probe.caught_up(&input) {
            assert!(started.elapsed() < timeout, "the service did not commit the input within {timeout:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the service has processed everything produced so far and stopped writing: the group has
    /// committed the whole input, it has consumed every record of the person stage's two topics, and
    /// neither its offsets nor the end of any output topic or the changelog moved in 200 ms (checked twice in
    /// a row, so that a record one stage sent to the other while this looked is seen). In event time nothing
    /// happens without input, so the service then stays quiet until more input comes.
    pub fn wait_quiet(&self, timeout: Duration) {
        let probe = Probe::new(self);
        let started = Instant::now();
        let mut topics = vec![self.topic("input")];
        if self.partitions > 1 {
            topics.extend([self.stage_topic("persons"), self.stage_topic("accounts")]);
        }
        let outputs: Vec<String> = ["actions", "changes", "rejected", "changelog"].map(|r| self.topic(r)).into();
        let mut previous = None;
        loop {
            // The stage's topics only once the service has committed input: it has created its topics by then
            // (asking about a topic before could make a broker that creates topics on demand create it wrong).
            // In this order: each stage's records are committed with the offsets of what caused them.
            // And no transaction of the service open on any topic it writes.
            let quiet = probe.caught_up(&topics[0])
                && topics[1..].iter().all(|t| probe.unconsumed(t) == Some(0))
                && topics[1..].iter().chain(&outputs).all(|t| !probe.in_transaction(t));
            let snapshot = quiet.then(|| {
                let mut s: Vec<i64> = topics.iter().flat_map(|t| probe.committed(t)).collect();
                s.extend(outputs.iter().flat_map(|t| probe.ends(t)));
                s
            });
            if snapshot.is_some() && snapshot == previous {
                return;
            }
            previous = snapshot;
            assert!(started.elapsed() < timeout, "the service did not settle within {timeout:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// See [`Cluster::partition_producer`].
pub struct PartitionProducer {
    producer: ThreadedProducer<DefaultProducerContext>,
    topic: String,
}

impl PartitionProducer {
    /// Produces `(partition, key, value)` records, each to the partition it names (not the one its key would
    /// hash to), and waits until the broker has them all: the records of one partition keep their order.
    pub fn produce(&self, records: &[(i32, String, String)]) {
        for (partition, key, line) in records {
            let mut rec = BaseRecord::to(&self.topic).key(key.as_str()).payload(line.as_str()).partition(*partition);
            loop {
                match self.producer.send(rec) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        rec = r;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        }
        // Not `flush`: rust-rdkafka's waits in steps of 100 ms.
        let started = Instant::now();
        while self.producer.in_flight_count() > 0 {
            assert!(started.elapsed() < Duration::from_secs(60), "the broker did not take the records within 60 s");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Clients that look at a cluster's topics and its group's offsets, made once for many looks.
struct Probe {
    partitions: usize,
    /// Of the service's group, never joining it: reads its committed offsets.
    group: BaseConsumer,
    /// Outside any group: end offsets.
    plain: BaseConsumer,
    /// read_committed, reporting the end of each partition: what the group has not consumed yet.
    reader: BaseConsumer,
}

impl Probe {
    fn new(cluster: &Cluster) -> Probe {
        let client = |group: String, isolation: &str| -> BaseConsumer {
            ClientConfig::new()
                .set("bootstrap.servers", bootstrap())
                .set("group.id", group)
                .set("isolation.level", isolation)
                .set("enable.partition.eof", "true")
                .set("enable.auto.commit", "false")
                .create()
                .expect("consumer")
        };
        Probe {
            partitions: cluster.partitions,
            group: cluster.group_client(),
            plain: client(format!("{}.probe", cluster.prefix), "read_uncommitted"),
            reader: client(format!("{}.probe", cluster.prefix), "read_committed"),
        }
    }

    /// The group's committed offset of every partition of `topic` (0 where it committed none, or when the
    /// broker cannot say: callers wait for more).
    fn committed(&self, topic: &str) -> Vec<i64> {
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition(topic, p as i32);
        }
        let committed = self.group.committed_offsets(tpl, Duration::from_secs(10)).unwrap_or_default();
        (0..self.partitions as i32)
            .map(|p| match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => 0,
            })
            .collect()
    }

    /// The end offset of every partition of `topic` (0 where the broker cannot say).
    fn ends(&self, topic: &str) -> Vec<i64> {
        (0..self.partitions as i32)
            .map(|p| self.plain.fetch_watermarks(topic, p, Duration::from_secs(10)).map_or(0, |w| w.1))
            .collect()
    }

    /// Whether a transaction is open on a partition of `topic`: its last stable offset (the end a
    /// read_committed client is told) is behind its end.
    fn in_transaction(&self, topic: &str) -> bool {
        (0..self.partitions as i32).any(|p| {
            let stable = self.reader.fetch_watermarks(topic, p, Duration::from_secs(10)).map_or(0, |w| w.1);
            stable < self.plain.fetch_watermarks(topic, p, Duration::from_secs(10)).map_or(0, |w| w.1)
        })
    }

    /// Whether the group has committed every partition of `topic` (written outside transactions) to its end.
    fn caught_up(&self, topic: &str) -> bool {
        self.committed(topic).iter().zip(&self.ends(topic)).all(|(c, e)| c >= e)
    }

    /// How many records of `topic` a read_committed consumer sees at or after the group's committed offsets:
    /// those the group has not consumed yet. (Committed offsets never reach the end offsets of a topic written
    /// in transactions, as the person stage's are: each transaction ends with a commit marker, which takes an
    /// offset.) `None` while the topic does not exist.
    fn unconsumed(&self, topic: &str) -> Option<usize> {
        let md = self.reader.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
        if md.topics().first().map_or(0, |t| t.partitions().len()) != self.partitions {
            return None;
        }
        let mut tpl = TopicPartitionList::new();
        for (p, offset) in self.committed(topic).into_iter().enumerate() {
            let from = if offset > 0 { Offset::Offset(offset) } else { Offset::Beginning };
            tpl.add_partition_offset(topic, p as i32, from).expect("tpl");
        }
        self.reader.assign(&tpl).expect("assign");
        let (mut seen, mut ended) = (0, std::collections::BTreeSet::new());
        while ended.len() < self.partitions {
            match self.reader.poll(Duration::from_secs(10)) {
                Some(Ok(_)) => seen += 1,
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    ended.insert(p);
                }
                Some(Err(e)) => panic!("reading {topic}: {e}"),
                None => panic!("reading {topic}: no end within 10 s"),
            }
        }
        self.reader.unassign().expect("unassign");
        Some(seen)
    }
}
