//! Figure 12, the producer reading a list (issue #25): one tick whose jobs are the rows of a
//! JSONL object in S3 (100,000 and 1,000,000 rows), each rendered through a template, beside a
//! tick of 100,000 literal targets (figure 4's workload) in the same run.
//!
//! S3 is ministack, the local cloud's emulator (`scripts/local-cloud setup` installs it), started
//! on its own: the producer runs in a child process here, not as a deployed function, so no
//! stack is needed, only the bucket. Jobs are published into the embedded topic, as in figure 4,
//! so the emulator's SNS (Python, one request at a time) does not hide the producer's own cost.
//!
//! Every tick runs in a fresh child process (`fanout-bench list-tick`) so its peak RSS is the
//! producer's own and no tick inherits another's heap; the literal tick and both list ticks of a
//! run are interleaved, so the ratio of their times per job compares ticks under the same
//! conditions. The same three ticks into a topic that keeps nothing, and a read-only pass, say
//! where the time and memory go: the producer's own work, or the embedded topic's.

use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fanout_shared::aws::{s3_client, S3Objects};
use fanout_shared::{
    BackendError, EntryFailure, ObjectStore, OutboundMessage, PipelineConfig, Publisher, TickValues,
};
use serde::{Deserialize, Serialize};

use crate::measure::{cpu_seconds, last_json_line, max_rss_kb, this_exe};
use crate::report::{list, median, Figure, Section};
use crate::workload::{embedded, ok_targets, Scratch};

/// Literal targets in the comparison tick: figure 4's size.
const LITERAL: usize = 100_000;
/// Rows of the two lists the issue asks for.
const SIZES: [usize; 2] = [100_000, 1_000_000];
/// The bucket the lists are uploaded to.
const BUCKET: &str = "fanout-bench-lists";
/// The template every row is rendered through: a path and a query parameter from the row.
const TEMPLATE_URL: &str = "https://api.example.com/customers/{id}/sync?plan={plan}";
/// The goal's function size, MB as Lambda counts them (MiB).
const LAMBDA_MB: f64 = 256.0;
/// Runs of each tick in `fanout-bench all` (at most): a run holds a million-row tick.
pub(crate) const RUNS_IN_ALL: usize = 3;
/// The goal for (time per row from the list) ÷ (time per literal job).
const MAX_RATIO: f64 = 2.0;

/// The object key of the list of `rows` rows.
fn key(rows: usize) -> String {
    format!("rows-{rows}.jsonl")
}

/// What one measured tick reports on its last stdout line.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct TickStats {
    /// Jobs published.
    pub jobs: u64,
    /// The tick's own time (`Summary.elapsed`: read, render, spool, ledger, publish), seconds.
    pub wall_s: f64,
    /// CPU time (user + system, every thread) of the tick, seconds.
    pub cpu_s: f64,
    /// Peak RSS of the process once the tick is done (`VmHWM`), KiB.
    pub max_rss_kb: u64,
    /// RSS just before the tick (runtime, SDK, state file opened), KiB: the part of the peak
    /// that is not the tick's.
    pub base_rss_kb: u64,
    /// A second pass that only reads and renders the list (`fanout_producer::preview`, no
    /// spool, no publish), seconds; 0 for literal targets.
    pub read_s: f64,
    /// The same read-only pass over a local copy of the list (no S3), seconds; 0 without one.
    #[serde(default)]
    pub file_read_s: f64,
    /// The spool file's largest size during the tick, bytes (what a function's `/tmp` must
    /// hold).
    pub spool_bytes: u64,
    /// PublishBatch calls.
    pub publish_calls: u64,
}

impl TickStats {
    /// Microseconds of tick per job.
    fn us_per_job(&self) -> f64 {
        self.wall_s * 1e6 / self.jobs.max(1) as f64
    }
}

/// A topic that takes every batch and keeps nothing: a tick against it costs what the producer
/// itself does (read, render, spool, batching), without the embedded topic's SQLite writes or
/// page cache, which a deployed producer (publishing to SNS over HTTP) does not have.
struct Discard;

#[async_trait]
impl Publisher for Discard {
    async fn publish_batch(
        &self,
        _batch: &[OutboundMessage],
    ) -> Result<Vec<EntryFailure>, BackendError> {
        Ok(Vec::new())
    }
}

