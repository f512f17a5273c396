//! The local cloud for tests: `scripts/local-cloud` (ministack with the real CDK stack) in a
//! state directory of the test's own, taken down (by the PID the script started) when dropped,
//! also when the test fails; and the chain of AWS proxies a test puts between the deployed
//! functions and the emulator to count their requests and inject AWS faults ([`ProxyChain`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout_testkit::aws_proxy::{AwsProxy, Counts, FaultCounts, FaultPlan, Service};

/// An emulator with the stacks a test deployed into it.
#[derive(Debug)]
pub struct LocalCloud {
    root: PathBuf,
    state: PathBuf,
    bin_dir: PathBuf,
    env: Vec<(String, String)>,
    script_env: Vec<(String, String)>,
}

/// What one `scripts/local-cloud up` did.
#[derive(Debug, Clone)]
pub struct Deployed {
    /// Wall time of the whole command (packages, synth, deploy).
    pub seconds: f64,
    /// Its summary line (stderr), e.g. "stack X updated in 4.1 s (packages …, synth …)".
    pub summary: String,
}

/// Variables of the caller's shell that would point the `fanout` command elsewhere.
const FOREIGN_ENV: [&str; 10] = [
    "FANOUT_TOPIC_ARN",
    "FANOUT_PIPELINE",
    "FANOUT_QUEUE_URL",
    "FANOUT_DLQ_URL",
    "FANOUT_TABLE_NAME",
    "FANOUT_STATE",
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL_SQS",
    "AWS_ENDPOINT_URL_SNS",
];

impl LocalCloud {
    /// A local cloud with its state in a fresh temp directory named after `name`, deploying
    /// the release binaries next to this test binary. Nothing runs until [`LocalCloud::up`].
    pub fn new(name: &str) -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let root = root.canonicalize().unwrap_or(root);
        let state =
            std::env::temp_dir().join(format!("fanout-local-cloud-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        let bin_dir = crate::fanout_bin()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        for bin in ["fanout-producer", "fanout-consumer"] {
            assert!(
                bin_dir.join(bin).exists(),
                "{} is missing: the local cloud deploys the release binaries (cargo build --workspace --release --bins, as scripts/test does first)",
                bin_dir.join(bin).display()
            );
        }
        Self {
            root,
            state,
            bin_dir,
            env: Vec::new(),
            script_env: Vec::new(),
        }
    }

    /// Sets a variable of `scripts/local-cloud`'s environment, e.g.
    /// `FANOUT_LOCAL_CLOUD_FUNCTION_ENDPOINT` before the first [`LocalCloud::up`].
    pub fn script_env(&mut self, name: &str, value: &str) {
        self.script_env.push((name.to_owned(), value.to_owned()));
    }

    /// Where the emulator's state lives (`FANOUT_LOCAL_CLOUD_DIR`).
    pub fn state_dir(&self) -> PathBuf {
        self.state.clone()
    }

