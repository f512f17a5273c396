//! Row sources: lists of rows the producer reads at tick time, each row rendered through a call
//! template into one job. What to call is data, changed without a deploy; how to call it (host,
//! method, headers, secrets) stays in the config's templates, which the consumer holds too.
//!
//! A job's target ID is `<source>/<row ID>` ([`job_id`]), so its message ID is fixed by the run,
//! the source and the row: a re-run of a tick publishes the same IDs whatever order the rows
//! come in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::rows::Format;

/// One source of rows, as written in the config file (`sources`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// Unique name; the first part of each job's target ID.
    pub name: String,
    /// The template (a key of `templates`) each row fills.
    pub template: String,
    /// The row field that identifies the job (a string or an integer, unique in the source).
    pub id_field: String,
    /// Where the rows are: an S3 object (`s3://bucket/key`) or every object under a prefix
    /// (`s3://bucket/prefix/`, in key order), an HTTP list endpoint (`https://…`, see
    /// [`Source::http`]), or a local path or `file://` URL (relative paths from the config
    /// file's folder). Exactly one of `location` and `rows`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Rows written inline in the config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<Vec<Map<String, Value>>>,
    /// The rows' format; by default from the location's extension (`.jsonl`, `.json`, `.csv`,
    /// each optionally `.gz`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    /// How an HTTP list endpoint is read (headers, where the rows are in a page, pagination);
    /// only with an `http://` or `https://` location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpList>,
}

/// How the producer reads an HTTP list endpoint: GET, page after page.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpList {
    /// Headers of every page's request; `${env:NAME}` is read from the producer's environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// The config's `tick` section: values the templates' `{tick.…}` placeholders get.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TickSettings {
    /// `{tick.last_success_at}` before the pipeline's first SUCCEEDED run (RFC 3339).
    #[serde(default = "epoch")]
    pub first_last_success_at: String,
}

impl Default for TickSettings {
    fn default() -> Self {
        Self {
            first_last_success_at: epoch(),
        }
    }
}

fn epoch() -> String {
    "1970-01-01T00:00:00Z".to_owned()
}

/// Where a source's rows are read from.
#[derive(Debug, Clone, PartialEq)]
pub enum Location {
    /// Inline rows in the config.
    Inline,
    /// A local file.
    File(PathBuf),
    /// One S3 object, or every object under a prefix (a key that is empty or ends in `/`).
    S3 {
        /// The bucket.
        bucket: String,
        /// The object's key or the prefix.
        key: String,
    },
    /// An HTTP list endpoint's first page.
    Http(url::Url),
    /// `lists://KEY`: an object (or, ending in `/`, a prefix) in the pipeline's list home
    /// ([`ListsHome`]); see [`Location::in_home`].
    Lists(String),
}

impl Location {
    /// Whether it names every object under a prefix rather than one object.
    pub fn is_prefix(&self) -> bool {
        match self {
            Location::S3 { key, .. } => key.is_empty() || key.ends_with('/'),
            Location::Lists(key) => key.ends_with('/'),
            _ => false,
        }
    }

    /// A `lists://` location made concrete: in the stack's list home `home` (S3), or without
    /// one (the embedded backend, `fanout run`) in the folder `lists/` beside the config file,
    /// so one config reads the same list names locally and deployed. Others stay as they are.
    pub fn in_home(self, home: Option<&ListsHome>, base: &Path) -> Location {
        match (self, home) {
            (Location::Lists(key), Some(home)) => Location::S3 {
                bucket: home.bucket.clone(),
                key: format!("{}{key}", home.prefix),
            },
            (Location::Lists(key), None) => Location::File(base.join("lists").join(key)),
            (other, _) => other,
        }
    }
}

/// The pipeline's list home: the bucket and prefix the stack creates (or is given) for lists
/// and grants the producer read access to (`FANOUT_LISTS`, the stack's `ListsLocation`
/// output). `lists://KEY` sources and `fanout targets push` use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListsHome {
    /// The bucket.
    pub bucket: String,
    /// The prefix, empty or ending in `/`.
    pub prefix: String,
}