/// ministack on a free port of 127.0.0.1, with its state in a scratch directory; its process
/// group (it leads one) is stopped when dropped.
struct Ministack {
    child: Child,
    endpoint: String,
    _state: Scratch,
}

impl Ministack {
    /// Starts `program` as `scripts/local-cloud` starts the emulator (same variables, a clean
    /// environment), without deploying anything into it.
    async fn start(program: &Path) -> Result<Self, String> {
        if !program.exists() {
            return Err(format!(
                "{} is missing: scripts/local-cloud setup installs the local cloud's emulator",
                program.display()
            ));
        }
        let state = Scratch::new("ministack")?;
        for dir in ["tmp", "s3"] {
            std::fs::create_dir_all(state.join(dir)).map_err(|e| format!("{dir}: {e}"))?;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("a free port: {e}"))?
            .port();
        let log_path = state.join("ministack.log");
        let log =
            std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        let endpoint = format!("http://127.0.0.1:{port}");
        let child = Command::new(program)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", std::env::var_os("HOME").unwrap_or_default())
            .env("LANG", "C.UTF-8")
            .env("TMPDIR", state.join("tmp"))
            .env("S3_DATA_DIR", state.join("s3"))
            .env("BIND_HOST", "127.0.0.1")
            .env("GATEWAY_PORT", port.to_string())
            .env("MINISTACK_HOST", "127.0.0.1")
            .env("MINISTACK_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", &endpoint)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Its own process group, so Drop stops whatever it started with it.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("{}: {e}", program.display()))?;
        let ministack = Self {
            child,
            endpoint,
            _state: state,
        };
        let health = format!("{}/_ministack/health", ministack.endpoint);
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = client
                .get(&health)
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return Ok(ministack);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "ministack did not answer {health} within 30 s (log: {})",
                    log_path.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Ministack {
    fn drop(&mut self) {
        let Ok(group) = i32::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: kill only sends a signal, to the process group this value's child leads.
        unsafe { libc::kill(-group, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: as above.
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// SDK configuration for the emulator at `endpoint`, with its static test credentials.
async fn sdk(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "test", "test", None, None, "static",
        ))
        .load()
        .await
}

/// Writes a JSONL list of `rows` customers (`{"id":"c-N","plan":"pro"}`); answers its bytes.
fn write_list(path: &Path, rows: usize) -> Result<u64, String> {
    let fail = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(fail)?);
    for i in 0..rows {
        writeln!(out, "{{\"id\":\"c-{i}\",\"plan\":\"pro\"}}").map_err(fail)?;
    }
    out.flush().map_err(fail)?;
    std::fs::metadata(path).map(|m| m.len()).map_err(fail)
}

/// The config of a list-driven pipeline: one template, one source at `location`.
fn list_config(location: &str) -> Result<PipelineConfig, String> {
    let text = serde_json::json!({
        "templates": { "sync": { "url": TEMPLATE_URL } },
        "sources": [{ "name": "customers", "template": "sync", "id_field": "id",
                      "location": location }]
    });
    PipelineConfig::parse(&text.to_string(), false, "bench-lists.json").map_err(|e| e.to_string())
}

/// Resident set size of this process now (`VmRSS`), KiB.
fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

/// Watches the temp dir for this process's spool file and keeps its largest size: the producer
/// removes the file when the tick ends, so it can only be seen while the tick runs.
struct SpoolWatch {
    stop: Arc<AtomicBool>,
    largest: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SpoolWatch {
    fn start() -> Self {
        let (stop, largest) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let prefix = format!("fanout-spool-{}-", std::process::id());
        let dir = std::env::temp_dir();
        let thread = {
            let (stop, largest) = (stop.clone(), largest.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                        if entry.file_name().to_string_lossy().starts_with(&prefix) {
                            let size = entry.metadata().map_or(0, |m| m.len());
                            largest.fetch_max(size, Ordering::Relaxed);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        Self {
            stop,
            largest,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.largest.load(Ordering::Relaxed)
    }
}

/// The read-only pass: every row of `config`'s sources read, parsed, rendered, digested and
/// encoded, nothing spooled or published; answers its seconds, or an error unless it read `rows`.
async fn read_pass(
    config: &PipelineConfig,
    objects: Option<Arc<dyn ObjectStore>>,
    rows: usize,
) -> Result<f64, String> {
    let readers = fanout_producer::ListReaders::new(objects);
    let tick = TickValues {
        run_id: "bench-lists-read".into(),
        ..TickValues::default()
    };
    let started = Instant::now();
    let previews = fanout_producer::preview(config, &readers, &tick, None, Some(0))
        .await
        .map_err(|e| e.to_string())?;
    let read = previews.iter().map(|p| p.read.rows).sum::<u64>();
    if read != rows as u64 {
        return Err(format!("the read-only pass read {read} of {rows} rows"));
    }
    Ok(started.elapsed().as_secs_f64())
}

/// What one `list-tick` child measures.
#[derive(Debug, Clone)]
pub(crate) struct TickArgs {
    /// Literal targets, or the rows the list holds (checked).
    pub rows: usize,
    /// The list's `s3://` location; `None`: a tick of `rows` literal targets.
    pub source: Option<String>,
    /// The S3 emulator's endpoint, for `source`.
    pub endpoint: Option<String>,
    /// A local copy of the list, for a second read-only pass without S3.
    pub file: Option<PathBuf>,
    /// The embedded state file (fresh).
    pub state: PathBuf,
    /// Publish into [`Discard`] instead of the embedded topic (the ledger stays in `state`).
    pub discard: bool,
}

/// (child process of figure 12) one measured tick as `args` say. A list tick into the embedded
/// topic is followed by the read-only passes, after its peak RSS is taken.
pub(crate) async fn tick_child(args: &TickArgs) -> Result<TickStats, String> {
    let (rows, discard) = (args.rows, args.discard);
    let mut pipeline = embedded(&args.state, 0.0)?;
    if discard {
        pipeline.publisher = Arc::new(Discard);
    }
    let config = match &args.source {
        None => ok_targets("https://api.example.com", rows, None),
        Some(location) => {
            let endpoint = args
                .endpoint
                .as_deref()
                .ok_or("--source needs --endpoint (the S3 emulator)")?;
            pipeline.objects = Some(Arc::new(S3Objects::from_sdk(&sdk(endpoint).await)));
            list_config(location)?
        }
    };
    let base_rss_kb = rss_kb();
    let watch = SpoolWatch::start();
    let cpu = cpu_seconds();
    let summary = fanout::produce_tick(&config, &pipeline, "bench-lists", "fanout")
        .await
        .map_err(|e| e.to_string())?;
    let cpu_s = cpu_seconds() - cpu;
    // The peak before the read-only pass below, which is not the tick's.
    let max_rss_kb = max_rss_kb();
    let spool_bytes = watch.finish();
    if summary.published != rows {
        return Err(format!("published {} of {rows}", summary.published));
    }
    let read_s = match &pipeline.objects {
        Some(objects) if !discard => read_pass(&config, Some(objects.clone()), rows).await?,
        _ => 0.0,
    };
    let file_read_s = match &args.file {
        Some(file) if !discard => {
            let config = list_config(&file.display().to_string())?;
            read_pass(&config, None, rows).await?
        }
        _ => 0.0,
    };
    Ok(TickStats {
        jobs: summary.published as u64,
        wall_s: summary.elapsed.as_secs_f64(),
        cpu_s,
        max_rss_kb,
        base_rss_kb,
        read_s,
        file_read_s,
        spool_bytes,
        publish_calls: summary.publish_calls,
    })
}

/// Runs `fanout-bench list-tick ARGS` with its temp dir in `tmp` (where its spool goes) and
/// parses the stats on its last stdout line.
fn run_tick(args: &[String], tmp: &Path) -> Result<TickStats, String> {
    let program = this_exe()?;
    last_json_line(
        Command::new(&program)
            .arg("list-tick")
            .args(args)
            .env("TMPDIR", tmp),
        &format!("list-tick {}", args.join(" ")),
    )
}

/// Where a measured tick publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Topic {
    /// The embedded topic, on the child's fresh state file: the figures' ticks.
    Embedded,
    /// [`Discard`]: the same tick without the topic's cost, to say where the time and memory go.
    Discard,
}

/// Every run's ticks of one [`Topic`]: the literal one, and per list size (as [`SIZES`]).
#[derive(Debug, Clone)]
struct Ticks {
    literal: Vec<TickStats>,
    lists: Vec<Vec<TickStats>>,
}

impl Ticks {
    fn new() -> Self {
        Self {
            literal: Vec::new(),
            lists: vec![Vec::new(); SIZES.len()],
        }
    }

    /// Microseconds per literal job, run by run.
    fn literal_us(&self) -> Vec<f64> {
        self.literal.iter().map(TickStats::us_per_job).collect()
    }

    /// List size `i`'s time per row ÷ the same run's time per literal job, run by run.
    fn ratios(&self, i: usize) -> Vec<f64> {
        self.lists[i]
            .iter()
            .zip(self.literal_us())
            .map(|(t, literal)| t.us_per_job() / literal)
            .collect()
    }
}

/// One tick in a child on a fresh state file, which is removed afterwards (a million-job state
/// file is most of a gigabyte).
fn measured_tick(
    scratch: &Scratch,
    name: &str,
    rows: usize,
    source: Option<(&List, &str)>,
    topic: Topic,
) -> Result<TickStats, String> {
    let state = scratch.join(&format!("{name}.db"));
    let tmp = scratch.join("tmp");
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let mut args = vec![
        "--rows".to_owned(),
        rows.to_string(),
        "--state".to_owned(),
        state.display().to_string(),
    ];
    if let Some((list, endpoint)) = source {
        args.extend([
            "--source".to_owned(),
            list.location.clone(),
            "--endpoint".to_owned(),
            endpoint.to_owned(),
        ]);
    }
    match (topic, source) {
        (Topic::Discard, _) => args.push("--discard".to_owned()),
        (Topic::Embedded, Some((list, _))) => {
            args.extend(["--file".to_owned(), list.file.display().to_string()]);
        }
        (Topic::Embedded, None) => {}
    }
    let stats = run_tick(&args, &tmp);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", state.display()));
    }
    stats
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// The median of `f` over `ticks`.
fn median_of(ticks: &[TickStats], f: impl Fn(&TickStats) -> f64) -> f64 {
    median(&ticks.iter().map(f).collect::<Vec<_>>())
}

/// `f` over `ticks`, formatted for a "Runs" line.
fn list_of(ticks: &[TickStats], decimals: usize, f: impl Fn(&TickStats) -> f64) -> String {
    list(&ticks.iter().map(f).collect::<Vec<_>>(), decimals)
}

/// One uploaded list.
#[derive(Debug, Clone)]
struct List {
    /// `s3://bucket/key`.
    location: String,
    /// Its local copy (for the read-only pass without S3).
    file: PathBuf,
    /// Its size.
    bytes: u64,
}

/// Creates the bucket and uploads a list of each of [`SIZES`], keeping the local copies.
async fn upload_lists(scratch: &Scratch, sdk: &aws_config::SdkConfig) -> Result<Vec<List>, String> {
    s3_client(sdk)
        .create_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .map_err(|e| format!("CreateBucket {BUCKET}: {e:?}"))?;
    let objects = S3Objects::from_sdk(sdk);
    let mut lists = Vec::new();
    for rows in SIZES {
        let path: PathBuf = scratch.join(&key(rows));
        let bytes = write_list(&path, rows)?;
        objects
            .put(BUCKET, &key(rows), &path, None)
            .await
            .map_err(|e| format!("upload {}: {e}", key(rows)))?;
        lists.push(List {
            location: format!("s3://{BUCKET}/{}", key(rows)),
            file: path,
            bytes,
        });
    }
    Ok(lists)
}

/// Runs figure 12, `runs` times each tick, against the emulator `ministack` (the local cloud's,
/// `.local-cloud/venv/bin/ministack`).
pub(crate) async fn section(runs: usize, ministack: &Path) -> Result<Section, String> {
    let scratch = Scratch::new("lists")?;
    let emulator = Ministack::start(ministack).await?;
    let lists = upload_lists(&scratch, &sdk(&emulator.endpoint).await).await?;
    let (mut embedded_ticks, mut discard_ticks) = (Ticks::new(), Ticks::new());
    for run in 0..runs {
        eprintln!("fanout-bench: 12. lists: run {}/{runs}", run + 1);
        for (topic, ticks) in [
            (Topic::Embedded, &mut embedded_ticks),
            (Topic::Discard, &mut discard_ticks),
        ] {
            let name = format!("{topic:?}-{run}").to_lowercase();
            ticks.literal.push(measured_tick(
                &scratch,
                &format!("literal-{name}"),
                LITERAL,
                None,
                topic,
            )?);
            for (i, &rows) in SIZES.iter().enumerate() {
                ticks.lists[i].push(measured_tick(
                    &scratch,
                    &format!("list-{rows}-{name}"),
                    rows,
                    Some((&lists[i], &emulator.endpoint)),
                    topic,
                )?);
            }
        }
    }
    drop(emulator);
    Ok(report(&embedded_ticks, &discard_ticks, &lists))
}

/// The section of the measured ticks.
fn report(embedded: &Ticks, discard: &Ticks, lists: &[List]) -> Section {
    let mut figures = Vec::new();
    let mut runs_lines = Vec::new();
    let largest = SIZES.len() - 1;
    for (i, &rows) in SIZES.iter().enumerate() {
        let ticks = &embedded.lists[i];
        let ratio = embedded.ratios(i);
        let peak = median_of(ticks, |t| mib(t.max_rss_kb));
        figures.push(Figure::info(
            &format!("list of {rows} rows: rows/s"),
            format!("{:.0}", median_of(ticks, |t| t.jobs as f64 / t.wall_s)),
        ));
        figures.push(Figure::goal(
            &format!("list of {rows} rows: time per row ÷ per literal target"),
            format!("{:.2}", median(&ratio)),
            &format!("≤ {MAX_RATIO:.1}"),
            median(&ratio) <= MAX_RATIO,
        ));
        let peak_name = format!("list of {rows} rows: producer peak RSS");
        figures.push(if i == largest {
            Figure::goal(
                &peak_name,
                format!("{peak:.0} MiB"),
                &format!("≤ {LAMBDA_MB:.0} MiB (a {LAMBDA_MB:.0} MB function)"),
                peak <= LAMBDA_MB,
            )
        } else {
            Figure::info(&peak_name, format!("{peak:.0} MiB"))
        });
        figures.push(Figure::info(
            &format!("list of {rows} rows: read + render alone ÷ tick"),
            format!("{:.0}%", median_of(ticks, |t| t.read_s / t.wall_s) * 100.0),
        ));
        figures.push(Figure::info(
            &format!("list of {rows} rows, topic discarding: time per row ÷ per literal target, peak RSS"),
            format!(
                "{:.2}, {:.0} MiB",
                median(&discard.ratios(i)),
                median_of(&discard.lists[i], |t| mib(t.max_rss_kb))
            ),
        ));
        figures.push(Figure::info(
            &format!("list of {rows} rows: CPU ÷ wall; spool file"),
            format!(
                "{:.0}% of one core; {:.0} MB ({:.0} B a row)",
                median_of(ticks, |t| t.cpu_s / t.wall_s) * 100.0,
                median_of(ticks, |t| t.spool_bytes as f64 / 1e6),
                median_of(ticks, |t| t.spool_bytes as f64 / t.jobs.max(1) as f64),
            ),
        ));
        runs_lines.extend([
            format!(
                "list of {rows}, rows/s: {}",
                list_of(ticks, 0, |t| t.jobs as f64 / t.wall_s)
            ),
            format!(
                "list of {rows}, tick s: {}; read + render alone s: {} (from a local copy: {})",
                list_of(ticks, 2, |t| t.wall_s),
                list_of(ticks, 2, |t| t.read_s),
                list_of(ticks, 2, |t| t.file_read_s)
            ),
            format!("list of {rows}, ratio: {}", list(&ratio, 2)),
            format!(
                "list of {rows}, peak RSS MiB: {} (before the tick: {})",
                list_of(ticks, 1, |t| mib(t.max_rss_kb)),
                list_of(ticks, 1, |t| mib(t.base_rss_kb))
            ),
            format!(
                "list of {rows}, PublishBatch calls ÷ (N/10): {}",
                list_of(ticks, 3, |t| t.publish_calls as f64
                    / (t.jobs as f64 / 10.0))
            ),
            format!(
                "list of {rows}, topic discarding: tick s: {}; ratio: {}; peak RSS MiB: {}",
                list_of(&discard.lists[i], 2, |t| t.wall_s),
                list(&discard.ratios(i), 2),
                list_of(&discard.lists[i], 1, |t| mib(t.max_rss_kb))
            ),
        ]);
    }
    figures.push(Figure::info(
        &format!("literal {LITERAL} targets: µs per job (the ratios' denominator), peak RSS"),
        format!(
            "{:.1} µs, {:.0} MiB",
            median(&embedded.literal_us()),
            median_of(&embedded.literal, |t| mib(t.max_rss_kb))
        ),
    ));
    figures.push(Figure::info(
        &format!("literal {LITERAL} targets, topic discarding: µs per job, peak RSS"),
        format!(
            "{:.1} µs, {:.0} MiB",
            median(&discard.literal_us()),
            median_of(&discard.literal, |t| mib(t.max_rss_kb))
        ),
    ));
    runs_lines.extend([
        format!(
            "literal {LITERAL}, µs per job: {}; topic discarding: {}",
            list(&embedded.literal_us(), 1),
            list(&discard.literal_us(), 1)
        ),
        format!(
            "list bytes in S3: {}",
            lists
                .iter()
                .map(|l| format!("{} {}", l.location, l.bytes))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ]);
    Section {
        title: "12. Producer reading a list".into(),
        command: "target/release/fanout-bench lists".into(),
        workload: workload(),
        notes: notes(embedded, discard),
        figures,
        runs: runs_lines,
    }
}

fn workload() -> String {
    format!(
        "One tick whose jobs are the rows of a JSONL object in S3 (`{{\"id\":\"c-N\",\"plan\":\"pro\"}}`, {} and {} \
         rows, one source `s3://{BUCKET}/rows-N.jsonl`), each row rendered through the template `{TEMPLATE_URL}`, \
         counted, spooled and published in batches of 10 into the embedded topic on a fresh state file; beside it, \
         in the same run, a tick of {LITERAL} literal targets (figure 4's workload). S3 is ministack, the local \
         cloud's emulator (installed by `scripts/local-cloud setup`), started alone without a stack: the producer \
         runs here, not as a deployed function. Publishing goes to the embedded topic so that the emulator's SNS \
         (Python, one request at a time) does not mask the producer. Every tick is a fresh child process \
         (`fanout-bench list-tick`), so its peak RSS (`VmHWM` when the tick ends) is its own; the ticks of a run \
         are interleaved and the ratio is each run's time per row ÷ the same run's time per literal job, both \
         the producer's `Summary.elapsed`. Two context figures say where the time and memory go: \"read + render \
         alone\" is a second pass in the same child after the peak is taken (`fanout_producer::preview`: S3 read, \
         parse, render, digest; no spool, ledger or publish; then once more over a local copy of the list, which \
         takes S3 out), and \"topic discarding\" is the same tick in another \
         child whose topic takes every batch and keeps nothing. Each tick runs at most {RUNS_IN_ALL} times in `bench/run`, \
         not 5: a run holds two million-row ticks, about 1.5 minutes.",
        SIZES[0], SIZES[1]
    )
}

/// Where the time and memory go, from the measured values.
fn notes(embedded: &Ticks, discard: &Ticks) -> Vec<String> {
    let (small, large) = (0, SIZES.len() - 1);
    let big = &embedded.lists[large];
    let tick_s = median_of(big, |t| t.wall_s);
    let discard_s = median_of(&discard.lists[large], |t| t.wall_s);
    // The embedded topic's share of a list row: the same tick with and without it.
    let topic_us = |i: usize| {
        median_of(&embedded.lists[i], TickStats::us_per_job)
            - median_of(&discard.lists[i], TickStats::us_per_job)
    };
    let peak = |ticks: &[TickStats]| median_of(ticks, |t| mib(t.max_rss_kb));
    let own_small = peak(&discard.lists[small]);
    let own_large = peak(&discard.lists[large]);
    let own_cpu = median_of(&discard.lists[large], |t| t.cpu_s);
    // Time per job of the largest list and of the literal tick, with and without the topic:
    // the first difference splits exactly into the topic's part and the producer's own.
    let row_us = median_of(big, TickStats::us_per_job);
    let literal_us = median(&embedded.literal_us());
    let own_us = median_of(&discard.lists[large], TickStats::us_per_job);
    let own_literal_us = median(&discard.literal_us());
    let topic_literal_us = literal_us - own_literal_us;
    let own_ratios = format!(
        "{:.1} and {:.1}",
        median(&discard.ratios(small)),
        median(&discard.ratios(large))
    );
    vec![
        format!(
            "Where the {} rows' {tick_s:.1} s go: reading the object from the emulator, parsing, rendering and \
             encoding take {:.1} s (the read-only pass); the whole tick with a topic that keeps nothing (the spool \
             written and read back, batching, the ledger besides) {discard_s:.1} s; the other {:.1} s are the \
             embedded topic's SQLite writes, their cost per job as the state file grows ({:.0} µs a row in the \
             {}-row tick, {:.0} µs in the {}-row one). The same pass over a local copy of the list takes {:.1} s; \
             reading from S3 instead changes a run's pass by {:+.1} s (the median of each run's difference), so \
             the pass is CPU work per row: parse, render, digest, encode.",
            SIZES[large],
            median_of(big, |t| t.read_s),
            tick_s - discard_s,
            topic_us(small),
            SIZES[small],
            topic_us(large),
            SIZES[large],
            median_of(big, |t| t.file_read_s),
            median_of(big, |t| t.read_s - t.file_read_s),
        ),
        format!(
            "Per job, the {}-row tick takes {row_us:.1} µs a row against {literal_us:.1} µs a literal job (the \
             ratio run by run: {}). Of the {:.1} µs more, {:.1} are the embedded topic's ({:.1} µs a list job as \
             its state file grows to {} jobs, {:.1} µs a literal job in one of {LITERAL}): a cost of the bench's \
             stand-in for SNS, not of reading the list. The other {:.1} µs are the producer's own ({own_us:.1} µs \
             a row with a topic that keeps nothing, {own_literal_us:.1} µs a literal job; {own_ratios}× the \
             literal job's time for the {} and {}-row lists): a row is parsed, rendered through its template, \
             digested, encoded, written to the spool and parsed back from it, where a literal job is only \
             encoded. Against SNS each PublishBatch call of 10 is a network round trip, which this figure does \
             not measure.",
            SIZES[large],
            list(&embedded.ratios(large), 2),
            row_us - literal_us,
            topic_us(large) - topic_literal_us,
            topic_us(large),
            SIZES[large],
            topic_literal_us,
            own_us - own_literal_us,
            SIZES[small],
            SIZES[large],
        ),
        format!(
            "Memory: the {}-row tick peaks at {:.0} MiB with the embedded topic and {own_large:.0} MiB without it \
             (the difference is the topic's SQLite, whose page cache may grow to 64 MiB); {:.0} MiB of either is \
             the child before its tick (runtime, SDK, state file). Without the topic the million rows peak \
             {:.0} MiB above the {}-row tick: the producer keeps a 16-byte digest of every job's ID to refuse a \
             duplicate, and by arithmetic a hash set of a million 128-bit values has 2^21 buckets (34 MiB) and, \
             while it doubles into them, still holds its previous 17 MiB table: nearly all of that growth. The \
             literal tick peaks higher ({:.0} MiB) than either list: its 100,000 targets are in the config and \
             their jobs built before publishing.",
            SIZES[large],
            peak(big),
            median_of(big, |t| mib(t.base_rss_kb)),
            own_large - own_small,
            SIZES[small],
            peak(&embedded.literal),
        ),
        format!(
            "In a deployed function the producer publishes to SNS instead, so its memory is the \"topic discarding\" \
             figure plus the HTTP client's buffers; Lambda counts the whole process against the function's memory. \
             Two other limits of a 256 MB function are not memory. CPU: Lambda gives it about 1/7 of a vCPU (CPU \
             in proportion to memory, one vCPU at 1,769 MB); the producer's own CPU time for the million rows is \
             {own_cpu:.1} s here (topic discarding), about {:.0} s at that share, before any SNS call, against the \
             stack's default producer timeout of 120 s. Disk: the spool is in `/tmp`, {:.0} MB for the million \
             rows, above Lambda's default ephemeral storage of 512 MB: the stack gives the producer 2 GiB \
             (`producerTmpMb`, up to 10 GiB). Neither is measured here (the local cloud's functions run as \
             host processes).",
            own_cpu * 7.0,
            median_of(big, |t| t.spool_bytes as f64 / 1e6),
        ),
    ]
}