    fn script(&self) -> Command {
        let mut command = Command::new(self.root.join("scripts/local-cloud"));
        command
            .env("FANOUT_LOCAL_CLOUD_DIR", &self.state)
            .env_remove("FANOUT_STACK");
        command.envs(self.script_env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// `scripts/local-cloud up --config CONFIG --stack STACK -c …` (creates or updates), with
    /// the test's binaries; keeps the `export` lines it prints for [`LocalCloud::fanout`].
    /// Panics with the script's stderr if it fails.
    pub fn up(&mut self, config: &Path, stack: &str, context: &[&str]) -> Deployed {
        self.up_with(config, stack, context, &[])
    }

    /// [`LocalCloud::up`] with further pipelines in the stack, each `NAME=FILE[@EXPR]`
    /// (`scripts/local-cloud up --pipeline`).
    pub fn up_with(
        &mut self,
        config: &Path,
        stack: &str,
        context: &[&str],
        pipelines: &[String],
    ) -> Deployed {
        self.deploy(config, stack, context, pipelines)
            .unwrap_or_else(|stderr| {
                panic!("scripts/local-cloud up --stack {stack} failed:\n{stderr}")
            })
    }

    /// [`LocalCloud::up`] for a deploy that may be refused: `Err` holds the script's stderr
    /// (e.g. synth's error), and the environment of the last successful `up` stays.
    pub fn try_up(
        &mut self,
        config: &Path,
        stack: &str,
        context: &[&str],
    ) -> Result<Deployed, String> {
        self.deploy(config, stack, context, &[])
    }

    fn deploy(
        &mut self,
        config: &Path,
        stack: &str,
        context: &[&str],
        pipelines: &[String],
    ) -> Result<Deployed, String> {
        let mut command = self.script();
        command
            .arg("up")
            .arg("--config")
            .arg(config)
            .args(["--stack", stack])
            .arg("--bin-dir")
            .arg(&self.bin_dir);
        for kv in context {
            command.args(["-c", kv]);
        }
        for pipeline in pipelines {
            command.args(["--pipeline", pipeline]);
        }
        let started = Instant::now();
        let out = command.output().expect("scripts/local-cloud runs");
        let seconds = started.elapsed().as_secs_f64();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            return Err(stderr);
        }
        self.env = parse_exports(&String::from_utf8_lossy(&out.stdout));
        assert!(
            self.env.iter().any(|(k, _)| k == "AWS_ENDPOINT_URL"),
            "up printed no endpoint: {stderr}"
        );
        let summary = stderr
            .lines()
            .find(|l| l.contains(&format!("stack {stack} ")))
            .unwrap_or_default()
            .trim()
            .to_owned();
        Ok(Deployed { seconds, summary })
    }

    /// `scripts/local-cloud status`.
    pub fn status(&self) -> String {
        let out = self
            .script()
            .arg("status")
            .output()
            .expect("scripts/local-cloud runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The environment `up` exported (endpoint, region, credentials, backend, stack).
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// Runs the `fanout` command against the local cloud, with `args`.
    pub fn fanout(&self, args: &[&str]) -> Output {
        let mut command = Command::new(crate::fanout_bin());
        for name in FOREIGN_ENV {
            command.env_remove(name);
        }
        command
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(args)
            .output()
            .expect("fanout runs")
    }

    /// `fanout ARGS --json`, which must succeed, as JSON.
    pub fn fanout_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.fanout(&[args, &["--json"]].concat());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "fanout {args:?} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("fanout {args:?}: not JSON ({e}): {stdout}"))
    }

    /// The emulator's log (function output included).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.join("ministack.log")).unwrap_or_default()
    }

    /// SDK configuration for the emulator.
    pub async fn sdk(&self) -> aws_config::SdkConfig {
        let endpoint = self
            .env
            .iter()
            .find(|(k, _)| k == "AWS_ENDPOINT_URL")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        crate::sdk_at(&endpoint).await
    }
}

impl Drop for LocalCloud {
    fn drop(&mut self) {
        // `down` stops the process group of the PID `up` started, and removes the state.
        match self.script().arg("down").output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "scripts/local-cloud down failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("scripts/local-cloud down did not run: {e}"),
        }
    }
}

/// The endpoint of the emulator whose state is in `state` ([`LocalCloud::state_dir`]), once
/// `up` has started it.
pub fn emulator_endpoint(state: &Path) -> Option<String> {
    let port = std::fs::read_to_string(state.join("port")).ok()?;
    Some(format!("http://127.0.0.1:{}", port.trim()))
}

