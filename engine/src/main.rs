//! The `caravan` command line.

use anyhow::{Context, bail};
use caravan_engine::{admin, definitions, replay, telemetry};
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Rust allocates through mimalloc; RocksDB (C++) through glibc. glibc raises its mmap threshold each time a
/// large block is freed, after which RocksDB's multi-megabyte write batches and memtable blocks come from the
/// heap and leave it fragmented: on the reference workload that is about 100 MiB of resident memory never
/// given back. A fixed 1 MiB threshold maps such blocks and unmaps them when freed.
#[allow(unsafe_code)]
fn tune_glibc_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// How long mimalloc keeps memory freed by the program before it returns it to the OS, unless
/// `MIMALLOC_PURGE_DELAY` says otherwise. Its default (1 s) is shorter than the life of the buffers that go
/// round the pipeline (a decoded chunk, a batch's outputs and state writes, an epoch): their memory was given
/// back and taken again all the time, and zeroing the refaulted pages was ~10% of a replay's CPU (perf, 2M
/// workload). 10 s keeps it for reuse while a stream flows and still returns it once the process is idle.
/// Reference workload, 3 alternating rounds: CPU 37.9 vs 39.4 s, peak RSS 898 vs 863 MiB.
const MIMALLOC_PURGE_DELAY_MS: std::ffi::c_long = 10_000;

/// `mi_option_purge_delay` in mimalloc's `mi_option_t` (v3's `mimalloc.h`): the one option the sys crate
/// declares no constant for (it comes just before `mi_option_use_numa_nodes`, which it does declare).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = libmimalloc_sys::mi_option_use_numa_nodes - 1;

#[allow(unsafe_code)]
fn tune_mimalloc() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set only stores an option value that mimalloc reads on its next purge; it is
        // called before any other thread starts.
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, MIMALLOC_PURGE_DELAY_MS);
        }
    }
}