impl ListsHome {
    /// Parses `s3://bucket/prefix/` (the prefix may be empty).
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = text
            .strip_prefix("s3://")
            .ok_or_else(|| format!("{text:?}: the list home is an s3://bucket/prefix/ URL"))?;
        match s3_location(rest)? {
            Location::S3 { bucket, key } if key.is_empty() || key.ends_with('/') => Ok(Self {
                bucket,
                prefix: key,
            }),
            _ => Err(format!("{text:?}: the list home's prefix must end in `/`")),
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Inline => f.write_str("inline"),
            Location::File(path) => write!(f, "{}", path.display()),
            Location::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
            Location::Http(url) => write!(f, "{url}"),
            Location::Lists(key) => write!(f, "lists://{key}"),
        }
    }
}

impl Source {
    /// Where the rows are, with a relative path resolved against `base` (the config file's
    /// folder), or why the location cannot be read.
    pub fn location(&self, base: &Path) -> Result<Location, String> {
        match (&self.location, &self.rows) {
            (None, Some(_)) => Ok(Location::Inline),
            (Some(_), Some(_)) => Err("set one of `location` and `rows`, not both".into()),
            (None, None) => Err("set `location` (where the rows are) or `rows`".into()),
            (Some(raw), None) => {
                let path = match raw.split_once("://") {
                    None => raw.as_str(),
                    Some(("file", path)) => path,
                    Some(("s3", rest)) => return s3_location(rest),
                    Some(("lists", key)) if key.is_empty() || key.starts_with('/') => {
                        return Err(format!(
                            "{raw:?}: name a key in the list home, e.g. lists://customers.jsonl"
                        ))
                    }
                    Some(("lists", key)) => return Ok(Location::Lists(key.to_owned())),
                    Some(("http" | "https", _)) => {
                        return url::Url::parse(raw)
                            .map(Location::Http)
                            .map_err(|e| format!("{raw:?} is not a URL: {e}"))
                    }
                    Some((scheme, _)) => {
                        return Err(format!(
                            "scheme {scheme}:// is not supported: give s3://, https://, a path or \
                             a file:// URL"
                        ))
                    }
                };
                if path.is_empty() {
                    return Err("the location is empty".into());
                }
                let path = Path::new(path);
                Ok(Location::File(if path.is_absolute() {
                    path.to_owned()
                } else {
                    base.join(path)
                }))
            }
        }
    }

    /// The rows' format of an input named `name` (a path, an S3 key, a URL).
    pub fn format_of(&self, name: &str) -> Result<Format, String> {
        Format::resolve(self.format, name)
    }
}

/// `s3://` then `rest`: a bucket, then an object's key or a prefix.
fn s3_location(rest: &str) -> Result<Location, String> {
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    let valid_bucket = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    if !valid_bucket {
        return Err(format!(
            "s3://{rest}: {bucket:?} is not a bucket name (3 to 63 lowercase letters, digits, \
             `.` and `-`)"
        ));
    }
    Ok(Location::S3 {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
    })
}

/// The target ID of the job for row `row_id` of source `source`.
pub fn job_id(source: &str, row_id: &str) -> String {
    format!("{source}/{row_id}")
}

/// A row's ID: its `id_field` as text (a string, or an integer's digits).
pub fn row_id(row: &Map<String, Value>, id_field: &str) -> Result<String, String> {
    match row.get(id_field) {
        None => Err(format!("no field `{id_field}` (the source's id_field)")),
        Some(Value::String(s)) if s.is_empty() => Err(format!("field `{id_field}` is empty")),
        Some(Value::String(s)) if s.chars().any(char::is_control) => {
            Err(format!("field `{id_field}` holds a control character"))
        }
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
        Some(other) => Err(format!(
            "field `{id_field}` must be a string or an integer, got {}",
            kind(other)
        )),
    }
}

