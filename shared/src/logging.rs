//! JSON logs through `tracing`, the shape CloudWatch Logs Insights queries well.

use tracing_subscriber::EnvFilter;

/// Installs a JSON subscriber on stdout. The level comes from `RUST_LOG`, else Lambda's
/// `AWS_LAMBDA_LOG_LEVEL`, else `info`. Safe to call twice (the second call does nothing).
pub fn init_json() {
    init_json_to(std::io::stdout);
}

/// [`init_json`], writing to `writer` instead of stdout (tests read the logs back this way).
pub fn init_json_to<W>(writer: W)
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env()
        .ok()
        .or_else(|| lambda_level(std::env::var("AWS_LAMBDA_LOG_LEVEL").ok()))
        .unwrap_or_else(|| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(false)
        .without_time()
        .with_writer(writer)
        .try_init();
}

/// The filter of Lambda's `AWS_LAMBDA_LOG_LEVEL`; none when it is unset, empty (an emulator
/// that does not set it: an empty filter would drop every line) or not a level.
fn lambda_level(level: Option<String>) -> Option<EnvFilter> {
    let level = level?.trim().to_lowercase();
    if level.is_empty() {
        return None;
    }
    EnvFilter::try_new(level).ok()
}

/// Installs a human-readable subscriber on stderr for the CLI (`RUST_LOG`, default `warn`).
pub fn init_human() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unset_or_empty_lambda_level_leaves_the_default_in_charge() {
        assert!(lambda_level(None).is_none());
        assert!(lambda_level(Some(String::new())).is_none());
        assert!(lambda_level(Some("  ".into())).is_none());
        assert_eq!(
            lambda_level(Some("DEBUG".into())).map(|f| f.to_string()),
            Some("debug".to_owned())
        );
    }
}
