//! Kafka-mode latency: feeds the input topic at steady rates and measures, for every input record that causes
//! an output, the time from its append to its first output becoming visible to a read_committed consumer.
//!
//! It is a benchmark driver, not a test: `benches/kafka-latency/run.py` starts the broker and `caravan run`
//! and calls it. Records are the reference workload's lines, in order, continuing from one rate to the next.
//!
//! ```text
//! kafka-latency --bootstrap HOST:PORT --prefix P --input W.ndjson --rates 5000,10000,20000 --seconds 10
//! kafka-latency --bootstrap HOST:PORT --prefix P --moves 200 --partitions 2
//! ```
//!
//! With `--moves N` it measures what a person's move costs instead (ARCHITECTURE.md, "Claims"): it creates
//! accounts alternately on two input partitions, each with one person, then moves people one at a time (the
//! next starts when the last one's `update` is visible), alternately to an account on the other partition
//! (a claim through the person stage) and to one on the same partition (no claim), and prints both latencies:
//! append of the moving upsert to its `update` change event.

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Args {
    bootstrap: String,
    prefix: String,
    input: String,
    rates: Vec<u64>,
    seconds: u64,
    moves: usize,
    partitions: i32,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        bootstrap: String::new(),
        prefix: String::new(),
        input: String::new(),
        rates: vec![],
        seconds: 10,
        moves: 0,
        partitions: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--bootstrap" => a.bootstrap = value,
            "--prefix" => a.prefix = value,
            "--input" => a.input = value,
            "--rates" => {
                a.rates = value
                    .split(',')
                    .map(|r| r.parse().map_err(|_| format!("bad rate {r}")))
                    .collect::<Result<_, _>>()?;
            }
            "--seconds" => a.seconds = value.parse().map_err(|_| "bad --seconds".to_owned())?,
            "--moves" => a.moves = value.parse().map_err(|_| "bad --moves".to_owned())?,
            "--partitions" => a.partitions = value.parse().map_err(|_| "bad --partitions".to_owned())?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.moves > 0 && !a.bootstrap.is_empty() && !a.prefix.is_empty() && a.partitions >= 2 {
        return Ok(a);
    }
    if a.bootstrap.is_empty() || a.prefix.is_empty() || a.input.is_empty() || a.rates.is_empty() {
        return Err("usage: kafka-latency --bootstrap B --prefix P --input FILE --rates R1,R2 [--seconds S]".into());
    }
    Ok(a)
}

/// The event id of a line (without parsing the whole record).
fn event_id(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    v["event_id"].as_str().map(str::to_owned)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A read_committed consumer of the outputs, joined to its group before anything is sent (so that no output
/// is missed).
/// `reset`: where a new group starts (`latest`: outputs of earlier runs are not read; `earliest`: a fresh
/// prefix's every output, none missed while the group's first position is still being resolved).
fn output_consumer(a: &Args, topics: &[&str], reset: &str) -> Result<BaseConsumer, String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &a.bootstrap)
        .set("group.id", format!("{}.latency", a.prefix))
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", reset)
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .map_err(|e| e.to_string())?;
    consumer.subscribe(topics).map_err(|e| e.to_string())?;
    let joined = Instant::now();
    while consumer.assignment().map(|t| t.count()).unwrap_or(0) == 0 && joined.elapsed() < Duration::from_secs(30) {
        consumer.poll(Duration::from_millis(100));
    }
    Ok(consumer)
}

/// `--moves`: the latency of a person's move to an account on another partition (a claim) and on the same one.
fn moves(a: &Args) -> Result<(), String> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &a.bootstrap)
        .set("linger.ms", "0")
        .set("enable.idempotence", "true")
        .create()
        .map_err(|e| e.to_string())?;
    let changes = format!("{}.changes", a.prefix);
    let consumer = output_consumer(a, &[&changes], "earliest")?;
    let topic = format!("{}.input", a.prefix);
    // Account k lives on partition k % partitions: every record about it is sent there.
    let accounts = a.moves + 2;
    let partition_of = |k: usize| (k % a.partitions as usize) as i32;
    let send = |partition: i32, key: &str, line: &str| -> Result<(), String> {
        let mut rec = BaseRecord::to(&topic).key(key).payload(line).partition(partition);
        loop {
            match producer.send(rec) {
                Ok(()) => return Ok(()),
                Err((e, r)) if matches!(e.rdkafka_error_code(), Some(rdkafka::types::RDKafkaErrorCode::QueueFull)) => {
                    rec = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(e.to_string()),
            }
        }
    };
    let ts = "2026-01-01T00:00:00.000Z";
    for k in 0..accounts {
        let account = format!(
            r#"{{"tenant":"bench","type":"account.upserted","event_id":"a{k}","ts":"{ts}","account_id":"acc{k}","attributes":{{"n":{k}}}}}"#
        );
        send(partition_of(k), &format!("acc{k}"), &account)?;
        let person = format!(
            r#"{{"tenant":"bench","type":"person.upserted","event_id":"p{k}","ts":"{ts}","person_id":"per{k}","account_id":"acc{k}","attributes":{{"n":{k}}}}}"#
        );
        send(partition_of(k), &format!("acc{k}"), &person)?;
    }
    producer.flush(Duration::from_secs(30)).map_err(|e| e.to_string())?;
    // Waits for the change event caused by `event_id`; its latency from `sent`.
    let wait_for = |event_id: &str, sent: Instant| -> Option<Duration> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) {
                let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or_default();
                if v["cause_event_id"].as_str() == Some(event_id) {
                    return Some(sent.elapsed());
                }
            }
        }
        None
    };
    // The last setup record's change event: everything before it is applied.
    let last = format!("p{}", accounts - 1);
    wait_for(&last, Instant::now()).ok_or("the setup's last change never came")?;
    let (mut cross, mut same) = (Vec::new(), Vec::new());
    for i in 0..a.moves {
        // Person i moves from account i to i + 1 (another partition) or i + partitions (the same one).
        let to = if i % 2 == 0 { i + 1 } else { i + a.partitions as usize };
        let to = to.min(accounts - 1);
        let id = format!("m{i}");
        let line = format!(
            r#"{{"tenant":"bench","type":"person.upserted","event_id":"{id}","ts":"{ts}","person_id":"per{i}","account_id":"acc{to}","attributes":{{"n":{i}}}}}"#
        );
        let sent = Instant::now();
        // No flush: rust-rdkafka's flush waits in steps of up to 100 ms; the producer's thread sends at once.
        send(partition_of(to), &format!("acc{to}"), &line)?;
        let took = wait_for(&id, sent).ok_or_else(|| format!("move {id} never showed its update"))?;
        if partition_of(to) == partition_of(i) { same.push(took) } else { cross.push(took) }
    }
    println!("move,samples,p50_ms,p99_ms,max_ms");
    for (name, mut l) in [("other_partition", cross), ("same_partition", same)] {
        l.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{name},{},{:.1},{:.1},{:.1}",
            l.len(),
            ms(percentile(&l, 0.50)),
            ms(percentile(&l, 0.99)),
            ms(l.last().copied().unwrap_or_default())
        );
    }
    Ok(())
}

