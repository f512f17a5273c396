//! Figure 5, cold-start proxy: the real `fanout-consumer` Lambda binary started against a mock
//! Lambda Runtime API on 127.0.0.1, timed from `spawn` to its `POST …/response` for a 1-record
//! event; beside it the Python peer's runtime loop (`bench/peer/bootstrap.py`), the same way.
//!
//! The mock also answers the AWS JSON protocol (`AWS_ENDPOINT_URL` points at it): every DynamoDB
//! conditional write succeeds at once, so the figure is the binary's own init and first call
//! (config read, SDK config and clients, HTTP client, one record through the handler with one
//! call to the local target), not a network's latency.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use fanout_testkit::target_server::TargetServer;

use crate::measure::{file_rss_of, peak_rss_of};
use crate::report::{list, median, Figure, Section};
use crate::workload::{ok_targets, write_events, Scratch};

/// What the mock saw when the runtime answered (or reported an error).
struct Answer {
    at: Instant,
    path: String,
    body: String,
}

struct Mock {
    event: Bytes,
    served: AtomicBool,
    answers: mpsc::UnboundedSender<Answer>,
}

/// A mock Runtime API and AWS endpoint serving one invocation of `event`; stops when dropped.
struct MockServer {
    port: u16,
    answers: mpsc::UnboundedReceiver<Answer>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Reply = Result<Response<Full<Bytes>>, std::io::Error>;

async fn handle(req: Request<Incoming>, mock: Arc<Mock>) -> Reply {
    let path = req.uri().path().to_owned();
    let response = Response::builder();
    if req.method() == Method::GET && path.ends_with("/runtime/invocation/next") {
        if mock.served.swap(true, Ordering::SeqCst) {
            // One invocation per process: the next poll waits until the process is killed.
            std::future::pending::<()>().await;
        }
        return response
            .header("Lambda-Runtime-Aws-Request-Id", "bench-request-1")
            .header(
                "Lambda-Runtime-Deadline-Ms",
                (fanout_shared::now_ms() + 30_000).to_string(),
            )
            .header(
                "Lambda-Runtime-Invoked-Function-Arn",
                "arn:aws:lambda:us-east-1:123456789012:function:fanout-consumer",
            )
            .header(
                "Lambda-Runtime-Trace-Id",
                "Root=1-00000000-000000000000000000000000",
            )
            .body(Full::new(mock.event.clone()))
            .map_err(std::io::Error::other);
    }
    if path.starts_with("/2018-06-01/runtime/") {
        let at = Instant::now();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let _ = mock.answers.send(Answer {
            at,
            path,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        return response
            .status(202)
            .body(Full::new(Bytes::new()))
            .map_err(std::io::Error::other);
    }
    // AWS JSON protocol (DynamoDB UpdateItem, SQS): the conditional write succeeded.
    response
        .header("content-type", "application/x-amz-json-1.0")
        .body(Full::new(Bytes::from_static(b"{}")))
        .map_err(std::io::Error::other)
}

async fn mock_server(event: Bytes) -> Result<MockServer, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let (tx, answers) = mpsc::unbounded_channel();
    let mock = Arc::new(Mock {
        event,
        served: AtomicBool::new(false),
        answers: tx,
    });
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let mock = mock.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| handle(req, mock.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(MockServer {
        port,
        answers,
        task,
    })
}

/// One cold start: (ms from spawn to the response, peak RSS, file-backed RSS then; KiB).
async fn cold_start(
    program: &Path,
    args: &[String],
    env: &[(String, String)],
    event: &Bytes,
) -> Result<(f64, u64, u64), String> {
    let mut mock = mock_server(event.clone()).await?;
    let endpoint = format!("127.0.0.1:{}", mock.port);
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_LAMBDA_RUNTIME_API", &endpoint)
        .env("AWS_ENDPOINT_URL", format!("http://{endpoint}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = command
        .spawn()
        .map_err(|e| format!("{}: {e}", program.display()))?;
    let answer = tokio::time::timeout(Duration::from_secs(20), mock.answers.recv()).await;
    let (rss, file_rss) = (peak_rss_of(child.id()), file_rss_of(child.id()));
    let _ = child.kill();
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    let answer = match answer {
        Ok(Some(answer)) => answer,
        _ => {
            return Err(format!(
                "{} never answered: {}",
                program.display(),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    };
    let failures = serde_json::from_str::<serde_json::Value>(&answer.body)
        .ok()
        .and_then(|v| v["batchItemFailures"].as_array().map(Vec::len));
    if !answer.path.ends_with("/response") || failures != Some(0) {
        return Err(format!(
            "{} answered {} with {}",
            program.display(),
            answer.path,
            answer.body
        ));
    }
    Ok((
        answer.at.duration_since(started).as_secs_f64() * 1000.0,
        rss.unwrap_or(0),
        file_rss.unwrap_or(0),
    ))
}

fn lambda_env(config: &Path) -> Vec<(String, String)> {
    [
        ("FANOUT_CONFIG", config.display().to_string()),
        ("FANOUT_TABLE_NAME", "fanout-idempotency".into()),
        (
            "FANOUT_QUEUE_URL",
            "http://127.0.0.1/123456789012/fanout-jobs".into(),
        ),
        (
            "FANOUT_DLQ_URL",
            "http://127.0.0.1/123456789012/fanout-jobs-dlq".into(),
        ),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_LAMBDA_FUNCTION_NAME", "fanout-consumer".into()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128".into()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
        (
            "AWS_LAMBDA_LOG_GROUP_NAME",
            "/aws/lambda/fanout-consumer".into(),
        ),
        ("AWS_LAMBDA_LOG_STREAM_NAME", "bench".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// The environment of a function whose config (in `scratch`) has one target on `server`, and
/// the 1-record SQS event for it.
async fn one_record(
    server: &TargetServer,
    scratch: &Scratch,
) -> Result<(Vec<(String, String)>, Bytes), String> {
    let config = ok_targets(&server.base_url(), 1, None);
    let config_path = scratch.join("fanout.json");
    std::fs::write(
        &config_path,
        serde_json::to_vec(&config).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let events = scratch.join("event.jsonl");
    write_events(&config, 1, &events).await?;
    let line = std::fs::read_to_string(&events).map_err(|e| e.to_string())?;
    Ok((
        lambda_env(&config_path),
        Bytes::from(line.trim().to_owned()),
    ))
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

/// Size of `binary` and of a zip of it named `bootstrap` (the Lambda package), bytes.
fn sizes(binary: &Path, scratch: &Scratch) -> Result<(u64, Option<u64>), String> {
    let size = std::fs::metadata(binary)
        .map_err(|e| format!("{}: {e}", binary.display()))?
        .len();
    let bootstrap = scratch.join("bootstrap");
    std::fs::copy(binary, &bootstrap).map_err(|e| e.to_string())?;
    let zip = scratch.join("bootstrap.zip");
    let zipped = Command::new("zip")
        .arg("-q")
        .arg("-j")
        .arg(&zip)
        .arg(&bootstrap)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    Ok((
        size,
        if zipped {
            std::fs::metadata(&zip).ok().map(|m| m.len())
        } else {
            None
        },
    ))
}

/// Runs figure 5: `runs` cold starts of each, interleaved.
pub(crate) async fn section(
    runs: usize,
    consumer: &Path,
    python: &Path,
    peer_dir: &Path,
) -> Result<Section, String> {
    let server = TargetServer::start().await.map_err(|e| e.to_string())?;
    let scratch = Scratch::new("coldstart")?;
    let (env, event) = one_record(&server, &scratch).await?;
    let peer_args = vec![peer_dir.join("bootstrap.py").display().to_string()];
    let (mut rust_ms, mut rust_rss, mut rust_file, mut py_ms, mut py_rss, mut py_file) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for _ in 0..runs {
        let (ms, rss, file) = cold_start(consumer, &[], &env, &event).await?;
        rust_ms.push(ms);
        rust_rss.push(rss as f64 / 1024.0);
        rust_file.push(file as f64 / 1024.0);
        let (ms, rss, file) = cold_start(python, &peer_args, &env, &event).await?;
        py_ms.push(ms);
        py_rss.push(rss as f64 / 1024.0);
        py_file.push(file as f64 / 1024.0);
    }
    let (binary, zip) = sizes(consumer, &scratch)?;
    let mib = |bytes: u64| bytes as f64 / 1024.0 / 1024.0;
    Ok(Section {
        title: "5. Cold-start proxy".into(),
        command: "target/release/fanout-bench cold-start".into(),
        workload: "A fresh process of the release `fanout-consumer` binary against a mock Lambda Runtime API and AWS \
                   endpoint on 127.0.0.1 (`AWS_LAMBDA_RUNTIME_API`, `AWS_ENDPOINT_URL`, static credentials): time from \
                   spawn to its `POST /2018-06-01/runtime/invocation/{id}/response` for a 1-record event (config read, \
                   SDK clients, HTTP client, the record's idempotency writes and its call to a local target), and the \
                   process's peak RSS (`VmHWM`) then. The Python peer's runtime loop (`bench/peer/bootstrap.py`: import \
                   Powertools, requests and the handler, then the same invocation) is measured the same way, interleaved."
            .into(),
        figures: vec![
            Figure::goal("Rust: spawn → first response", format!("{:.1} ms", median(&rust_ms)), "≤ 15 ms", median(&rust_ms) <= 15.0),
            Figure::goal("Rust: peak RSS", format!("{:.1} MiB", median(&rust_rss)), "≤ 20 MB", median(&rust_rss) * 1.048_576 <= 20.0),
            Figure::info("Rust: of the RSS, file-backed (executable and libc pages)", format!("{:.1} MiB", median(&rust_file))),
            Figure::info("Python peer: spawn → first response", format!("{:.1} ms", median(&py_ms))),
            Figure::info("Python peer: peak RSS", format!("{:.1} MiB", median(&py_rss))),
            Figure::info("Python peer: of the RSS, file-backed", format!("{:.1} MiB", median(&py_file))),
            Figure::info("peak RSS, Rust ÷ Python", format!("{:.2}", median(&rust_rss) / median(&py_rss))),
            Figure::info("release binary (stripped)", format!("{:.2} MiB", mib(binary))),
            Figure::info("zip of it as `bootstrap`", zip.map_or_else(|| "zip not installed".into(), |z| format!("{:.2} MiB", mib(z)))),
        ],
        runs: vec![
            format!("Rust ms: {}", list(&rust_ms, 1)),
            format!("Rust MiB: {}", list(&rust_rss, 1)),
            format!("Python ms: {}", list(&py_ms, 1)),
            format!("Python MiB: {}", list(&py_rss, 1)),
        ],
        notes: Vec::new(),
    })
}

/// Runs figure 11: the consumer built with the workspace's `release` profile and with the
/// `lambda-release` profile `scripts/package` uses, `runs` cold starts each, interleaved.
pub(crate) async fn profile_section(
    runs: usize,
    release: &Path,
    packaged: &Path,
) -> Result<Section, String> {
    let server = TargetServer::start().await.map_err(|e| e.to_string())?;
    let scratch = Scratch::new("profile")?;
    let (env, event) = one_record(&server, &scratch).await?;
    let (mut ms, mut rss) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    // A cold start is ~20 ms against this machine's noise of as much again: three times the
    // runs of the other figures, interleaved.
    for _ in 0..runs * 3 {
        for (i, binary) in [release, packaged].into_iter().enumerate() {
            let (t, peak, _) = cold_start(binary, &[], &env, &event).await?;
            ms[i].push(t);
            rss[i].push(peak as f64 / 1024.0);
        }
    }
    let mib = |bytes: u64| bytes as f64 / 1024.0 / 1024.0;
    let (release_size, release_zip) = sizes(release, &scratch)?;
    let (packaged_size, packaged_zip) = sizes(packaged, &scratch)?;
    let zip_ratio = release_zip
        .zip(packaged_zip)
        .map(|(r, p)| p as f64 / r as f64);
    let (init, memory) = (
        median(&ms[1]) / median(&ms[0]),
        median(&rss[1]) / median(&rss[0]),
    );
    Ok(Section {
        title: "11. Lambda release profile".into(),
        command: "target/release/fanout-bench profile".into(),
        workload: "The consumer Lambda binary built twice: with the workspace's `release` profile (what CI and the tests \
                   build) and with `lambda-release` (`Cargo.toml`: fat LTO, one codegen unit; what `scripts/package` \
                   builds for deployment). Cold starts as in figure 5, interleaved, three times the runs of the other \
                   figures; the zip is the binary as `bootstrap`."
            .into(),
        figures: vec![
            Figure::goal(
                "zip, lambda-release ÷ release",
                zip_ratio.map_or_else(|| "zip not installed".into(), |r| format!("{r:.2}")),
                "< 1",
                zip_ratio.is_some_and(|r| r < 1.0),
            ),
            Figure::goal("spawn → first response, lambda-release ÷ release", format!("{init:.2}"), "< 1", init < 1.0),
            Figure::goal("peak RSS, lambda-release ÷ release", format!("{memory:.2}"), "< 1", memory < 1.0),
            Figure::info(
                "release: binary, zip",
                format!("{:.2} MiB, {}", mib(release_size), release_zip.map_or_else(String::new, |z| format!("{:.2} MiB", mib(z)))),
            ),
            Figure::info(
                "lambda-release: binary, zip",
                format!("{:.2} MiB, {}", mib(packaged_size), packaged_zip.map_or_else(String::new, |z| format!("{:.2} MiB", mib(z)))),
            ),
            Figure::info("spawn → first response, fastest of each: lambda-release ÷ release", format!("{:.2}", min(&ms[1]) / min(&ms[0]))),
            Figure::info("release: spawn → first response, peak RSS", format!("{:.1} ms, {:.1} MiB", median(&ms[0]), median(&rss[0]))),
            Figure::info("lambda-release: spawn → first response, peak RSS", format!("{:.1} ms, {:.1} MiB", median(&ms[1]), median(&rss[1]))),
        ],
        runs: vec![
            format!("release ms: {}", list(&ms[0], 1)),
            format!("lambda-release ms: {}", list(&ms[1], 1)),
            format!("release MiB: {}", list(&rss[0], 1)),
            format!("lambda-release MiB: {}", list(&rss[1], 1)),
        ],
        notes: vec!["The profile costs a cold build of ~12 minutes on this machine (one codegen unit, whole-program \
                     optimisation at link time), so CI keeps building the workspace once with `release` and deploys \
                     those binaries into the local cloud; only `scripts/package`, which makes what is deployed, pays it."
            .into()],
    })
}
