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

use crate::netguard;
use crate::rows::{Format, FormatError};
use crate::target_rules::FieldError;

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

/// How the producer reads an HTTP list endpoint: GET, page after page, each page one JSON
/// document whose rows are an array of objects.
///
/// A page's next page is, with [`HttpList::next_cursor`], the location again with the cursor
/// found in the page as the query parameter [`HttpList::cursor_param`]; without it, the URL of
/// the response's `Link: <…>; rel="next"` header. No cursor (absent, `null` or `""`) or no such
/// header ends the list. Every page and every redirect meets the SSRF guard and the list's
/// allow-list (the location's host plus the config's allowed hosts), and a page that leads back
/// to a page already read (a cursor loop) fails the source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpList {
    /// Headers of every page's request; `${env:NAME}` is read from the producer's environment
    /// when the request is made, so a secret is never in the config, a log or an error. They are
    /// dropped on a redirect to another origin.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Where a page's rows are: a JSON pointer (`/data`, `/result/items`) to an array of
    /// objects. Default: the page itself is the array.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_at: Option<String>,
    /// Where a page's next cursor is, as a JSON pointer (`/next_cursor`, `/meta/next`): a
    /// string or an integer. Default: pages link with a `Link: <…>; rel="next"` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// The query parameter the cursor is sent back in (only with `next_cursor`). Default:
    /// `cursor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor_param: Option<String>,
    /// The most pages read: a list that goes on past them fails the source, naming the limit
    /// (an endpoint that pages forever must not keep a tick reading).
    #[serde(default = "default_max_pages")]
    pub max_pages: u32,
    /// Each page's time limit (request, redirects and body), in milliseconds.
    #[serde(default = "default_page_timeout_ms")]
    pub timeout_ms: u64,
}

impl Default for HttpList {
    fn default() -> Self {
        Self {
            headers: BTreeMap::new(),
            rows_at: None,
            next_cursor: None,
            cursor_param: None,
            max_pages: default_max_pages(),
            timeout_ms: default_page_timeout_ms(),
        }
    }
}

fn default_max_pages() -> u32 {
    1000
}

fn default_page_timeout_ms() -> u64 {
    30_000
}

/// The longest `http.timeout_ms`: a page that takes longer is better split.
const MAX_PAGE_TIMEOUT_MS: u64 = 15 * 60 * 1000;

impl HttpList {
    /// The query parameter a cursor is sent back in.
    pub fn cursor_param(&self) -> &str {
        self.cursor_param.as_deref().unwrap_or("cursor")
    }