fn main() -> Result<(), String> {
    let a = args()?;
    if a.moves > 0 {
        return moves(&a);
    }
    let text = std::fs::read_to_string(&a.input).map_err(|e| format!("{}: {e}", a.input))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &a.bootstrap)
        .set("linger.ms", "1")
        .set("enable.idempotence", "true")
        .create()
        .map_err(|e| e.to_string())?;
    // Send time of every record (by event id), and the latency of its first output.
    let sent: Arc<Mutex<HashMap<String, (Instant, usize)>>> = Arc::new(Mutex::new(HashMap::new()));
    let latencies: Arc<Mutex<Vec<Vec<Duration>>>> = Arc::new(Mutex::new(vec![Vec::new(); a.rates.len()]));
    let done = Arc::new(AtomicBool::new(false));
    let topics = [format!("{}.actions", a.prefix), format!("{}.changes", a.prefix)];
    let consumer = output_consumer(&a, &[&topics[0], &topics[1]], "latest")?;
    let reader = {
        let (sent, latencies, done) = (Arc::clone(&sent), Arc::clone(&latencies), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut idle_since: Option<Instant> = None;
            loop {
                match consumer.poll(Duration::from_millis(50)) {
                    Some(Ok(m)) => {
                        idle_since = None;
                        let now = Instant::now();
                        let v: serde_json::Value =
                            serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or_default();
                        if let Some(cause) = v["cause_event_id"].as_str() {
                            let first = sent.lock().map(|mut s| s.remove(cause)).ok().flatten();
                            if let Some((at, step)) = first
                                && let Ok(mut l) = latencies.lock()
                            {
                                l[step].push(now - at);
                            }
                        }
                    }
                    _ if done.load(Ordering::Relaxed) => {
                        let idle = *idle_since.get_or_insert_with(Instant::now);
                        if idle.elapsed() > Duration::from_secs(3) {
                            return;
                        }
                    }
                    _ => {}
                }
            }
        })
    };
    let topic = format!("{}.input", a.prefix);
    let mut next = 0usize;
    let mut achieved = Vec::new();
    // Step 0 is a warm-up at the first rate (group join, first fetches, caches): sent, not reported.
    let mut steps = vec![(a.rates[0], 3)];
    steps.extend(a.rates.iter().map(|r| (*r, a.seconds)));
    let latencies_len = steps.len();
    if let Ok(mut l) = latencies.lock() {
        l.resize(latencies_len, Vec::new());
    }
    for (step, (rate, seconds)) in steps.iter().enumerate() {
        let rate = &rate;
        let n = (**rate * *seconds) as usize;
        let start = Instant::now();
        for i in 0..n {
            let Some(line) = lines.get(next) else { break };
            next += 1;
            let due = start + Duration::from_secs_f64(i as f64 / **rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            let key = v["account_id"].as_str().or(v["person_id"].as_str()).unwrap_or("").to_owned();
            if let Some(id) = event_id(line)
                && let Ok(mut s) = sent.lock()
            {
                s.insert(id, (Instant::now(), step));
            }
            let mut rec = BaseRecord::to(&topic).key(&key).payload(*line);
            loop {
                match producer.send(rec) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        rec = r;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        }
        let took = start.elapsed().as_secs_f64();
        achieved.push(n as f64 / took);
    }
    producer.flush(Duration::from_secs(30)).map_err(|e| e.to_string())?;
    done.store(true, Ordering::Relaxed);
    reader.join().map_err(|_| "the reader panicked".to_owned())?;
    let lat = latencies.lock().map_err(|_| "poisoned".to_owned())?;
    println!("rate_target,rate_sent,samples,p50_ms,p99_ms,max_ms");
    for (i, rate) in a.rates.iter().enumerate() {
        let step = i + 1;
        let mut l = lat[step].clone();
        l.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{rate},{:.0},{},{:.1},{:.1},{:.1}",
            achieved.get(step).copied().unwrap_or(0.0),
            l.len(),
            ms(percentile(&l, 0.50)),
            ms(percentile(&l, 0.99)),
            ms(l.last().copied().unwrap_or_default())
        );
    }
    Ok(())
}
