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
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
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

    /// Waits until the group has committed the whole input.
    pub fn wait_caught_up(&self, timeout: Duration) {
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