    /// What breaks a rule, each naming its field (`http.rows_at`, …).
    fn problems(&self) -> Vec<FieldError> {
        let mut problems = Vec::new();
        for (name, value) in &self.headers {
            if let Err(e) = crate::target_rules::check_header(name, value) {
                problems.push(FieldError::new("http.headers", e.to_string()));
            }
        }
        for (field, pointer) in [
            ("http.rows_at", &self.rows_at),
            ("http.next_cursor", &self.next_cursor),
        ] {
            if let Some(pointer) = pointer.as_deref().filter(|p| !p.starts_with('/')) {
                problems.push(FieldError::new(
                    field,
                    format!(
                        "{pointer:?} is not a JSON pointer: it starts with `/` (`/data`; leave \
                         the field out for the default)"
                    ),
                ));
            }
        }
        match (&self.cursor_param, &self.next_cursor) {
            (Some(_), None) => problems.push(FieldError::new(
                "http.cursor_param",
                "only with `next_cursor` (where the page's cursor is)",
            )),
            (Some(param), Some(_)) if param.is_empty() => {
                problems.push(FieldError::new("http.cursor_param", "is empty"));
            }
            _ => {}
        }
        if self.max_pages == 0 {
            problems.push(FieldError::new("http.max_pages", "must be at least 1"));
        }
        if !(1..=MAX_PAGE_TIMEOUT_MS).contains(&self.timeout_ms) {
            problems.push(FieldError::new(
                "http.timeout_ms",
                format!("must be 1..={MAX_PAGE_TIMEOUT_MS}, got {}", self.timeout_ms),
            ));
        }
        problems
    }
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

/// Why a location cannot be used: a source's `location` (or its `rows`), or the list home
/// (`FANOUT_LISTS`, the stack's `ListsLocation`). The config names the source and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    /// Both `location` and `rows`.
    #[error("set one of `location` and `rows`, not both")]
    Both,
    /// Neither `location` nor `rows`.
    #[error("set `location` (where the rows are) or `rows`")]
    Neither,
    /// An empty path.
    #[error("the location is empty")]
    Empty,
    /// `lists://` without a key.
    #[error("{0:?}: name a key in the list home, e.g. lists://customers.jsonl")]
    NoListsKey(String),
    /// An `http://` or `https://` location that does not parse.
    #[error("{raw:?} is not a URL: {reason}")]
    NotUrl {
        /// The location.
        raw: String,
        /// The parser's objection.
        reason: url::ParseError,
    },
    /// A scheme no reader knows.
    #[error("scheme {0}:// is not supported: give s3://, https://, a path or a file:// URL")]
    Scheme(String),
    /// `s3://` with a bucket name S3 would refuse.
    #[error(
        "s3://{rest}: {bucket:?} is not a bucket name (3 to 63 lowercase letters, digits, `.` \
         and `-`)"
    )]
    Bucket {
        /// What follows `s3://`.
        rest: String,
        /// The bucket part of it.
        bucket: String,
    },
    /// A list home that is not an `s3://` URL.
    #[error("{0:?}: the list home is an s3://bucket/prefix/ URL")]
    HomeNotS3(String),
    /// A list home whose prefix does not end in `/` (keys are appended to it).
    #[error("{0:?}: the list home's prefix must end in `/`")]
    HomeNotPrefix(String),
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
    pub fn parse(text: &str) -> Result<Self, LocationError> {
        let rest = text
            .strip_prefix("s3://")
            .ok_or_else(|| LocationError::HomeNotS3(text.to_owned()))?;
        match s3_location(rest)? {
            Location::S3 { bucket, key } if key.is_empty() || key.ends_with('/') => Ok(Self {
                bucket,
                prefix: key,
            }),
            _ => Err(LocationError::HomeNotPrefix(text.to_owned())),
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
    pub fn location(&self, base: &Path) -> Result<Location, LocationError> {
        match (&self.location, &self.rows) {
            (None, Some(_)) => Ok(Location::Inline),
            (Some(_), Some(_)) => Err(LocationError::Both),
            (None, None) => Err(LocationError::Neither),
            (Some(raw), None) => {
                let path = match raw.split_once("://") {
                    None => raw.as_str(),
                    Some(("file", path)) => path,
                    Some(("s3", rest)) => return s3_location(rest),
                    Some(("lists", key)) if key.is_empty() || key.starts_with('/') => {
                        return Err(LocationError::NoListsKey(raw.clone()))
                    }
                    Some(("lists", key)) => return Ok(Location::Lists(key.to_owned())),
                    Some(("http" | "https", _)) => {
                        return url::Url::parse(raw).map(Location::Http).map_err(|reason| {
                            LocationError::NotUrl {
                                raw: raw.clone(),
                                reason,
                            }
                        })
                    }
                    Some((scheme, _)) => return Err(LocationError::Scheme(scheme.to_owned())),
                };
                if path.is_empty() {
                    return Err(LocationError::Empty);
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

    /// What breaks a rule of an HTTP list at `place` (the source's location): its `http`
    /// section, and the location itself (no `user:password@`, which would be printed wherever
    /// the location is; an address the SSRF guard refuses unless `allow_private`). An `http`
    /// section on another location is an error too.
    pub fn http_problems(&self, place: &Location, allow_private: bool) -> Vec<FieldError> {
        let Location::Http(url) = place else {
            return match self.http {
                Some(_) => vec![FieldError::new(
                    "http",
                    "only with an http:// or https:// location",
                )],
                None => Vec::new(),
            };
        };
        let mut problems = self
            .http
            .as_ref()
            .map(HttpList::problems)
            .unwrap_or_default();
        if !url.username().is_empty() || url.password().is_some() {
            problems.push(FieldError::new(
                "location",
                "credentials (user:password@) in the URL would be printed in logs and errors: \
                 remove them and use a header, e.g. \"Authorization\": \"Basic ${env:NAME}\" in \
                 `http.headers`",
            ));
        }
        match url.host() {
            None => problems.push(FieldError::new("location", "the URL has no host")),
            Some(host) if !allow_private => {
                if let Err(e) = netguard::check_literal_host(&host) {
                    problems.push(FieldError::new(
                        "location",
                        format!("{e}; set allow_private_networks to read it"),
                    ));
                }
            }
            Some(_) => {}
        }
        if self.format.is_some_and(|f| f != Format::JsonArray) {
            problems.push(FieldError::new(
                "format",
                "an HTTP list's pages are JSON documents: leave `format` out",
            ));
        }
        problems
    }

    /// The rows' format of an input named `name` (a path, an S3 key, a URL).
    pub fn format_of(&self, name: &str) -> Result<Format, FormatError> {
        Format::resolve(self.format, name)
    }
}

/// `s3://` then `rest`: a bucket, then an object's key or a prefix.
fn s3_location(rest: &str) -> Result<Location, LocationError> {
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    let valid_bucket = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    if !valid_bucket {
        return Err(LocationError::Bucket {
            rest: rest.to_owned(),
            bucket: bucket.to_owned(),
        });
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

/// Why a row has no usable ID: its job could have no stable target ID, hence no stable
/// message ID. Each names the source's `id_field`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowIdError {
    /// The row lacks the field.
    #[error("no field `{0}` (the source's id_field)")]
    Missing(String),
    /// An empty string.
    #[error("field `{0}` is empty")]
    Empty(String),
    /// A string with a control character, which would garble logs and reasons.
    #[error("field `{0}` holds a control character")]
    ControlCharacter(String),
    /// Neither a string nor an integer.
    #[error("field `{field}` must be a string or an integer, got {found}")]
    WrongType {
        /// The field.
        field: String,
        /// What it is, e.g. `a number`, `null` ([`crate::rows::json_kind`]).
        found: &'static str,
    },
}

/// A row's ID: its `id_field` as text (a string, or an integer's digits).
pub fn row_id(row: &Map<String, Value>, id_field: &str) -> Result<String, RowIdError> {
    let field = || id_field.to_owned();
    match row.get(id_field) {
        None => Err(RowIdError::Missing(field())),
        Some(Value::String(s)) if s.is_empty() => Err(RowIdError::Empty(field())),
        Some(Value::String(s)) if s.chars().any(char::is_control) => {
            Err(RowIdError::ControlCharacter(field()))
        }
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
        Some(other) => Err(RowIdError::WrongType {
            field: field(),
            found: crate::rows::json_kind(other),
        }),
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
            .to_string()
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
            .to_string()
            .contains("ftp://"));
        assert!(source(Some("a.jsonl"), true).location(base).is_err());
        assert!(source(None, false).location(base).is_err());
    }

    /// The config errors of a config whose one source is `source` (JSON), one per line.
    fn source_errors(source: Value, allow_private: bool) -> String {
        let text = json!({
            "allow_private_networks": allow_private,
            "templates": { "sync": { "url": "https://api.example.com/c/{id}" } },
            "sources": [source]
        });
        match crate::PipelineConfig::parse(&text.to_string(), false, "fanout.json") {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn http_sections_are_validated_naming_the_field() {
        let http = |location: &str, http: Value| {
            json!({ "name": "c", "template": "sync", "id_field": "id", "location": location,
                    "http": http })
        };
        let good = http(
            "https://lists.example.com/v1/customers?limit=100",
            json!({ "headers": { "Authorization": "Bearer ${env:LIST_TOKEN}" },
                    "rows_at": "/data", "next_cursor": "/meta/next", "cursor_param": "after",
                    "max_pages": 50, "timeout_ms": 5000 }),
        );
        assert_eq!(source_errors(good.clone(), false), "");
        let parsed: Source = serde_json::from_value(good).unwrap();
        let settings = parsed.http.unwrap();
        assert_eq!((settings.cursor_param(), settings.max_pages), ("after", 50));
        let defaults = HttpList::default();
        assert_eq!(
            (
                defaults.cursor_param(),
                defaults.max_pages,
                defaults.timeout_ms
            ),
            ("cursor", 1000, 30_000)
        );
        let loc = r#"fanout.json: sources[0] (name "c")"#;
        let cases = [
            (
                http("lists/a.jsonl", json!({})),
                format!("{loc}: field `http`: only with an http:// or https:// location"),
            ),
            (
                http("https://l.example.com/", json!({ "rows_at": "data" })),
                format!(
                    "{loc}: field `http.rows_at`: \"data\" is not a JSON pointer: it starts \
                     with `/` (`/data`; leave the field out for the default)"
                ),
            ),
            (
                http("https://l.example.com/", json!({ "next_cursor": "" })),
                format!("{loc}: field `http.next_cursor`: \"\" is not a JSON pointer"),
            ),
            (
                http("https://l.example.com/", json!({ "cursor_param": "after" })),
                format!("{loc}: field `http.cursor_param`: only with `next_cursor`"),
            ),
            (
                http("https://l.example.com/", json!({ "max_pages": 0 })),
                format!("{loc}: field `http.max_pages`: must be at least 1"),
            ),
            (
                http("https://l.example.com/", json!({ "timeout_ms": 0 })),
                format!("{loc}: field `http.timeout_ms`: must be 1..=900000, got 0"),
            ),
            (
                http(
                    "https://l.example.com/",
                    json!({ "headers": { "X": "${TOKEN}" } }),
                ),
                format!("{loc}: field `http.headers`: header X: placeholder ${{TOKEN}} must be"),
            ),
            (
                http("https://u:pw@l.example.com/", json!({})),
                format!("{loc}: field `location`: credentials (user:password@) in the URL"),
            ),
            (
                http("http://169.254.169.254/latest", json!({})),
                format!(
                    "{loc}: field `location`: 169.254.169.254 is a link-local address \
                     (metadata endpoint range); set allow_private_networks to read it"
                ),
            ),
            (
                http("https://l.example.com/", json!({ "page_size": 5 })),
                "unknown field `page_size`".to_owned(),
            ),
        ];
        for (source, expected) in cases {
            let errors = source_errors(source, false);
            assert!(errors.contains(&expected), "{expected:?} not in:\n{errors}");
        }
        let mut csv = http("https://l.example.com/", json!({}));
        csv["format"] = json!("csv");
        assert!(source_errors(csv, false)
            .contains("field `format`: an HTTP list's pages are JSON documents"));
        assert_eq!(
            source_errors(http("http://127.0.0.1:8080/list", json!({})), true),
            "",
            "allow_private_networks lets a list be read from loopback"
        );
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
            .to_string()
            .contains("no field `id`"));
        assert_eq!(job_id("customers", "c-1"), "customers/c-1");
    }
}