/// The deployed functions' AWS endpoint in a test that injects AWS faults: one [`AwsProxy`] per
/// service, chained in front of the emulator (the first link is the functions' endpoint,
/// `FANOUT_LOCAL_CLOUD_FUNCTION_ENDPOINT`; each link forwards to the next, the last to the
/// emulator). Each link holds the plan of its own service only, so a service's faults follow
/// the seed's draws over that service's own requests: with one proxy, the draws of a plan's
/// rules interleave over every service's requests in whatever order they arrive, and a rule of
/// a service the functions call once or twice per run (EventBridge) may never fire. With no
/// plan, every request is forwarded as it came.
#[derive(Debug)]
pub struct ProxyChain {
    links: Vec<(Service, AwsProxy)>,
}

impl ProxyChain {
    /// One link per service of `services`, in that order, each forwarding to the next; the
    /// last forwards nowhere until [`ProxyChain::set_emulator`].
    pub async fn start(services: &[Service]) -> std::io::Result<Self> {
        let mut links: Vec<(Service, AwsProxy)> = Vec::new();
        for service in services {
            let proxy = AwsProxy::start().await?;
            if let Some((_, previous)) = links.last() {
                previous.set_upstream(&proxy.url());
            }
            links.push((*service, proxy));
        }
        Ok(Self { links })
    }

    /// The endpoint to give the functions: the first link.
    pub fn url(&self) -> String {
        self.links.first().map(|(_, p)| p.url()).unwrap_or_default()
    }

    /// Where the last link forwards: the emulator.
    pub fn set_emulator(&self, url: &str) {
        if let Some((_, last)) = self.links.last() {
            last.set_upstream(url);
        }
    }

    /// Points the last link at the emulator whose state is in `state` as soon as `up` has
    /// started it (a deploy may already invoke a function): polls for its port file every
    /// 50 ms, for up to `limit`.
    pub fn follow_emulator(
        self: &Arc<Self>,
        state: PathBuf,
        limit: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let chain = Arc::clone(self);
        tokio::spawn(async move {
            let deadline = Instant::now() + limit;
            while Instant::now() < deadline {
                if let Some(endpoint) = emulator_endpoint(&state) {
                    chain.set_emulator(&endpoint);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }

    /// Installs and arms `plan` on the link of `service` (its rules should name that service:
    /// the link sees every request behind the links before it).
    pub fn set_plan(&self, service: Service, plan: FaultPlan) {
        if let Some((_, proxy)) = self.links.iter().find(|(s, _)| *s == service) {
            proxy.set_plan(plan);
        }
    }

    /// No more faults on any link.
    pub fn clear_plans(&self) {
        for (_, proxy) in &self.links {
            proxy.clear_plan();
        }
    }

    /// Every request the functions made (the first link sees them all, the ones a link
    /// answered itself included).
    pub fn counts(&self) -> Counts {
        self.links
            .first()
            .map(|(_, p)| p.counts())
            .unwrap_or_default()
    }

    /// Every fault injected, by any link.
    pub fn faults(&self) -> FaultCounts {
        let mut all = FaultCounts::new();
        for (_, proxy) in &self.links {
            for (key, n) in proxy.faults() {
                *all.entry(key).or_default() += n;
            }
        }
        all
    }

    /// Starts new counts of requests and faults on every link.
    pub fn reset_counts(&self) {
        for (_, proxy) in &self.links {
            proxy.take();
            proxy.take_faults();
        }
    }
}

/// `export A=1 B=2` lines → pairs.
fn parse_exports(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| line.strip_prefix("export "))
        .flat_map(str::split_whitespace)
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// Polls `check` every 250 ms until it returns `Some`, or panics after `limit` saying `what`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {} s waiting for {what}",
            limit.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The JSON lines the deployed functions wrote to the emulator's log after byte `from`.
pub fn function_lines(log: &str, from: usize) -> Vec<serde_json::Value> {
    log.get(from..)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn export_lines_become_pairs() {
        let pairs = super::parse_exports("export A=1 B=http://x:1\n# comment\nexport C=3\n");
        let expected: Vec<(String, String)> = [("A", "1"), ("B", "http://x:1"), ("C", "3")]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(pairs, expected);
    }
}