/// Caravan: B2B account journeys as an event-sourced stream processor.
#[derive(Parser)]
#[command(name = "caravan", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate definition files (journeys): exit 0, or list every problem and exit 1.
    Validate {
        /// Files to validate (YAML or JSON).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run journeys over an NDJSON input with no broker: the embedded mode.
    Replay(Box<ReplayArgs>),
    /// Run the service on Kafka: exactly once, scaled out by the consumer group.
    Run {
        /// The configuration file (TOML); every key can be overridden by CARAVAN_SECTION__KEY variables.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Publish definition files (journeys, buying group templates) on the definitions topic.
    Publish {
        /// The configuration file (TOML) naming the brokers and topics.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Files to publish (YAML or JSON); each is validated first.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Show what a state folder holds.
    Inspect {
        /// A state folder: a replay's, or one partition's folder under a service's `state.dir`.
        #[arg(long)]
        state: PathBuf,
        /// Tenant of the account to show.
        #[arg(long, requires = "account")]
        tenant: Option<String>,
        /// Account to show (with its people, journey positions and timers).
        #[arg(long, requires = "tenant")]
        account: Option<String>,
    },
    /// Stop a journey: every instance ends at once (silently) and its timers are cancelled; the journey admits
    /// no entry until a higher version is published. With --state: in a replay's state folder (run it between
    /// replays); with --config: on the definitions topic, for every instance of the service.
    Stop {
        /// The state folder of a replay.
        #[arg(long, required_unless_present = "config", conflicts_with = "config")]
        state: Option<PathBuf>,
        /// The service's configuration (Kafka mode).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The journey's tenant.
        #[arg(long)]
        tenant: String,
        /// The journey id.
        journey: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check a configuration file (with the environment's overrides): print it resolved, or every problem.
    Check {
        /// The file (TOML).
        file: PathBuf,
    },
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// Folder of journey definitions (*.yaml, *.yml, *.json).
    #[arg(long)]
    definitions: PathBuf,
    /// Input events, one JSON object a line; `-` for standard input.
    #[arg(long)]
    input: PathBuf,
    /// Output folder: actions.ndjson, changes.ndjson, rejected.ndjson.
    #[arg(long)]
    out: PathBuf,
    /// State folder; makes the run resumable after a crash (rerun the same command).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Partition workers (default: one per core).
    #[arg(long, env = "CARAVAN_REPLAY_WORKERS")]
    workers: Option<usize>,
    /// Decoder threads (default: one per core).
    #[arg(long)]
    decoders: Option<usize>,
    /// A configuration file (TOML, as for `caravan run`): its tenant registry, `[input]` limits and
    /// format, and `[time]` apply; the flags below win over it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The input's format: native events, or XDM B2B records (which need --tenant) [default: native].
    #[arg(long, value_enum)]
    format: Option<caravan_engine::config::InputFormat>,
    /// The tenant of every record of an XDM input (XDM records carry none).
    #[arg(long)]
    tenant: Option<String>,
    /// Watermark lag behind the largest event time read [default: 5s].
    #[arg(long, value_parser = humantime::parse_duration)]
    allowed_disorder: Option<Duration>,
    /// Event ids remembered for de-duplication, 0: off [default: 1000000].
    #[arg(long)]
    dedup_window: Option<usize>,
    /// Also forget event ids whose event time is this far behind the largest applied ("7d"; 0s: no age
    /// bound) [default: the configuration's input.dedup_max_age, 0s].
    #[arg(long, value_parser = humantime::parse_duration)]
    dedup_max_age: Option<Duration>,
    /// Commit at least this often.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    commit_interval: Duration,
    /// Commit at least every this many input records.
    #[arg(long, default_value_t = 250_000)]
    commit_records: u64,
    /// Commit at least whenever the epoch's state writes reach this many MiB (reckoned at 256 bytes for each
    /// applied record other than an activity).
    #[arg(long, default_value_t = 16)]
    commit_state_mib: usize,
    /// Largest accepted record, in bytes [default: 1048576].
    #[arg(long)]
    max_record_bytes: Option<usize>,
    /// Accounts kept in memory (the rest is read from RocksDB when needed).
    #[arg(long, default_value_t = 400_000)]
    cache_accounts: usize,
    /// RocksDB block cache, in MiB (reads of accounts and index entries that are not in memory).
    #[arg(long, default_value_t = 64)]
    block_cache_mib: usize,
    /// Cap on RocksDB's memtables over all column families, in MiB.
    #[arg(long, default_value_t = 64)]
    memtables_mib: usize,
    /// fsync outputs and state at every commit (survives power loss, not only crashes).
    #[arg(long)]
    sync: bool,
    /// Serve the admin endpoints (/metrics, /healthz, /readyz, /v1/...) at this address while the replay
    /// runs, e.g. 127.0.0.1:9464 [default: the configuration's admin.listen, else none].
    #[arg(long, alias = "metrics-listen")]
    admin_listen: Option<SocketAddr>,
    /// Never show a progress bar.
    #[arg(long)]
    no_progress: bool,
}

fn main() -> ExitCode {
    tune_glibc_malloc();
    tune_mimalloc();
    let cli = Cli::parse();
    // The service logs as its configuration says (read first); the other commands log warnings.
    if !matches!(cli.command, Command::Run { .. }) {
        init_logging("warn", false);
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("caravan: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to standard error: `RUST_LOG` when set, else `default_filter`; JSON lines when `json`.
fn init_logging(default_filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn print_problems(problems: &[String]) {
    for p in problems {
        eprintln!("{p}");
    }
    eprintln!("{} problem{} found", problems.len(), if problems.len() == 1 { "" } else { "s" });
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { files } => match definitions::load_files(&files) {
            Ok(defs) => {
                let n = defs.all().count();
                let t = defs.all_templates().count();
                let templates = if t > 0 {
                    format!(", {t} buying group template version{}", if t == 1 { "" } else { "s" })
                } else {
                    String::new()
                };
                println!(
                    "{} file{} valid: {n} journey version{}{templates}",
                    files.len(),
                    if files.len() == 1 { "" } else { "s" },
                    if n == 1 { "" } else { "s" }
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(problems) => {
                print_problems(&problems);
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Replay(args) => replay_command(*args),
        Command::Inspect { state, tenant, account } => inspect(&state, tenant.as_deref(), account.as_deref()),
        Command::Stop { state: None, config, tenant, journey } => {
            let cfg = caravan_engine::config::Config::load(config.as_deref())?;
            let version = caravan_engine::service::definitions::stop(&cfg, &tenant, &journey)?;
            println!(
                "stopped journey `{journey}` of tenant `{tenant}` up to version {version} on {}",
                cfg.topics.definitions
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { config } => {
            // First: a SIGTERM during start-up then stops the service cleanly instead of killing it.
            let stop = shutdown_flag()?;
            let cfg = caravan_engine::config::Config::load(config.as_deref())?;
            init_logging(&cfg.log.level, cfg.log.format == caravan_engine::config::LogFormat::Json);
            let json_logs = cfg.log.format == caravan_engine::config::LogFormat::Json;
            if let Ok(spec) = std::env::var("CARAVAN_FAILPOINTS") {
                let names = caravan_engine::service::configure_failpoints(&spec)?;
                tracing::warn!(?names, "Fail points set by CARAVAN_FAILPOINTS: for tests only.");
            }
            let admin = start_admin(&cfg, cfg.run_admin_listen(), json_logs)?;
            caravan_engine::service::run(&cfg, stop, &admin)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Publish { config, files } => {
            let cfg = caravan_engine::config::Config::load(config.as_deref())?;
            let defs = match definitions::load_files(&files) {
                Ok(d) => d,
                Err(problems) => {
                    print_problems(&problems);
                    return Ok(ExitCode::FAILURE);
                }
            };
            let written = caravan_engine::service::definitions::publish(&cfg, &defs)?;
            if written.is_empty() {
                println!("nothing new: every version is already published on {}", cfg.topics.definitions);
            }
            for key in written {
                println!("published {key}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Check { file }) => match caravan_engine::config::Config::load(Some(&file)) {
            Ok(cfg) => {
                print!("{}", cfg.to_toml());
                eprintln!("{}: valid", file.display());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                eprintln!("{}: invalid", file.display());
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Stop { state: Some(state), tenant, journey, .. } => {
            if !state.join("CURRENT").exists() {
                bail!("{} is not a Caravan state folder", state.display());
            }
            let store = caravan_state::Store::open(&state, &caravan_state::StoreOptions::default())
                .with_context(|| format!("opening the state in {}", state.display()))?;
            let ended = caravan_engine::replay::stop(&store, &tenant, &journey)?;
            println!("stopped journey `{journey}` of tenant `{tenant}`: {ended} instances ended");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Installs the metrics recorder and serves the admin endpoints on `addr`; says where on standard error: as a
/// log event when the logs are JSON lines (`json_logs`), else as a plain line (which tools read for port 0).
fn start_admin(
    cfg: &caravan_engine::config::Config,
    addr: SocketAddr,
    json_logs: bool,
) -> anyhow::Result<admin::Admin> {
    let metrics = telemetry::install_recorder()?;
    let admin = admin::Admin::new(Some(metrics), admin::Access::from_config(cfg));
    let bound = admin.serve(addr)?;
    let said = format!("admin endpoints on http://{bound} (/metrics, /healthz, /readyz, /v1/journeys)");
    if json_logs {
        tracing::info!(address = %bound, "{said}");
    } else {
        eprintln!("caravan: {said}");
    }
    Ok(admin)
}

/// SIGTERM/SIGINT: stop reading, commit what was read, exit 0. A second signal exits at once (130); that is
/// safe too, the next run resumes from the last commit.
fn shutdown_flag() -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, std::sync::Arc::clone(&stop))
            .context("installing signal handlers")?;
        signal_hook::flag::register(signal, std::sync::Arc::clone(&stop)).context("installing signal handlers")?;
    }
    Ok(stop)
}

fn replay_command(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let defs = match definitions::load_dir(&args.definitions) {
        Ok(d) => d,
        Err(problems) => {
            print_problems(&problems);
            eprintln!("caravan: refusing to replay with invalid definitions");
            return Ok(ExitCode::FAILURE);
        }
    };
    let stop = shutdown_flag()?;
    // Without --config, the environment is not read: a replay is configured by its flags alone.
    let cfg = match &args.config {
        Some(file) => caravan_engine::config::Config::load(Some(file))?,
        None => caravan_engine::config::Config::default(),
    };
    let admin = match args.admin_listen.or(cfg.admin.listen) {
        Some(addr) => {
            let admin = start_admin(&cfg, addr, false)?;
            Some(admin)
        }
        None => None,
    };
    if cfg.time.mode != caravan_engine::config::TimeMode::Event {
        bail!("a replay runs in event time: time.mode = \"processing\" is for `caravan run`");
    }
    let mut limits = cfg.input.limits()?;
    if let Some(n) = args.max_record_bytes {
        limits.max_record_bytes = n;
    }
    let format = args.format.unwrap_or(cfg.input.format);
    let tenant = args.tenant.clone().or_else(|| cfg.input.tenant.clone());
    let xdm_tenant = caravan_engine::config::source_tenant(format, tenant.as_deref(), &cfg.tenants).map_err(|e| {
        anyhow::anyhow!("{}", e.to_string().replace("input.format", "--format").replace("input.tenant", "--tenant"))
    })?;
    let defaults = replay::ReplayOptions::default();
    let workers = args.workers.unwrap_or(defaults.workers);
    if workers == 0 {
        bail!("--workers must be at least 1");
    }
    let opts = replay::ReplayOptions {
        input: args.input,
        out: args.out,
        state: args.state,
        workers,
        decoders: args.decoders.unwrap_or(defaults.decoders).max(1),
        allowed_disorder_ns: i64::try_from(args.allowed_disorder.unwrap_or(cfg.time.allowed_disorder).as_nanos())
            .context("--allowed-disorder is too large")?,
        dedup_window: args.dedup_window.unwrap_or(cfg.input.dedup_window),
        dedup_max_age_ns: i64::try_from(args.dedup_max_age.unwrap_or(cfg.input.dedup_max_age).as_nanos())
            .context("--dedup-max-age is too large")?,
        tenants: cfg.tenants.iter().map(|t| t.id.clone()).collect(),
        xdm_tenant,
        commit_interval: args.commit_interval,
        commit_records: args.commit_records.max(1),
        commit_state_bytes: args.commit_state_mib.max(1) << 20,
        cache_accounts: args.cache_accounts,
        limits,
        store: caravan_state::StoreOptions {
            sync_commits: args.sync,
            block_cache_bytes: args.block_cache_mib.max(1) << 20,
            write_buffer_total_bytes: args.memtables_mib.max(4) << 20,
            write_buffer_bytes: (args.memtables_mib.max(4) << 20) / 4,
            ..caravan_state::StoreOptions::default()
        },
        sync: args.sync,
        progress: !args.no_progress && std::io::stderr().is_terminal(),
        stop: Some(stop),
        admin,
        ..defaults
    };
    let s = replay::replay(&opts, defs)?;
    let resumed = if s.resumed_at > 0 { format!(" (resumed after record {})", s.resumed_at) } else { String::new() };
    println!(
        "replayed {} records in {:.2} s, {:.0} records/s{resumed}",
        s.records,
        s.elapsed.as_secs_f64(),
        s.records_per_second()
    );
    println!("events: {} applied, {} rejected, {} duplicates, {} late", s.applied, s.rejected, s.duplicates, s.late);
    println!("outputs: {} actions, {} changes -> {}", s.actions, s.changes, opts.out.display());
    if !s.complete {
        println!(
            "stopped by a signal after record {}: everything read is committed; rerun the same command to resume",
            s.resumed_at + s.records
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn inspect(state: &std::path::Path, tenant: Option<&str>, account: Option<&str>) -> anyhow::Result<ExitCode> {
    if !state.join("CURRENT").exists() {
        bail!("{} is not a Caravan state folder", state.display());
    }
    let store = caravan_state::Store::open(state, &caravan_state::StoreOptions::default())?;
    let out = match (tenant, account) {
        (Some(t), Some(a)) => {
            let defs = caravan_engine::replay::stored_definitions(&store)?;
            match admin::account_view(&store, &defs, t, a)? {
                Some(view) => view,
                None => {
                    eprintln!("caravan: no account `{a}` in tenant `{t}`");
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        _ => {
            serde_json::json!({
                "position": store.position()?.as_ref().map(admin::position_view),
                "state_bytes": store.approximate_size_bytes(),
            })
        }
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}