/// The fields of `row` a template with `placeholders` needs: what a job message carries.
pub fn needed_values(
    row: &Map<String, Value>,
    placeholders: &std::collections::BTreeSet<String>,
) -> Map<String, Value> {
    placeholders
        .iter()
        .filter_map(|name| Some((name.clone(), row.get(name)?.clone())))
        .collect()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Sources by name, for lookups.
pub(crate) fn by_name(sources: &[Source]) -> BTreeMap<&str, &Source> {
    sources.iter().map(|s| (s.name.as_str(), s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn source(location: Option<&str>, rows: bool) -> Source {
        Source {
            name: "customers".into(),
            template: "sync".into(),
            id_field: "id".into(),
            location: location.map(str::to_owned),
            rows: rows.then(Vec::new),
            format: None,
            http: None,
        }
    }

    #[test]
    fn locations_resolve_against_the_config_folder() {
        let base = Path::new("/etc/fanout");
        assert_eq!(
            source(Some("lists/a.jsonl"), false).location(base),
            Ok(Location::File("/etc/fanout/lists/a.jsonl".into()))
        );
        assert_eq!(
            source(Some("file:///data/a.csv"), false).location(base),
            Ok(Location::File("/data/a.csv".into()))
        );
        assert_eq!(source(None, true).location(base), Ok(Location::Inline));
        assert_eq!(
            source(Some("s3://lists-1/daily/"), false).location(base),
            Ok(Location::S3 {
                bucket: "lists-1".into(),
                key: "daily/".into()
            })
        );
        assert!(source(Some("s3://lists-1/daily/"), false)
            .location(base)
            .is_ok_and(|l| l.is_prefix()));
        assert!(source(Some("s3://lists-1/a.jsonl"), false)
            .location(base)
            .is_ok_and(|l| !l.is_prefix() && l.to_string() == "s3://lists-1/a.jsonl"));
        assert!(source(Some("s3://Bad_Bucket/a"), false)
            .location(base)
            .unwrap_err()
            .contains("bucket name"));
        assert!(matches!(
            source(Some("https://lists.example.com/v1/customers"), false).location(base),
            Ok(Location::Http(_))
        ));
        let home = ListsHome::parse("s3://lists-1/fanout/").unwrap();
        let lists = source(Some("lists://daily/a.jsonl"), false)
            .location(base)
            .unwrap();
        assert_eq!(lists.to_string(), "lists://daily/a.jsonl");
        assert_eq!(
            lists.clone().in_home(Some(&home), base).to_string(),
            "s3://lists-1/fanout/daily/a.jsonl"
        );
        assert_eq!(
            lists.in_home(None, base),
            Location::File("/etc/fanout/lists/daily/a.jsonl".into())
        );
        assert!(source(Some("lists://"), false).location(base).is_err());
        assert!(ListsHome::parse("s3://lists-1/no-slash").is_err());
        assert!(ListsHome::parse("https://x/").is_err());
        assert!(source(Some("ftp://x/a"), false)
            .location(base)
            .unwrap_err()
            .contains("ftp://"));
        assert!(source(Some("a.jsonl"), true).location(base).is_err());
        assert!(source(None, false).location(base).is_err());
    }

    #[test]
    fn row_ids_are_strings_or_integers() {
        let row = |v: Value| json!({ "id": v }).as_object().cloned().unwrap_or_default();
        assert_eq!(row_id(&row(json!("c-1")), "id"), Ok("c-1".into()));
        assert_eq!(row_id(&row(json!(42)), "id"), Ok("42".into()));
        for bad in [
            json!(""),
            json!(1.5),
            json!(null),
            json!([1]),
            json!("a\nb"),
        ] {
            assert!(row_id(&row(bad.clone()), "id").is_err(), "{bad}");
        }
        assert!(row_id(&Map::new(), "id")
            .unwrap_err()
            .contains("no field `id`"));
        assert_eq!(job_id("customers", "c-1"), "customers/c-1");
    }
}
