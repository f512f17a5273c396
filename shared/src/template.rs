//! Call templates: one HTTP call per data row, rendered from a template the config declares
//! (issue 25, "Targets are data").
//!
//! A [`Template`] is the config form: a URL, method, headers, body and timeout whose text may hold
//! `{name}` placeholders. [`Template::compile`] checks it once (with the config's
//! [`Defaults`] applied, as for literal targets) into a
//! [`CompiledTemplate`], whose [`render`](CompiledTemplate::render) turns one row (a JSON object)
//! and the tick's [`TickValues`] into a [`JobTarget`], or says why the row is bad ([`RowError`]).
//!
//! # Syntax
//!
//! - `{name}` is a placeholder, `name` being `[A-Za-z_][A-Za-z0-9_.-]*`. It names a field of the
//!   row, looked up as written (`{customer.id}` is the field `"customer.id"`, not a nested one).
//! - `{tick.scheduled_at}`, `{tick.run_id}` and `{tick.last_success_at}` are the tick's values
//!   (RFC 3339 times and the run ID, supplied by the producer); any other `tick.` name is refused.
//! - `{{` and `}}` are a literal `{` and `}`; any other brace is an error, so a typo never turns
//!   into text that silently goes out as is.
//! - `${env:NAME}` is the consumer's secret syntax and is **not** a placeholder: it may stand in a
//!   header value only, and stays in the rendered call for the consumer to resolve from its own
//!   environment. A row placeholder inside it (`${env:{x}}`) is refused, and so is `${` anywhere
//!   else (write `${{` for a literal `${` in a URL or a body).
//! - Every string of the template is template text, body object keys included; the
//!   [`Defaults`]' headers are literal text (they are shared with literal
//!   targets, where a brace is just a brace).
//!
//! # Why a row can never change what is called beyond its placeholders
//!
//! A row comes from a list the pipeline reads at tick time (an S3 object, an HTTP endpoint), so
//! its values are untrusted input; the template is the config author's. The rules:
//!
//! - **Structure first.** The template URL is split on its raw text, before any value is
//!   substituted, into scheme, authority, path segments, query pairs and fragment. A placeholder
//!   name holds none of the delimiters (`:/?#&=@`), so no placeholder spans two parts. The
//!   scheme, the authority (userinfo, host, port), a query key, the fragment and a header name are
//!   never placeholders: `compile` refuses them. Placeholders stand only in a path segment (whole
//!   or part), a query value, a header value and a JSON body string.
//! - **A value is exactly its component.** In a path segment or a query value, every byte of a
//!   value except RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`) is percent-encoded,
//!   upper-case hex; non-ASCII text as its UTF-8 bytes. So `/ ? # & = + ; @ : \ %`, spaces, CR,
//!   LF and NUL can never become a delimiter, and a value's `%2F` arrives as `%252F`. In the
//!   template's own URL text every `%` must start a `%XX` escape before the next placeholder (write
//!   `%25` for a literal `%`), so a value can never complete an escape the template began.
//! - **No dot-segments, no empty segments.** A rendered path segment that holds a placeholder may
//!   not be `.` or `..` (nor their `%2E` spellings: WHATWG URL parsers, the consumer's included,
//!   remove `%2E%2E` exactly like `..`, so encoding cannot make those safe), nor empty (`//`,
//!   which servers may collapse, and `DELETE /customers/{id}` with an empty `id` would become
//!   `DELETE /customers/`). Such a row is bad.
//! - **Checked again after rendering.** The rendered URL is parsed and must have the template's
//!   scheme, host, port, number of path segments, literal segments, query keys (in order) and
//!   fragment; anything else is an internal error and the row is refused (a defence in depth: the
//!   rules above already make it impossible).
//! - **Headers.** A value in a header value is text: a control character (CR, LF, NUL, tab, DEL,
//!   C1) is a bad row, so a row can never add a header or split a request. A value may not hold
//!   `${` and the rendered header value must hold exactly the template's `${env:…}` references, so
//!   a row can never make the consumer put one of its secrets in a call.
//! - **Body.** A body string that is exactly one placeholder (`"{amount}"`) becomes the row's JSON
//!   value with its type; a string with text around placeholders becomes a string. A value is
//!   never parsed as JSON: a row's `"{\"a\":1}"` stays a string, and serialization escapes it.
//! - **Rules of literal targets.** The call with a sample value in every placeholder must pass
//!   the same URL, method, timeout and header rules as a literal target ([`crate::target_rules`]),
//!   and so must every rendered call ([`JobTarget::check`]).
//!
//! # Types
//!
//! Strings render as they are (then encoded for their place), numbers and booleans as their JSON
//! text as `serde_json` writes it (`12`, `1.5`, `1e+300`, `true`). `null`, objects and arrays can
//! stand only where a body string is exactly one placeholder; anywhere else they are a wrong type.
//! Non-ASCII text is fine everywhere: percent-encoded as UTF-8 in the URL, sent as UTF-8 bytes in
//! a header value.
//!
//! # Limits
//!
//! - A value in the URL: at most [`MAX_URL_VALUE_BYTES`] (2 KiB) of text before encoding (at most
//!   6 KiB encoded); the whole rendered URL: at most [`MAX_URL_BYTES`] (8 KiB), what common
//!   servers and CDNs accept in a request line.
//! - A value in a header, and a rendered header value: at most [`MAX_HEADER_VALUE_BYTES`]
//!   (8 KiB), the usual per-header limit of servers.
//! - Body values have no limit of their own: the job message must fit SNS's 256 KiB, which the
//!   producer checks on the encoded message.
//!
//! Longer values are a bad row ([`RowError::TooLong`]), never truncated.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::Defaults;
use crate::job::JobTarget;
use crate::target_rules::{self, FieldError, HTTP_METHODS, MAX_TIMEOUT_MS};

/// Longest value (bytes of text, before percent-encoding) a placeholder may put in a URL.
pub(crate) const MAX_URL_VALUE_BYTES: usize = 2 * 1024;
/// Longest rendered URL.
pub(crate) const MAX_URL_BYTES: usize = 8 * 1024;
/// Longest value a placeholder may put in a header, and longest rendered header value.
pub(crate) const MAX_HEADER_VALUE_BYTES: usize = 8 * 1024;

/// What a value is encoded with in a path segment or a query value: everything but RFC 3986's
/// unreserved characters.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The value every placeholder gets when `compile` checks the template's literal parts.
const SAMPLE: &str = "x";

/// A call template, as written in the config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// `http` or `https` URL; placeholders in path segments and query values only.
    pub url: String,
    /// HTTP method (defaults apply); never a placeholder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Extra headers (a template's header replaces a default of any case); placeholders and
    /// `${env:NAME}` references in values only.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// JSON body; placeholders in string values only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// Per-call timeout (defaults apply); never a placeholder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// The tick's values, for `{tick.…}` placeholders. The producer supplies them; they are rendered
/// with the same encoding and checks as row values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TickValues {
    /// `{tick.scheduled_at}`: the tick's scheduled time, RFC 3339.
    pub scheduled_at: String,
    /// `{tick.run_id}`: the run's ID.
    pub run_id: String,
    /// `{tick.last_success_at}`: the scheduled time of the pipeline's last SUCCEEDED run, RFC
    /// 3339 (the configured default before the first one).
    pub last_success_at: String,
}

/// Why a row cannot be rendered. Each names the row field at fault (or, where no single field
/// is, the template's part) and where its value was going; none quotes the value (it may be
/// large, or private).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    /// The row has no such field.
    #[error("row has no field `{field}` (needed in {place})")]
    Missing {
        /// The row field.
        field: String,
        /// Where it was going: `URL path segment 2`, `URL query value "q"`, `header
        /// "X-Id"`, `body at "/a/0"`.
        place: String,
    },
    /// The field's JSON type cannot stand there (null, an object or an array in text).
    #[error("field `{field}` is {found}, which cannot stand in {place} (a string, number or boolean can)")]
    WrongType {
        /// The row field.
        field: String,
        /// Where it was going.
        place: String,
        /// `null`, `an object` or `an array`.
        found: &'static str,
    },
    /// A value (or the rendered URL or header value) is longer than its place allows.
    #[error("field `{field}` is {bytes} bytes, over the {limit}-byte limit of {place}")]
    TooLong {
        /// The row field, or `url` / `headers` for a whole rendered URL or header value.
        field: String,
        /// Where it was going.
        place: String,
        /// Its length in bytes.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// A value its place cannot carry safely: a control character or `${` in a header, a path
    /// segment that would be empty or a dot-segment.
    #[error("field `{field}` in {place}: {reason}")]
    Refused {
        /// The row field.
        field: String,
        /// Where it was going.
        place: String,
        /// Why.
        reason: String,
    },
    /// The rendered call breaks a target rule ([`JobTarget::check`]); `field` names the
    /// target's field (`id`, `url`, `headers`).
    #[error("the rendered call's {0}")]
    Target(FieldError),
    /// Internal error: the rendered URL does not have the template's shape. The rules make this
    /// impossible; the check is a defence in depth, and the row is refused.
    #[error("internal error: the rendered URL {0}; the row is refused")]
    Shape(String),
}

impl RowError {
    /// The row field at fault, or the template's part (`url`, `headers`, `id`, …) when no
    /// single row field is.
    pub fn field(&self) -> &str {
        match self {
            RowError::Missing { field, .. }
            | RowError::WrongType { field, .. }
            | RowError::TooLong { field, .. }
            | RowError::Refused { field, .. } => field,
            RowError::Target(e) => e.field,
            RowError::Shape(_) => "url",
        }
    }
}

/// A checked template, ready to render rows.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledTemplate {
    url: UrlTemplate,
    method: String,
    timeout_ms: u64,
    headers: Vec<(String, HeaderTemplate)>,
    body: Option<BodyNode>,
}

/// A placeholder's name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Name {
    /// A row field.
    Row(String),
    /// A tick value.
    Tick(Tick),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tick {
    ScheduledAt,
    RunId,
    LastSuccessAt,
}

impl Tick {
    const ALL: [Tick; 3] = [Tick::ScheduledAt, Tick::RunId, Tick::LastSuccessAt];

    fn name(self) -> &'static str {
        match self {
            Tick::ScheduledAt => "tick.scheduled_at",
            Tick::RunId => "tick.run_id",
            Tick::LastSuccessAt => "tick.last_success_at",
        }
    }

    fn value(self, tick: &TickValues) -> &str {
        match self {
            Tick::ScheduledAt => &tick.scheduled_at,
            Tick::RunId => &tick.run_id,
            Tick::LastSuccessAt => &tick.last_success_at,
        }
    }
}

impl Name {
    fn as_str(&self) -> &str {
        match self {
            Name::Row(name) => name,
            Name::Tick(tick) => tick.name(),
        }
    }
}

/// A piece of template text: literal text (braces unescaped) or a placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Field(Name),
}

type Text = Vec<Piece>;

fn has_field(text: &[Piece]) -> bool {
    text.iter().any(|p| matches!(p, Piece::Field(_)))
}

/// Which syntax a piece of template text follows: header values also hold `${env:NAME}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Syntax {
    Plain,
    Header,
}

/// Why a piece of template text does not parse: a brace, a `${…}` or a `%` that would not mean
/// what it shows. [`Template::compile`] names the field and place it stands in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum TemplateError {
    /// `${` outside a header value, where it is not the consumer's secret syntax.
    #[error(
        "`${{…}}` is the consumer's environment syntax, which only a header value may hold; \
         write `${{{{` for a literal `${{`"
    )]
    EnvOutsideHeader,
    /// A header value's `${` without its `}`.
    #[error("unterminated `${{` (a header's `${{env:NAME}}`)")]
    UnterminatedEnv,
    /// A row placeholder inside `${env:…}`: a row would choose the consumer's secret.
    #[error(
        "a row placeholder cannot stand inside `${{env:…}}`: the consumer's environment \
         variable is named by the template alone"
    )]
    PlaceholderInEnv,
    /// A malformed `${env:NAME}` reference.
    #[error(transparent)]
    Env(#[from] target_rules::PlaceholderError),
    /// A `{` without its `}`.
    #[error("unterminated `{{` (a placeholder is `{{name}}`; write `{{{{` for a literal brace)")]
    Unterminated,
    /// A `}` that closes nothing.
    #[error("a lone `}}` (write `}}}}` for a literal brace)")]
    LoneBrace,
    /// `{…}` whose text is not a placeholder name.
    #[error(
        "{{{0}}} is not a placeholder: a name is [A-Za-z_][A-Za-z0-9_.-]* (write {{{{ and }}}} \
         for literal braces)"
    )]
    BadName(String),
    /// `{tick.…}` that is none of the tick's values.
    #[error(
        "unknown tick value {{{0}}} (there are {{tick.scheduled_at}}, {{tick.run_id}} and \
         {{tick.last_success_at}})"
    )]
    UnknownTick(String),
    /// A literal `%` in URL text that does not start a `%XX` escape: a value could complete it.
    #[error(
        "{0:?}: a `%` must start a percent-escape `%XX` in the template's own text (write `%25` \
         for a literal `%`)"
    )]
    BarePercent(String),
}

/// Splits template text into literal text and placeholders. In a header value, each
/// `${env:NAME}` reference is kept verbatim in the literal text and its name pushed to `env`.
fn parse_text(raw: &str, syntax: Syntax, env: &mut Vec<String>) -> Result<Text, TemplateError> {
    let mut pieces = Vec::new();
    let mut lit = String::new();
    let mut rest = raw;
    while let Some(c) = rest.chars().next() {
        if rest.starts_with("{{") {
            lit.push('{');
            rest = &rest[2..];
        } else if rest.starts_with("}}") {
            lit.push('}');
            rest = &rest[2..];
        } else if rest.starts_with("${") {
            if syntax == Syntax::Plain {
                if rest.starts_with("${{") {
                    // `$` then the `{{` escape: a literal `${`.
                    lit.push('$');
                    rest = &rest[1..];
                    continue;
                }
                return Err(TemplateError::EnvOutsideHeader);
            }
            let end = rest.find('}').ok_or(TemplateError::UnterminatedEnv)?;
            let reference = &rest[..=end];
            if reference[2..].contains('{') {
                return Err(TemplateError::PlaceholderInEnv);
            }
            for part in target_rules::env_placeholders(reference)? {
                if let target_rules::HeaderPart::Env(name) = part {
                    env.push(name.to_owned());
                }
            }
            lit.push_str(reference);
            rest = &rest[end + 1..];
        } else if c == '{' {
            let end = rest.find('}').ok_or(TemplateError::Unterminated)?;
            let name = parse_name(&rest[1..end])?;
            if !lit.is_empty() {
                pieces.push(Piece::Lit(std::mem::take(&mut lit)));
            }
            pieces.push(Piece::Field(name));
            rest = &rest[end + 1..];
        } else if c == '}' {
            return Err(TemplateError::LoneBrace);
        } else {
            lit.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    if !lit.is_empty() {
        pieces.push(Piece::Lit(lit));
    }
    Ok(pieces)
}

fn parse_name(name: &str) -> Result<Name, TemplateError> {
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !valid {
        return Err(TemplateError::BadName(name.to_owned()));
    }
    if name.starts_with("tick.") {
        return Tick::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .map(Name::Tick)
            .ok_or_else(|| TemplateError::UnknownTick(name.to_owned()));
    }
    Ok(Name::Row(name.to_owned()))
}

/// Where a value goes, for error messages.
#[derive(Debug, Clone, Copy)]
enum Place<'a> {
    Segment(usize),
    Query(&'a str),
    Header(&'a str),
    Body(&'a str),
}

impl fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Segment(i) => write!(f, "URL path segment {}", i + 1),
            Place::Query(key) => write!(f, "URL query value {key:?}"),
            Place::Header(name) => write!(f, "header {name:?}"),
            Place::Body("") => write!(f, "the body"),
            Place::Body(pointer) => write!(f, "body at {pointer:?}"),
        }
    }
}

/// Where placeholder values come from: a row and the tick, or the sample `compile` checks with.
#[derive(Clone, Copy)]
enum Values<'a> {
    Sample,
    Row {
        row: &'a Map<String, Value>,
        tick: &'a TickValues,
    },
}

/// A placeholder's value: a row's JSON value or a text (a tick value, the sample).
enum Found<'a> {
    Json(&'a Value),
    Str(&'a str),
}

impl<'a> Values<'a> {
    fn find(&self, name: &Name, place: Place<'_>) -> Result<Found<'a>, RowError> {
        match (self, name) {
            (Values::Sample, _) => Ok(Found::Str(SAMPLE)),
            (Values::Row { tick, .. }, Name::Tick(t)) => Ok(Found::Str(t.value(tick))),
            (Values::Row { row, .. }, Name::Row(field)) => row
                .get(field)
                .map(Found::Json)
                .ok_or_else(|| RowError::Missing {
                    field: field.clone(),
                    place: place.to_string(),
                }),
        }
    }

    /// The placeholder's value as text: a string as is, a number or boolean as its JSON text.
    fn text(&self, name: &Name, place: Place<'_>) -> Result<Cow<'a, str>, RowError> {
        let wrong = |found| RowError::WrongType {
            field: name.as_str().to_owned(),
            place: place.to_string(),
            found,
        };
        match self.find(name, place)? {
            Found::Str(s) => Ok(Cow::Borrowed(s)),
            Found::Json(Value::String(s)) => Ok(Cow::Borrowed(s)),
            Found::Json(Value::Number(n)) => Ok(Cow::Owned(n.to_string())),
            Found::Json(Value::Bool(b)) => Ok(Cow::Borrowed(if *b { "true" } else { "false" })),
            Found::Json(Value::Null) => Err(wrong("null")),
            Found::Json(Value::Object(_)) => Err(wrong("an object")),
            Found::Json(Value::Array(_)) => Err(wrong("an array")),
        }
    }

    /// The placeholder's value as JSON, with its type.
    fn json(&self, name: &Name, place: Place<'_>) -> Result<Value, RowError> {
        Ok(match self.find(name, place)? {
            Found::Json(value) => value.clone(),
            Found::Str(s) => Value::String(s.to_owned()),
        })
    }
}

fn check_len(field: &Name, text: &str, limit: usize, place: Place<'_>) -> Result<(), RowError> {
    if text.len() > limit {
        return Err(RowError::TooLong {
            field: field.as_str().to_owned(),
            place: place.to_string(),
            bytes: text.len(),
            limit,
        });
    }
    Ok(())
}

/// The template URL, split on its raw text.
#[derive(Debug, Clone, PartialEq)]
struct UrlTemplate {
    /// `scheme://authority`, literal.
    origin: String,
    /// Each path segment (the text after each `/`); empty for a URL without a path.
    segments: Vec<Text>,
    /// The query's `key[=value]` pairs, if the URL has a `?`.
    query: Option<Vec<(String, Option<Text>)>>,
    /// The fragment, literal, if the URL has a `#`.
    fragment: Option<String>,
    /// What every rendered URL must parse to.
    shape: Shape,
}

/// The parts of a parsed URL a row may never change.
#[derive(Debug, Clone, PartialEq)]
struct Shape {
    scheme: String,
    host: String,
    port: Option<u16>,
    /// Each path segment: its text if the template's segment holds no placeholder.
    segments: Vec<Option<String>>,
    query_keys: Option<Vec<String>>,
    fragment: Option<String>,
}

impl Shape {
    /// The shape of `url`, the sample URL; `literal[i]` says the template's segment `i` holds
    /// no placeholder.
    fn of(url: &url::Url, literal: &[bool]) -> Self {
        let segments: Vec<&str> = url.path_segments().map_or_else(Vec::new, Iterator::collect);
        Self {
            scheme: url.scheme().to_owned(),
            host: url.host_str().unwrap_or_default().to_owned(),
            port: url.port(),
            segments: segments
                .iter()
                .enumerate()
                .map(|(i, s)| (literal.get(i) == Some(&true)).then(|| (*s).to_owned()))
                .collect(),
            query_keys: url.query().map(query_keys),
            fragment: url.fragment().map(str::to_owned),
        }
    }

    /// How `url` differs from this shape, if it does.
    fn difference(&self, url: &url::Url) -> Option<String> {
        if url.scheme() != self.scheme {
            return Some(format!("has scheme {:?}", url.scheme()));
        }
        if url.host_str() != Some(self.host.as_str()) {
            return Some(format!("has host {:?}", url.host_str()));
        }
        if url.port() != self.port {
            return Some(format!("has port {:?}", url.port()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Some("has userinfo".into());
        }
        let segments: Vec<&str> = url.path_segments().map_or_else(Vec::new, Iterator::collect);
        if segments.len() != self.segments.len() {
            return Some(format!(
                "has {} path segments, not {}",
                segments.len(),
                self.segments.len()
            ));
        }
        for (i, (got, want)) in segments.iter().zip(&self.segments).enumerate() {
            if want.as_deref().is_some_and(|want| want != *got) {
                return Some(format!("changed literal path segment {}", i + 1));
            }
        }
        if url.query().map(query_keys) != self.query_keys {
            return Some("has other query keys".into());
        }
        if url.fragment() != self.fragment.as_deref() {
            return Some("has another fragment".into());
        }
        None
    }
}

fn query_keys(query: &str) -> Vec<String> {
    query
        .split('&')
        .map(|pair| pair.split('=').next().unwrap_or_default().to_owned())
        .collect()
}

/// `.`, `..` or a `%2E` spelling of them: what a URL parser removes from a path.
fn is_dot_segment(segment: &str) -> bool {
    matches!(
        segment.to_ascii_lowercase().as_str(),
        "." | ".." | "%2e" | ".%2e" | "%2e." | "%2e%2e"
    )
}

/// Template text in the path, query or fragment: placeholders parsed, and every literal `%`
/// starting a `%XX` escape within its own literal piece (so a value can never complete one).
fn parse_url_text(raw: &str) -> Result<Text, TemplateError> {
    let text = parse_text(raw, Syntax::Plain, &mut Vec::new())?;
    for piece in &text {
        if let Piece::Lit(lit) = piece {
            let bytes = lit.as_bytes();
            for (i, b) in bytes.iter().enumerate() {
                if *b == b'%'
                    && !(bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                        && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
                {
                    return Err(TemplateError::BarePercent(raw.to_owned()));
                }
            }
        }
    }
    Ok(text)
}

fn literal(text: &[Piece]) -> String {
    text.iter()
        .map(|p| match p {
            Piece::Lit(s) => s.as_str(),
            Piece::Field(_) => "",
        })
        .collect()
}

impl UrlTemplate {
    fn compile(raw: &str) -> Result<Self, Vec<String>> {
        if let Some(c) = raw
            .chars()
            .find(|c| c.is_control() || c.is_whitespace() || *c == '\\')
        {
            // URL parsers drop tabs and newlines and read `\` as `/`: the text would not mean
            // what it shows.
            return Err(vec![format!(
                "{c:?} in the URL template: write it percent-encoded"
            )]);
        }
        let shown = target_rules::redact_userinfo(raw);
        let Some((scheme, after_scheme)) = raw.split_once("://") else {
            return Err(vec![format!(
                "not a URL template (scheme://host/path…): {shown:?}"
            )]);
        };
        let mut problems = Vec::new();
        if scheme.contains(['{', '}']) {
            problems.push("a placeholder in the scheme: a row may never choose it".to_owned());
        }
        let authority_end = after_scheme
            .find(['/', '?', '#'])
            .unwrap_or(after_scheme.len());
        let (authority, rest) = after_scheme.split_at(authority_end);
        if authority.is_empty() {
            // URL parsers skip extra slashes after `https:`, so `https:///{x}/` would take
            // its host from the path.
            return Err(vec![format!("no host in {shown:?}")]);
        }
        if authority.contains(['{', '}']) {
            let (userinfo, host_port) = match authority.rsplit_once('@') {
                Some((userinfo, host_port)) => (userinfo, host_port),
                None => ("", authority),
            };
            let port = match host_port.rfind([']', ':']) {
                Some(i) if host_port[i..].starts_with(':') => &host_port[i..],
                Some(i) => host_port[i + 1..]
                    .find(':')
                    .map_or("", |j| &host_port[i + 1 + j..]),
                None => "",
            };
            let part = if userinfo.contains(['{', '}']) {
                "userinfo"
            } else if port.contains(['{', '}']) {
                "port"
            } else {
                "host"
            };
            problems.push(format!(
                "a placeholder in the {part}: a row may never choose where a call goes"
            ));
        }
        let (before_fragment, fragment) = match rest.split_once('#') {
            Some((before, fragment)) => (before, Some(fragment)),
            None => (rest, None),
        };
        let (path, query) = match before_fragment.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (before_fragment, None),
        };
        let mut segments = Vec::new();
        if let Some(path) = path.strip_prefix('/') {
            for raw_segment in path.split('/') {
                match parse_url_text(raw_segment) {
                    Ok(text) => segments.push(text),
                    Err(e) => problems.push(format!("path: {e}")),
                }
            }
        }
        let query = query.map(|query| {
            let mut pairs = Vec::new();
            for pair in query.split('&') {
                let (key, value) = match pair.split_once('=') {
                    Some((key, value)) => (key, Some(value)),
                    None => (pair, None),
                };
                let key = match parse_url_text(key) {
                    Ok(text) if has_field(&text) => {
                        problems.push(format!(
                            "a placeholder in the query key {key:?}: a row may fill a query \
                             value, never choose a key"
                        ));
                        continue;
                    }
                    Ok(text) => literal(&text),
                    Err(e) => {
                        problems.push(format!("query: {e}"));
                        continue;
                    }
                };
                let value = match value.map(parse_url_text).transpose() {
                    Ok(value) => value,
                    Err(e) => {
                        problems.push(format!("query: {e}"));
                        continue;
                    }
                };
                pairs.push((key, value));
            }
            pairs
        });
        let fragment = match fragment.map(parse_url_text).transpose() {
            Ok(Some(text)) if has_field(&text) => {
                problems.push(
                    "a placeholder in the fragment (after `#`): a fragment is never sent, and \
                     a row may not change it"
                        .to_owned(),
                );
                None
            }
            Ok(text) => text.map(|t| literal(&t)),
            Err(e) => {
                problems.push(format!("fragment: {e}"));
                None
            }
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut template = Self {
            origin: format!("{scheme}://{authority}"),
            segments,
            query,
            fragment,
            shape: Shape {
                scheme: String::new(),
                host: String::new(),
                port: None,
                segments: Vec::new(),
                query_keys: None,
                fragment: None,
            },
        };
        // The literal parts judged as a literal target's URL, with a sample in each
        // placeholder: the shape every rendered URL must keep.
        let sample = template
            .build(Values::Sample)
            .map_err(|e| vec![e.to_string()])?;
        target_rules::check_url(&sample).map_err(|e| vec![e.to_string()])?;
        let parsed = url::Url::parse(&sample).map_err(|e| vec![e.to_string()])?;
        // A URL without a path has the one empty segment of `/`.
        let expected_segments = template.segments.len().max(1);
        let parsed_segments = parsed.path_segments().map_or(0, Iterator::count);
        if parsed_segments != expected_segments {
            return Err(vec![format!(
                "the path has {expected_segments} segments but a URL parser reads \
                 {parsed_segments}: remove dot-segments (`.`, `..`, `%2E`) from it"
            )]);
        }
        let expected_keys = template.query.as_ref().map(Vec::len);
        if parsed.query().map(|q| query_keys(q).len()) != expected_keys {
            return Err(vec!["a URL parser reads another query".to_owned()]);
        }
        let literal: Vec<bool> = template.segments.iter().map(|s| !has_field(s)).collect();
        template.shape = Shape::of(&parsed, &literal);
        Ok(template)
    }

    /// The URL with `values` in its placeholders, each encoded as its component.
    fn build(&self, values: Values<'_>) -> Result<String, RowError> {
        let mut out = String::with_capacity(self.origin.len() + 64);
        out.push_str(&self.origin);
        for (i, segment) in self.segments.iter().enumerate() {
            out.push('/');
            let start = out.len();
            let place = Place::Segment(i);
            let mut first_field = None;
            for piece in segment {
                match piece {
                    Piece::Lit(s) => out.push_str(s),
                    Piece::Field(name) => {
                        let text = values.text(name, place)?;
                        check_len(name, &text, MAX_URL_VALUE_BYTES, place)?;
                        out.extend(utf8_percent_encode(&text, COMPONENT));
                        first_field.get_or_insert(name);
                    }
                }
            }
            if let Some(name) = first_field {
                let rendered = &out[start..];
                let reason = if rendered.is_empty() {
                    Some("an empty value would leave an empty path segment (`//`), which servers may collapse")
                } else if is_dot_segment(rendered) {
                    Some("the segment would be a dot-segment (`.` or `..`), which moves the call up the path")
                } else {
                    None
                };
                if let Some(reason) = reason {
                    return Err(RowError::Refused {
                        field: name.as_str().to_owned(),
                        place: place.to_string(),
                        reason: reason.to_owned(),
                    });
                }
            }
        }
        if let Some(pairs) = &self.query {
            out.push('?');
            for (i, (key, value)) in pairs.iter().enumerate() {
                if i > 0 {
                    out.push('&');
                }
                out.push_str(key);
                let Some(value) = value else { continue };
                out.push('=');
                let place = Place::Query(key);
                for piece in value {
                    match piece {
                        Piece::Lit(s) => out.push_str(s),
                        Piece::Field(name) => {
                            let text = values.text(name, place)?;
                            check_len(name, &text, MAX_URL_VALUE_BYTES, place)?;
                            out.extend(utf8_percent_encode(&text, COMPONENT));
                        }
                    }
                }
            }
        }
        if let Some(fragment) = &self.fragment {
            out.push('#');
            out.push_str(fragment);
        }
        Ok(out)
    }

    /// [`build`](Self::build), then the length limit and the shape check.
    fn render(&self, values: Values<'_>) -> Result<String, RowError> {
        let url = self.build(values)?;
        if url.len() > MAX_URL_BYTES {
            return Err(RowError::TooLong {
                field: "url".into(),
                place: "the rendered URL".into(),
                bytes: url.len(),
                limit: MAX_URL_BYTES,
            });
        }
        let parsed =
            url::Url::parse(&url).map_err(|e| RowError::Shape(format!("does not parse: {e}")))?;
        if let Some(difference) = self.shape.difference(&parsed) {
            return Err(RowError::Shape(difference));
        }
        Ok(url)
    }

    fn placeholders<'a>(&'a self, names: &mut Vec<&'a Name>) {
        let query_values = self.query.iter().flatten().filter_map(|(_, v)| v.as_ref());
        for text in self.segments.iter().chain(query_values) {
            fields(text, names);
        }
    }
}

fn fields<'a>(text: &'a [Piece], names: &mut Vec<&'a Name>) {
    names.extend(text.iter().filter_map(|p| match p {
        Piece::Field(name) => Some(name),
        Piece::Lit(_) => None,
    }));
}

/// A header value: text with placeholders, and the `${env:…}` references it holds.
#[derive(Debug, Clone, PartialEq)]
struct HeaderTemplate {
    text: Text,
    env: Vec<String>,
}

impl HeaderTemplate {
    fn render(&self, name: &str, values: Values<'_>) -> Result<String, RowError> {
        let place = Place::Header(name);
        let mut out = String::new();
        let mut first_field = None;
        for piece in &self.text {
            match piece {
                Piece::Lit(s) => out.push_str(s),
                Piece::Field(field) => {
                    let text = values.text(field, place)?;
                    check_len(field, &text, MAX_HEADER_VALUE_BYTES, place)?;
                    let refused = |reason: &str| RowError::Refused {
                        field: field.as_str().to_owned(),
                        place: place.to_string(),
                        reason: reason.to_owned(),
                    };
                    if text.chars().any(char::is_control) {
                        return Err(refused(
                            "a control character (CR, LF, NUL, tab…) in a header value could \
                             split the request",
                        ));
                    }
                    if text.contains("${") {
                        return Err(refused(
                            "`${` is the consumer's secret syntax (`${env:NAME}`): a row may \
                             never name one",
                        ));
                    }
                    out.push_str(&text);
                    first_field.get_or_insert(field);
                }
            }
        }
        let Some(field) = first_field else {
            return Ok(out);
        };
        if out.len() > MAX_HEADER_VALUE_BYTES {
            return Err(RowError::TooLong {
                field: "headers".into(),
                place: place.to_string(),
                bytes: out.len(),
                limit: MAX_HEADER_VALUE_BYTES,
            });
        }
        // A value ending in `$` before a literal `{{env:X}}` would form a reference with the
        // text around it: the rendered value must hold exactly the template's references.
        let same_references = target_rules::env_placeholders(&out).is_ok_and(|parts| {
            parts
                .iter()
                .filter_map(|p| match p {
                    target_rules::HeaderPart::Env(name) => Some(*name),
                    target_rules::HeaderPart::Literal(_) => None,
                })
                .eq(self.env.iter().map(String::as_str))
        });
        if !same_references {
            return Err(RowError::Refused {
                field: field.as_str().to_owned(),
                place: place.to_string(),
                reason: "the value would form a `${env:…}` reference with the text around it"
                    .into(),
            });
        }
        Ok(out)
    }
}

/// A compiled JSON body.
#[derive(Debug, Clone, PartialEq)]
enum BodyNode {
    /// A part without placeholders, braces unescaped.
    Value(Value),
    /// A string that is exactly one placeholder: the value with its JSON type.
    Exact {
        name: Name,
        pointer: String,
    },
    /// A string with text around placeholders: a string.
    Text {
        text: Text,
        pointer: String,
    },
    Array(Vec<BodyNode>),
    Object(Vec<(String, BodyNode)>),
}

impl BodyNode {
    fn compile(value: &Value, pointer: &mut String, problems: &mut Vec<String>) -> Self {
        match value {
            Value::String(s) => match parse_text(s, Syntax::Plain, &mut Vec::new()) {
                Err(e) => {
                    problems.push(format!("{}: {e}", Place::Body(pointer)));
                    BodyNode::Value(Value::Null)
                }
                Ok(text) => match text.as_slice() {
                    [Piece::Field(name)] => BodyNode::Exact {
                        name: name.clone(),
                        pointer: pointer.clone(),
                    },
                    _ if !has_field(&text) => BodyNode::Value(Value::String(literal(&text))),
                    _ => BodyNode::Text {
                        text,
                        pointer: pointer.clone(),
                    },
                },
            },
            Value::Array(items) => {
                let nodes = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        let len = pointer.len();
                        pointer.push_str(&format!("/{i}"));
                        let node = Self::compile(item, pointer, problems);
                        pointer.truncate(len);
                        node
                    })
                    .collect();
                Self::collapse_array(nodes)
            }
            Value::Object(map) => {
                let mut entries = Vec::with_capacity(map.len());
                for (key, item) in map {
                    let len = pointer.len();
                    pointer.push('/');
                    pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
                    let key = match parse_text(key, Syntax::Plain, &mut Vec::new()) {
                        Ok(text) if has_field(&text) => {
                            problems.push(format!(
                                "{}: a placeholder in an object key: a row fills values, never \
                                 names them",
                                Place::Body(pointer)
                            ));
                            None
                        }
                        Ok(text) => Some(literal(&text)),
                        Err(e) => {
                            problems.push(format!("{} (key): {e}", Place::Body(pointer)));
                            None
                        }
                    };
                    let node = Self::compile(item, pointer, problems);
                    pointer.truncate(len);
                    if let Some(key) = key {
                        entries.push((key, node));
                    }
                }
                Self::collapse_object(entries)
            }
            other => BodyNode::Value(other.clone()),
        }
    }

    /// An array without placeholders is one value.
    fn collapse_array(nodes: Vec<BodyNode>) -> Self {
        if nodes.iter().all(|n| matches!(n, BodyNode::Value(_))) {
            let values = nodes
                .into_iter()
                .filter_map(|n| match n {
                    BodyNode::Value(v) => Some(v),
                    _ => None,
                })
                .collect();
            return BodyNode::Value(Value::Array(values));
        }
        BodyNode::Array(nodes)
    }

    /// An object without placeholders is one value.
    fn collapse_object(entries: Vec<(String, BodyNode)>) -> Self {
        if entries.iter().all(|(_, n)| matches!(n, BodyNode::Value(_))) {
            let map = entries
                .into_iter()
                .filter_map(|(k, n)| match n {
                    BodyNode::Value(v) => Some((k, v)),
                    _ => None,
                })
                .collect();
            return BodyNode::Value(Value::Object(map));
        }
        BodyNode::Object(entries)
    }

    fn render(&self, values: Values<'_>) -> Result<Value, RowError> {
        Ok(match self {
            BodyNode::Value(value) => value.clone(),
            BodyNode::Exact { name, pointer } => values.json(name, Place::Body(pointer))?,
            BodyNode::Text { text, pointer } => {
                let mut out = String::new();
                for piece in text {
                    match piece {
                        Piece::Lit(s) => out.push_str(s),
                        Piece::Field(name) => {
                            out.push_str(&values.text(name, Place::Body(pointer))?);
                        }
                    }
                }
                Value::String(out)
            }
            BodyNode::Array(nodes) => Value::Array(
                nodes
                    .iter()
                    .map(|n| n.render(values))
                    .collect::<Result<_, _>>()?,
            ),
            BodyNode::Object(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, n)| Ok((k.clone(), n.render(values)?)))
                    .collect::<Result<_, RowError>>()?,
            ),
        })
    }

    fn placeholders<'a>(&'a self, names: &mut Vec<&'a Name>) {
        match self {
            BodyNode::Value(_) => {}
            BodyNode::Exact { name, .. } => names.push(name),
            BodyNode::Text { text, .. } => fields(text, names),
            BodyNode::Array(nodes) => nodes.iter().for_each(|n| n.placeholders(names)),
            BodyNode::Object(entries) => entries.iter().for_each(|(_, n)| n.placeholders(names)),
        }
    }
}

impl Template {
    /// Checks the template, with `defaults` applied to method, timeout and headers as for a
    /// literal target, and returns every problem found, each naming the template's field
    /// (`url`, `method`, `headers`, `body`, `timeout_ms`).
    pub fn compile(&self, defaults: &Defaults) -> Result<CompiledTemplate, Vec<FieldError>> {
        let mut errors = Vec::new();
        let url = UrlTemplate::compile(&self.url).map_err(|problems| {
            errors.extend(problems.into_iter().map(|p| FieldError::new("url", p)));
        });
        let method = self
            .method
            .as_deref()
            .unwrap_or(&defaults.method)
            .to_ascii_uppercase();
        if !HTTP_METHODS.contains(&method.as_str()) {
            errors.push(FieldError::new(
                "method",
                format!("unknown method {method:?}"),
            ));
        }
        let timeout_ms = self.timeout_ms.unwrap_or(defaults.timeout_ms);
        if timeout_ms == 0 || timeout_ms > MAX_TIMEOUT_MS {
            errors.push(FieldError::new(
                "timeout_ms",
                format!("must be 1..={MAX_TIMEOUT_MS}, got {timeout_ms}"),
            ));
        }
        // Defaults are literal text; the template's own header replaces a default of any case.
        let mut headers = Vec::new();
        for (name, value) in &defaults.headers {
            if self
                .headers
                .keys()
                .any(|own| own.eq_ignore_ascii_case(name))
            {
                continue;
            }
            let env = target_rules::env_placeholders(value)
                .map(|parts| {
                    parts
                        .into_iter()
                        .filter_map(|p| match p {
                            target_rules::HeaderPart::Env(name) => Some(name.to_owned()),
                            target_rules::HeaderPart::Literal(_) => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            let text = vec![Piece::Lit(value.clone())];
            headers.push((name.clone(), HeaderTemplate { text, env }));
        }
        for (name, value) in &self.headers {
            if name.contains(['{', '}']) {
                errors.push(FieldError::new(
                    "headers",
                    format!(
                        "a placeholder in the header name {name:?}: a row may fill a header \
                         value, never choose a header"
                    ),
                ));
                continue;
            }
            let mut env = Vec::new();
            match parse_text(value, Syntax::Header, &mut env) {
                Ok(text) => headers.push((name.clone(), HeaderTemplate { text, env })),
                Err(e) => errors.push(FieldError::new("headers", format!("header {name}: {e}"))),
            }
        }
        let body = self.body.as_ref().map(|body| {
            let mut problems = Vec::new();
            let node = BodyNode::compile(body, &mut String::new(), &mut problems);
            errors.extend(problems.into_iter().map(|p| FieldError::new("body", p)));
            node
        });
        let Ok(url) = url else {
            return Err(errors);
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let compiled = CompiledTemplate {
            url,
            method,
            timeout_ms,
            headers,
            body,
        };
        // The literal parts under a literal target's rules, a sample in every placeholder:
        // every header judged, then the whole call.
        let sample = compiled
            .build("sample", Values::Sample)
            .map_err(|e| vec![FieldError::new("url", e.to_string())])?;
        for (name, value) in &sample.headers {
            if let Err(e) = target_rules::check_header(name, value) {
                errors.push(FieldError::new("headers", e.to_string()));
            }
        }
        if errors.is_empty() {
            sample.check().map_err(|e| vec![e])?;
            Ok(compiled)
        } else {
            Err(errors)
        }
    }
}

impl CompiledTemplate {
    /// The row fields the template needs (tick values excluded).
    pub fn placeholders(&self) -> BTreeSet<String> {
        let mut names = Vec::new();
        self.url.placeholders(&mut names);
        for (_, header) in &self.headers {
            fields(&header.text, &mut names);
        }
        if let Some(body) = &self.body {
            body.placeholders(&mut names);
        }
        names
            .into_iter()
            .filter_map(|name| match name {
                Name::Row(field) => Some(field.clone()),
                Name::Tick(_) => None,
            })
            .collect()
    }

    /// The URL's host, lower-case, as a URL parser reads it: the same for every row (for the
    /// allowed hosts, budgets and the SSRF guard).
    pub fn host(&self) -> &str {
        &self.url.shape.host
    }

    /// The call for one row: the job target `id` with `row`'s fields and `tick`'s values in the
    /// placeholders. Extra row fields are ignored. A row that cannot be rendered safely is a
    /// bad row, never a call.
    pub fn render(
        &self,
        id: &str,
        row: &Map<String, Value>,
        tick: &TickValues,
    ) -> Result<JobTarget, RowError> {
        let target = self.build(id, Values::Row { row, tick })?;
        target.check().map_err(RowError::Target)?;
        Ok(target)
    }

    /// The call with `values` in the placeholders, not yet checked as a whole.
    fn build(&self, id: &str, values: Values<'_>) -> Result<JobTarget, RowError> {
        let url = self.url.render(values)?;
        let headers = self
            .headers
            .iter()
            .map(|(name, header)| Ok((name.clone(), header.render(name, values)?)))
            .collect::<Result<_, RowError>>()?;
        let body = self.body.as_ref().map(|b| b.render(values)).transpose()?;
        Ok(JobTarget {
            id: id.to_owned(),
            url,
            method: self.method.clone(),
            headers,
            body,
            timeout_ms: self.timeout_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use percent_encoding::percent_decode_str;
    use serde_json::json;

    const HOST: &str = "api.example.com";
    const PORT: u16 = 8443;

    fn template(value: Value) -> Template {
        serde_json::from_value(value).unwrap()
    }

    fn compile(value: Value) -> CompiledTemplate {
        template(value).compile(&Defaults::default()).unwrap()
    }

    fn compile_url(url: &str) -> CompiledTemplate {
        compile(json!({ "url": url }))
    }

    /// The problems `compile` reports, as `field: problem`.
    fn problems(value: Value) -> Vec<String> {
        match template(value).compile(&Defaults::default()) {
            Ok(_) => vec![],
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    fn row(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn tick() -> TickValues {
        TickValues {
            scheduled_at: "2026-11-21T10:15:00Z".into(),
            run_id: "rule@2026-11-21T10:15:00Z".into(),
            last_success_at: "2026-11-21T10:00:00Z".into(),
        }
    }

    fn render_x(compiled: &CompiledTemplate, x: &str) -> Result<JobTarget, RowError> {
        compiled.render("job-1", &row(json!({ "x": x })), &tick())
    }

    /// The parts of a rendered URL a row may not change.
    fn shape(url: &str) -> (String, String, Option<u16>, Vec<String>, Vec<String>) {
        let parsed = url::Url::parse(url).unwrap();
        let segments = parsed.path_segments().unwrap().map(str::to_owned).collect();
        let keys = parsed.query().map(query_keys).unwrap_or_default();
        (
            parsed.scheme().to_owned(),
            parsed.host_str().unwrap().to_owned(),
            parsed.port(),
            segments,
            keys,
        )
    }

    /// Each hostile value of issue 25, and a few more.
    fn hostile() -> Vec<(&'static str, String)> {
        let mut values: Vec<(&str, String)> = [
            ("dot-dot-slash", "../"),
            ("dot-dot", ".."),
            ("dot", "."),
            ("slash", "/"),
            ("question mark", "?"),
            ("hash", "#"),
            ("at", "@"),
            ("encoded slash", "%2F"),
            ("encoded dot-dot", "%2e%2e"),
            ("percent", "%"),
            ("CR LF", "\r\n"),
            ("header injection", "a\r\nHost: evil.example"),
            ("NUL", "\0"),
            ("tab", "\t"),
            ("umlaut", "ü"),
            ("emoji", "😀"),
            ("RTL marks", "\u{200f}abc\u{202e}"),
            ("backslash", "\\"),
            ("backslashes", "..\\..\\etc"),
            ("colon", ":"),
            ("semicolon", ";"),
            ("query pair", "&k=v"),
            ("equals", "="),
            ("plus", "+"),
            ("space", "a b"),
            ("authority", "@evil.example:1/"),
            ("absolute URL", "https://evil.example/x"),
            ("scheme-relative", "//evil.example"),
            ("braces", "{x}"),
            ("env reference", "${env:AWS_SECRET_ACCESS_KEY}"),
            ("JSON text", "{\"a\":1}"),
            ("empty", ""),
        ]
        .into_iter()
        .map(|(name, value)| (name, value.to_owned()))
        .collect();
        values.push(("64 KiB", "a/".repeat(32 * 1024)));
        values
    }

    fn is_encoded_component(text: &str) -> bool {
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'%' => {
                    assert!(bytes[i + 1..i + 3].iter().all(u8::is_ascii_hexdigit));
                    i += 3;
                }
                b if b.is_ascii_alphanumeric() || b"-._~".contains(&b) => i += 1,
                _ => return false,
            }
        }
        true
    }

    fn decoded(text: &str) -> String {
        percent_decode_str(text).decode_utf8().unwrap().into_owned()
    }

    #[test]
    fn hostile_values_in_a_whole_path_segment_stay_in_that_segment() {
        let compiled = compile_url("https://api.example.com:8443/v1/{x}/sync?mode=full");
        for (name, value) in hostile() {
            match render_x(&compiled, &value) {
                Ok(target) => {
                    let (scheme, host, port, segments, keys) = shape(&target.url);
                    assert_eq!(
                        (scheme.as_str(), host.as_str(), port),
                        ("https", HOST, Some(PORT)),
                        "{name}"
                    );
                    assert_eq!(segments.len(), 3, "{name}: {}", target.url);
                    assert_eq!(
                        (segments[0].as_str(), segments[2].as_str()),
                        ("v1", "sync"),
                        "{name}"
                    );
                    assert!(
                        is_encoded_component(&segments[1]),
                        "{name}: {}",
                        segments[1]
                    );
                    assert_eq!(decoded(&segments[1]), value, "{name}");
                    assert_eq!(keys, ["mode"], "{name}");
                }
                Err(RowError::Refused {
                    field,
                    place,
                    reason,
                }) => {
                    assert!(
                        matches!(value.as_str(), "" | "." | ".."),
                        "{name}: {reason}"
                    );
                    assert_eq!(
                        (field.as_str(), place.as_str()),
                        ("x", "URL path segment 2")
                    );
                }
                Err(RowError::TooLong {
                    field,
                    bytes,
                    limit,
                    ..
                }) => {
                    assert_eq!(
                        (field.as_str(), bytes, limit),
                        ("x", 64 * 1024, MAX_URL_VALUE_BYTES),
                        "{name}"
                    );
                }
                Err(e) => panic!("{name}: {e}"),
            }
        }
    }

    #[test]
    fn hostile_values_in_part_of_a_path_segment_stay_in_that_segment() {
        let compiled = compile_url("https://api.example.com:8443/v1/id-{x}.json/sync?mode=full");
        for (name, value) in hostile() {
            match render_x(&compiled, &value) {
                Ok(target) => {
                    let (scheme, host, port, segments, keys) = shape(&target.url);
                    assert_eq!(
                        (scheme.as_str(), host.as_str(), port),
                        ("https", HOST, Some(PORT)),
                        "{name}"
                    );
                    assert_eq!(segments.len(), 3, "{name}: {}", target.url);
                    let middle = segments[1]
                        .strip_prefix("id-")
                        .unwrap()
                        .strip_suffix(".json")
                        .unwrap();
                    assert!(is_encoded_component(middle), "{name}: {middle}");
                    assert_eq!(decoded(middle), value, "{name}");
                    assert_eq!(keys, ["mode"], "{name}");
                }
                Err(RowError::TooLong { field, .. }) if value.len() > MAX_URL_VALUE_BYTES => {
                    assert_eq!(field, "x");
                }
                Err(e) => panic!("{name}: {e}"),
            }
        }
    }

    #[test]
    fn hostile_values_in_a_query_value_stay_in_that_value() {
        let compiled =
            compile_url("https://api.example.com:8443/v1/sync?id={x}&note=pre-{x}-post&mode=full");
        for (name, value) in hostile() {
            match render_x(&compiled, &value) {
                Ok(target) => {
                    let (scheme, host, port, segments, keys) = shape(&target.url);
                    assert_eq!(
                        (scheme.as_str(), host.as_str(), port),
                        ("https", HOST, Some(PORT)),
                        "{name}"
                    );
                    assert_eq!(segments, ["v1", "sync"], "{name}");
                    assert_eq!(keys, ["id", "note", "mode"], "{name}: {}", target.url);
                    let parsed = url::Url::parse(&target.url).unwrap();
                    let raw: Vec<&str> = parsed.query().unwrap().split('&').collect();
                    let id = raw[0].strip_prefix("id=").unwrap();
                    assert!(is_encoded_component(id), "{name}: {id}");
                    assert_eq!(decoded(id), value, "{name}");
                    let note = raw[1]
                        .strip_prefix("note=pre-")
                        .unwrap()
                        .strip_suffix("-post")
                        .unwrap();
                    assert_eq!(decoded(note), value, "{name}");
                    assert_eq!(raw[2], "mode=full");
                    // Form decoding (what most servers apply) agrees: `+` was encoded too.
                    let pairs: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
                    assert_eq!(pairs[0], ("id".to_owned(), value.clone()), "{name}");
                    assert_eq!(pairs.len(), 3, "{name}");
                }
                Err(RowError::TooLong { field, .. }) if value.len() > MAX_URL_VALUE_BYTES => {
                    assert_eq!(field, "x");
                }
                Err(e) => panic!("{name}: {e}"),
            }
        }
    }

    #[test]
    fn hostile_values_in_a_header_value_are_text_or_a_bad_row() {
        let compiled = compile(json!({
            "url": "https://api.example.com:8443/v1/sync",
            "headers": {"X-Customer": "id {x}", "Authorization": "Bearer ${env:TOKEN}"}
        }));
        for (name, value) in hostile() {
            match render_x(&compiled, &value) {
                Ok(target) => {
                    assert_eq!(
                        target.headers["X-Customer"],
                        format!("id {value}"),
                        "{name}"
                    );
                    assert_eq!(target.headers["Authorization"], "Bearer ${env:TOKEN}");
                    assert_eq!(target.headers.len(), 2, "{name}");
                    assert_eq!(target.url, "https://api.example.com:8443/v1/sync");
                }
                Err(RowError::Refused {
                    field,
                    place,
                    reason,
                }) => {
                    assert_eq!(
                        (field.as_str(), place.as_str()),
                        ("x", "header \"X-Customer\"")
                    );
                    let control = value.chars().any(char::is_control);
                    assert!(control || value.contains("${"), "{name}: {reason}");
                }
                Err(RowError::TooLong { field, limit, .. }) => {
                    assert_eq!(
                        (field.as_str(), limit),
                        ("x", MAX_HEADER_VALUE_BYTES),
                        "{name}"
                    );
                }
                Err(e) => panic!("{name}: {e}"),
            }
        }
    }

    #[test]
    fn hostile_values_in_a_body_are_json_strings() {
        let compiled = compile(json!({
            "url": "https://api.example.com:8443/v1/sync",
            "method": "POST",
            "body": {"note": "id {x}!", "value": "{x}", "list": ["{x}", 1]}
        }));
        for (name, value) in hostile() {
            let target = render_x(&compiled, &value).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                target.body,
                Some(json!({"note": format!("id {value}!"), "value": value, "list": [value, 1]})),
                "{name}"
            );
            assert_eq!(target.url, "https://api.example.com:8443/v1/sync");
            // Serialized, the value is escaped JSON text: parsing it back gives the same body.
            let text = serde_json::to_string(&target.body).unwrap();
            assert_eq!(
                serde_json::from_str::<Option<Value>>(&text).unwrap(),
                target.body
            );
        }
    }

    #[test]
    fn dot_segments_are_refused_because_encoding_cannot_hide_them() {
        // The reason: WHATWG URL parsers (the consumer's) remove `%2E%2E` exactly like `..`.
        let parsed = url::Url::parse("https://h.example/a/%2E%2E/b/%2e/c").unwrap();
        assert_eq!(parsed.path(), "/b/c");
        let cases = [
            ("https://api.example.com/a/{x}", "."),
            ("https://api.example.com/a/{x}", ".."),
            ("https://api.example.com/a/.{x}", ""),
            ("https://api.example.com/a/.{x}", "."),
            ("https://api.example.com/a/{x}.", "."),
            ("https://api.example.com/a/%2e{x}", ""),
            ("https://api.example.com/a/%2E{x}", "."),
            ("https://api.example.com/a/{x}%2e/b", ""),
        ];
        for (url, value) in cases {
            let err = render_x(&compile_url(url), value).unwrap_err();
            assert!(
                err.to_string().contains("dot-segment"),
                "{url} {value:?}: {err}"
            );
        }
        let compiled = compile_url("https://api.example.com/a/{x}{y}/b");
        let err = compiled
            .render("j", &row(json!({"x": ".", "y": "."})), &tick())
            .unwrap_err();
        assert!(
            matches!(err, RowError::Refused { ref field, .. } if field == "x"),
            "{err}"
        );
        // Not a dot-segment: three dots, a dotted name, an encoded-looking value.
        for value in ["...", ".hidden", "%2e%2e", "a.."] {
            assert!(
                render_x(&compile_url("https://api.example.com/a/{x}"), value).is_ok(),
                "{value}"
            );
        }
    }

    #[test]
    fn an_empty_value_may_not_empty_a_path_segment() {
        for url in [
            "https://api.example.com/customers/{x}",
            "https://api.example.com/customers/{x}/sync",
            "https://api.example.com/{x}",
        ] {
            let err = render_x(&compile_url(url), "").unwrap_err();
            assert!(
                err.to_string().contains("empty path segment"),
                "{url}: {err}"
            );
        }
        // Part of a segment, or a query value, may be empty.
        let target = render_x(&compile_url("https://api.example.com/v{x}/s?q={x}"), "").unwrap();
        assert_eq!(target.url, "https://api.example.com/v/s?q=");
    }

    #[test]
    fn compile_refuses_placeholders_where_a_row_could_redirect_the_call() {
        let cases = [
            ("{s}://api.example.com/", "url: a placeholder in the scheme"),
            (
                "http{s}://api.example.com/",
                "url: a placeholder in the scheme",
            ),
            ("https://{h}/", "url: a placeholder in the host"),
            ("https://api.{h}.com/a", "url: a placeholder in the host"),
            ("https://{h}", "url: a placeholder in the host"),
            (
                "https://api.example.com{h}?q=1",
                "url: a placeholder in the host",
            ),
            (
                "https://api.example.com:{p}/",
                "url: a placeholder in the port",
            ),
            (
                "https://api.example.com:8{p}/",
                "url: a placeholder in the port",
            ),
            (
                "https://[2606:4700::1111]:{p}/",
                "url: a placeholder in the port",
            ),
            (
                "https://[2606:4700::{h}]/",
                "url: a placeholder in the host",
            ),
            (
                "https://{u}@api.example.com/",
                "url: a placeholder in the userinfo",
            ),
            (
                "https://user:{pw}@api.example.com/",
                "url: a placeholder in the userinfo",
            ),
            (
                "https://api.example.com/?{k}=1",
                "url: a placeholder in the query key \"{k}\"",
            ),
            (
                "https://api.example.com/?a=1&k{k}=1",
                "url: a placeholder in the query key",
            ),
            (
                "https://api.example.com/?{flag}",
                "url: a placeholder in the query key",
            ),
            (
                "https://api.example.com/a#{f}",
                "url: a placeholder in the fragment",
            ),
            (
                "https://api.example.com/a?q=1#x{f}",
                "url: a placeholder in the fragment",
            ),
            ("https:///{x}/a", "url: no host"),
            (
                "https://api.example.com\\{x}",
                "url: '\\\\' in the URL template",
            ),
            (
                "https://api.example.com/a\\b/{x}",
                "url: '\\\\' in the URL template",
            ),
            (
                "https://api.example.com/a\n/{x}",
                "url: '\\n' in the URL template",
            ),
            (
                "https://api.example.com/a b/{x}",
                "url: ' ' in the URL template",
            ),
            (
                "https://api.example.com/a/../{x}",
                "url: the path has 3 segments but a URL parser reads 1",
            ),
            (
                "https://api.example.com/a/%2E/{x}",
                "url: the path has 3 segments",
            ),
            (
                "https://api.example.com/a/%{x}",
                "url: path: \"%{x}\": a `%` must start a percent-escape",
            ),
            (
                "https://api.example.com/a?q=%2{x}",
                "url: query: \"%2{x}\": a `%` must start",
            ),
            (
                "https://api.example.com/a/${x}",
                "url: path: `${…}` is the consumer's environment syntax",
            ),
            (
                "https://api.example.com/a/${env:TOKEN}",
                "url: path: `${…}` is the consumer's environment syntax",
            ),
            (
                "https://api.example.com/{tick.now}",
                "url: path: unknown tick value {tick.now}",
            ),
            (
                "https://api.example.com/{a b}",
                "url: ' ' in the URL template",
            ),
            (
                "https://api.example.com/{1x}",
                "url: path: {1x} is not a placeholder",
            ),
            (
                "https://api.example.com/{}",
                "url: path: {} is not a placeholder",
            ),
            ("https://api.example.com/{x", "url: path: unterminated `{`"),
            (
                "https://api.example.com/{x/y}",
                "url: path: unterminated `{`",
            ),
            ("https://api.example.com/x}", "url: path: a lone `}`"),
            (
                "ftp://api.example.com/{x}",
                "url: scheme \"ftp\" is not allowed",
            ),
            ("https://api.example.com:0/{x}", "url: port 0"),
            ("api.example.com/{x}", "url: not a URL template"),
        ];
        for (url, expected) in cases {
            let problems = problems(json!({ "url": url }));
            assert!(
                problems.iter().any(|p| p.contains(expected)),
                "{url}: {problems:?} should contain {expected:?}"
            );
        }
        let problems = problems(json!({"url": "https://user:hunter2@api.example.com/{x}"}));
        assert!(
            problems[0].contains("url: credentials (user:password@)"),
            "{problems:?}"
        );
        assert!(!problems[0].contains("hunter2"), "{problems:?}");
    }

    #[test]
    fn compile_refuses_placeholders_in_header_names_keys_and_env_references() {
        let url = "https://api.example.com/a";
        let cases = [
            (
                json!({"headers": {"X-{h}": "v"}}),
                "headers: a placeholder in the header name \"X-{h}\"",
            ),
            (
                json!({"headers": {"X": "${env:{x}}"}}),
                "headers: header X: a row placeholder cannot stand inside `${env:…}`",
            ),
            (
                json!({"headers": {"X": "${env:A{x}}"}}),
                "a row placeholder cannot stand inside",
            ),
            (
                json!({"headers": {"X": "${{x}}"}}),
                "a row placeholder cannot stand inside",
            ),
            (
                json!({"headers": {"X": "${x}"}}),
                "headers: header X: placeholder ${x} must be ${env:NAME}",
            ),
            (
                json!({"headers": {"X": "${env:1A}"}}),
                "invalid environment variable name \"1A\"",
            ),
            (
                json!({"headers": {"X": "${env:A"}}),
                "headers: header X: unterminated `${`",
            ),
            (
                json!({"headers": {"X": "{tick.nope}"}}),
                "headers: header X: unknown tick value",
            ),
            (
                json!({"headers": {"X": "a\r\n{x}"}}),
                "headers: header X: value has a control character",
            ),
            (
                json!({"headers": {"Host": "{x}.example.com"}}),
                "headers: header Host frames or routes",
            ),
            (
                json!({"headers": {"Idempotency-Key": "{x}"}}),
                "header Idempotency-Key is set by the consumer",
            ),
            (
                json!({"body": {"{k}": 1}}),
                "body: body at \"/{k}\": a placeholder in an object key",
            ),
            (
                json!({"body": {"a": [{"b{k}": 1}]}}),
                "body: body at \"/a/0/b{k}\": a placeholder in an object key",
            ),
            (
                json!({"body": {"a/b~": {"{k}": 1}}}),
                "body at \"/a~1b~0/{k}\"",
            ),
            (
                json!({"body": {"a": "{x"}}),
                "body: body at \"/a\": unterminated `{`",
            ),
            (json!({"body": "}"}), "body: the body: a lone `}`"),
            (
                json!({"body": {"a": "${env:TOKEN}"}}),
                "body: body at \"/a\": `${…}` is the consumer's environment syntax",
            ),
            (
                json!({"body": {"a": "{tick.x}"}}),
                "unknown tick value {tick.x}",
            ),
            (
                json!({"method": "FETCH"}),
                "method: unknown method \"FETCH\"",
            ),
            (
                json!({"timeout_ms": 0}),
                "timeout_ms: must be 1..=900000, got 0",
            ),
            (
                json!({"timeout_ms": 900_001}),
                "timeout_ms: must be 1..=900000, got 900001",
            ),
        ];
        for (mut fields, expected) in cases {
            fields["url"] = url.into();
            let problems = problems(fields.clone());
            assert!(
                problems.iter().any(|p| p.contains(expected)),
                "{fields}: {problems:?} should contain {expected:?}"
            );
        }
    }

    #[test]
    fn compile_reports_every_problem_at_once() {
        let problems = problems(json!({
            "url": "https://{h}/a#{f}",
            "method": "FETCH",
            "headers": {"X-{a}": "v", "Y": "${env:{b}}"},
            "body": {"{k}": "{v"},
            "timeout_ms": 0
        }));
        assert_eq!(problems.len(), 8, "{problems:#?}");
        for field in ["url:", "method:", "headers:", "body:", "timeout_ms:"] {
            assert!(
                problems.iter().any(|p| p.starts_with(field)),
                "{field} {problems:#?}"
            );
        }
    }

    #[test]
    fn the_config_form_refuses_unknown_fields() {
        let err =
            serde_json::from_value::<Template>(json!({"url": "https://a.example/", "uri": "x"}))
                .unwrap_err()
                .to_string();
        assert!(err.contains("unknown field `uri`"), "{err}");
        let yaml = "url: https://api.example.com/c/{id}\nmethod: post\nheaders:\n  X-Id: \"{id}\"\nbody:\n  n: \"{n}\"\n";
        let parsed: Template = serde_norway::from_str(yaml).unwrap();
        let target = parsed
            .compile(&Defaults::default())
            .unwrap()
            .render("j", &row(json!({"id": "7", "n": 3})), &tick())
            .unwrap();
        assert_eq!(
            (target.method.as_str(), target.url.as_str()),
            ("POST", "https://api.example.com/c/7")
        );
        assert_eq!(target.body, Some(json!({"n": 3})));
    }

    #[test]
    fn body_placeholders_keep_their_json_type() {
        let compiled = compile(json!({
            "url": "https://api.example.com/sync",
            "method": "POST",
            "body": {
                "amount": "{amount}", "active": "{active}", "name": "{name}", "looks_like_json": "{json}",
                "customer": "{customer}", "tags": "{tags}", "none": "{none}", "float": "{float}",
                "text": "{amount} x {name}, {active}", "fixed": 42, "nested": [{"deep": "{amount}"}, null]
            }
        }));
        let target = compiled
            .render(
                "j",
                &row(json!({
                    "amount": 12, "active": true, "name": "Zoë", "json": "{\"a\":1}",
                    "customer": {"id": 7, "tier": "gold"}, "tags": ["a", "b"], "none": null, "float": 1.25
                })),
                &tick(),
            )
            .unwrap();
        let body = target.body.unwrap();
        assert_eq!(body["amount"], json!(12));
        assert_eq!(body["active"], json!(true));
        assert_eq!(body["name"], json!("Zoë"));
        assert_eq!(body["looks_like_json"], json!("{\"a\":1}"));
        assert!(body["looks_like_json"].is_string());
        assert_eq!(body["customer"], json!({"id": 7, "tier": "gold"}));
        assert_eq!(body["tags"], json!(["a", "b"]));
        assert_eq!(body["none"], Value::Null);
        assert_eq!(body["float"], json!(1.25));
        assert_eq!(body["text"], json!("12 x Zoë, true"));
        assert_eq!(body["fixed"], json!(42));
        assert_eq!(body["nested"], json!([{"deep": 12}, null]));
    }

    #[test]
    fn numbers_and_booleans_render_as_json_text_and_other_types_are_wrong() {
        let compiled = compile(json!({
            "url": "https://api.example.com/c/{x}?q={x}",
            "headers": {"X-V": "{x}"},
            "method": "POST",
            "body": {"t": "v={x}"}
        }));
        for (value, text, encoded) in [
            (json!(12), "12", "12"),
            (json!(-1.5), "-1.5", "-1.5"),
            (json!(true), "true", "true"),
            (json!(1e300), "1e+300", "1e%2B300"),
        ] {
            let target = compiled
                .render("j", &row(json!({ "x": value })), &tick())
                .unwrap();
            assert_eq!(
                target.url,
                format!("https://api.example.com/c/{encoded}?q={encoded}")
            );
            assert_eq!(target.headers["X-V"], text);
            assert_eq!(target.body, Some(json!({"t": format!("v={text}")})));
        }
        for (value, found) in [
            (json!(null), "null"),
            (json!({"a": 1}), "an object"),
            (json!([1]), "an array"),
        ] {
            let err = compiled
                .render("j", &row(json!({ "x": value })), &tick())
                .unwrap_err();
            assert_eq!(
                err,
                RowError::WrongType {
                    field: "x".into(),
                    place: "URL path segment 2".into(),
                    found
                },
            );
        }
        let places = [
            (
                "https://api.example.com/c?q={x}",
                json!({}),
                "URL query value \"q\"",
            ),
            (
                "https://api.example.com/c",
                json!({"headers": {"X-V": "{x}"}}),
                "header \"X-V\"",
            ),
            (
                "https://api.example.com/c",
                json!({"body": {"t": "v={x}"}}),
                "body at \"/t\"",
            ),
            (
                "https://api.example.com/c",
                json!({"body": ["a {x}"]}),
                "body at \"/0\"",
            ),
            (
                "https://api.example.com/c",
                json!({"body": "a {x}"}),
                "the body",
            ),
        ];
        for (url, mut fields, place) in places {
            fields["url"] = url.into();
            let compiled = compile(fields);
            let err = compiled
                .render("j", &row(json!({"x": {"a": 1}})), &tick())
                .unwrap_err();
            assert_eq!(err.to_string(), format!("field `x` is an object, which cannot stand in {place} (a string, number or boolean can)"));
        }
    }

    #[test]
    fn a_missing_field_is_named_with_its_place() {
        let compiled = compile(json!({
            "url": "https://api.example.com/customers/{customer_id}/sync?since={tick.last_success_at}",
            "headers": {"X-Region": "{region}"},
            "method": "POST",
            "body": {"amount": "{amount}"}
        }));
        assert_eq!(
            compiled.placeholders(),
            ["amount", "customer_id", "region"].map(String::from).into()
        );
        let err = compiled
            .render("j", &row(json!({"region": "eu", "amount": 1})), &tick())
            .unwrap_err();
        assert_eq!(
            err,
            RowError::Missing {
                field: "customer_id".into(),
                place: "URL path segment 2".into()
            }
        );
        assert_eq!(err.field(), "customer_id");
        assert_eq!(
            err.to_string(),
            "row has no field `customer_id` (needed in URL path segment 2)"
        );
        let err = compiled
            .render("j", &row(json!({"customer_id": 1, "amount": 1})), &tick())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "row has no field `region` (needed in header \"X-Region\")"
        );
        let err = compiled
            .render(
                "j",
                &row(json!({"customer_id": 1, "region": "eu"})),
                &tick(),
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "row has no field `amount` (needed in body at \"/amount\")"
        );
        // Extra fields are ignored.
        let target = compiled
            .render(
                "j",
                &row(json!({"customer_id": 1, "region": "eu", "amount": 1, "extra": [1]})),
                &tick(),
            )
            .unwrap();
        assert_eq!(
            target.url,
            "https://api.example.com/customers/1/sync?since=2026-11-21T10%3A00%3A00Z"
        );
    }

    #[test]
    fn tick_values_render_in_every_position() {
        let compiled = compile(json!({
            "url": "https://api.example.com/runs/{tick.run_id}?at={tick.scheduled_at}&since={tick.last_success_at}",
            "headers": {"X-Run": "{tick.run_id}", "X-Since": "since {tick.last_success_at}"},
            "method": "POST",
            "body": {"since": "{tick.last_success_at}", "at": "at {tick.scheduled_at}"}
        }));
        assert!(compiled.placeholders().is_empty());
        let target = compiled.render("j", &Map::new(), &tick()).unwrap();
        assert_eq!(
            target.url,
            "https://api.example.com/runs/rule%402026-11-21T10%3A15%3A00Z?at=2026-11-21T10%3A15%3A00Z&since=2026-11-21T10%3A00%3A00Z"
        );
        assert_eq!(target.headers["X-Run"], "rule@2026-11-21T10:15:00Z");
        assert_eq!(target.headers["X-Since"], "since 2026-11-21T10:00:00Z");
        assert_eq!(
            target.body,
            Some(json!({"since": "2026-11-21T10:00:00Z", "at": "at 2026-11-21T10:15:00Z"}))
        );
        // A tick value is checked like a row value.
        let mut bad = tick();
        bad.run_id = "a\r\nb".into();
        let err = compiled.render("j", &Map::new(), &bad).unwrap_err();
        assert_eq!(err.field(), "tick.run_id");
        // A row field named `tick` is a row field.
        let compiled = compile_url("https://api.example.com/{tick}");
        assert_eq!(compiled.placeholders(), ["tick".to_owned()].into());
    }

    #[test]
    fn doubled_braces_are_literal_braces() {
        let compiled = compile(json!({
            "url": "https://api.example.com/a{{b}}/{x}?q={{{x}}}&{{k}}=1",
            "headers": {"X-Json": "{{\"id\": \"{x}\"}}"},
            "method": "POST",
            "body": {"query": "{{ user(id: {x}) {{ name }} }}", "{{key}}": "{{x}}", "cost": "${{x}}"}
        }));
        assert_eq!(compiled.placeholders(), ["x".to_owned()].into());
        let target = render_x(&compiled, "7").unwrap();
        assert_eq!(target.url, "https://api.example.com/a{b}/7?q={7}&{k}=1");
        assert_eq!(target.headers["X-Json"], "{\"id\": \"7\"}");
        assert_eq!(
            target.body,
            Some(json!({"query": "{ user(id: 7) { name } }", "{key}": "{x}", "cost": "${x}"}))
        );
    }

    #[test]
    fn env_references_stay_for_the_consumer_and_rows_cannot_forge_one() {
        let compiled = compile(json!({
            "url": "https://api.example.com/a",
            "headers": {
                "Authorization": "Bearer ${env:TOKEN}",
                "X-Mixed": "{x}-${env:TENANT}-{x}",
                "X-Trap": "{x}{{env:SECRET}}",
                "X-Price": "{x} $"
            }
        }));
        let target = render_x(&compiled, "v").unwrap();
        assert_eq!(target.headers["Authorization"], "Bearer ${env:TOKEN}");
        assert_eq!(target.headers["X-Mixed"], "v-${env:TENANT}-v");
        assert_eq!(target.headers["X-Trap"], "v{env:SECRET}");
        assert_eq!(target.headers["X-Price"], "v $");
        for value in ["${env:SECRET}", "a${b", "${"] {
            let err = render_x(&compiled, value).unwrap_err();
            assert!(err.to_string().contains("secret syntax"), "{value}: {err}");
        }
        // `$` then the template's literal `{env:SECRET}` would make the consumer send its secret.
        let err = render_x(&compiled, "$").unwrap_err();
        assert_eq!(
            err,
            RowError::Refused {
                field: "x".into(),
                place: "header \"X-Trap\"".into(),
                reason: "the value would form a `${env:…}` reference with the text around it"
                    .into()
            }
        );
        // A `$` elsewhere is text.
        let compiled =
            compile(json!({"url": "https://api.example.com/a", "headers": {"X-Price": "{x}!"}}));
        assert_eq!(render_x(&compiled, "$5").unwrap().headers["X-Price"], "$5!");
    }

    #[test]
    fn defaults_apply_as_for_literal_targets_and_stay_literal() {
        let defaults = Defaults {
            method: "post".into(),
            timeout_ms: 1234,
            headers: [
                ("Authorization".to_owned(), "Bearer ${env:A}".to_owned()),
                ("X-Default".to_owned(), "{not-a-placeholder}".to_owned()),
            ]
            .into(),
        };
        let compiled = template(json!({"url": "https://api.example.com/{x}", "headers": {"authorization": "Bearer ${env:B}"}}))
            .compile(&defaults)
            .unwrap();
        let target = render_x(&compiled, "1").unwrap();
        assert_eq!((target.method.as_str(), target.timeout_ms), ("POST", 1234));
        assert_eq!(
            target.headers.into_iter().collect::<Vec<_>>(),
            [
                ("X-Default".to_owned(), "{not-a-placeholder}".to_owned()),
                ("authorization".to_owned(), "Bearer ${env:B}".to_owned()),
            ]
        );
        let compiled = template(
            json!({"url": "https://api.example.com/{x}", "method": "delete", "timeout_ms": 9}),
        )
        .compile(&defaults)
        .unwrap();
        let target = render_x(&compiled, "1").unwrap();
        assert_eq!((target.method.as_str(), target.timeout_ms), ("DELETE", 9));
        let bad = Defaults {
            headers: [("Host".to_owned(), "x".to_owned())].into(),
            ..Defaults::default()
        };
        let err = template(json!({"url": "https://api.example.com/{x}"}))
            .compile(&bad)
            .unwrap_err();
        assert!(
            err[0]
                .to_string()
                .starts_with("headers: header Host frames or routes"),
            "{err:?}"
        );
    }

    #[test]
    fn size_limits_refuse_long_values_and_long_calls() {
        let compiled = compile(json!({
            "url": "https://api.example.com/{x}/{y}?q={x}",
            "headers": {"X-Two": "{x}{y}"}
        }));
        let at_limit = "a".repeat(MAX_URL_VALUE_BYTES);
        assert!(compiled
            .render("j", &row(json!({"x": at_limit, "y": "b"})), &tick())
            .is_ok());
        let err = compiled
            .render(
                "j",
                &row(json!({"x": format!("{at_limit}a"), "y": "b"})),
                &tick(),
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "field `x` is 2049 bytes, over the 2048-byte limit of URL path segment 1"
        );
        // Each value within its limit, the encoded URL over 8 KiB.
        let slashes = "/".repeat(MAX_URL_VALUE_BYTES);
        let err = compiled
            .render("j", &row(json!({"x": slashes, "y": "b"})), &tick())
            .unwrap_err();
        assert!(
            matches!(err, RowError::TooLong { ref field, limit: MAX_URL_BYTES, .. } if field == "url"),
            "{err}"
        );
        // A header value over 8 KiB as a whole.
        let compiled =
            compile(json!({"url": "https://api.example.com/", "headers": {"X-Two": "{x}{y}"}}));
        let half = "h".repeat(MAX_HEADER_VALUE_BYTES / 2 + 1);
        let err = compiled
            .render("j", &row(json!({"x": half, "y": half})), &tick())
            .unwrap_err();
        assert!(
            matches!(err, RowError::TooLong { ref field, limit: MAX_HEADER_VALUE_BYTES, .. } if field == "headers"),
            "{err}"
        );
        // A 64 KiB value fits in a body (the message limit is the producer's check).
        let compiled = compile(
            json!({"url": "https://api.example.com/", "method": "POST", "body": {"v": "{x}"}}),
        );
        assert!(render_x(&compiled, &"a".repeat(64 * 1024)).is_ok());
    }

    #[test]
    fn errors_never_quote_the_value() {
        let compiled =
            compile(json!({"url": "https://api.example.com/{x}", "headers": {"X": "{x}"}}));
        for value in ["s3cret\r\n", &"s3cret".repeat(2000)] {
            let err = render_x(&compiled, value).unwrap_err().to_string();
            assert!(!err.contains("s3cret"), "{err}");
        }
    }

    #[test]
    fn a_rendered_call_that_breaks_a_target_rule_is_a_bad_row() {
        let compiled = compile_url("https://api.example.com/{x}");
        let err = compiled
            .render("", &row(json!({"x": "1"})), &tick())
            .unwrap_err();
        assert_eq!(err, RowError::Target(FieldError::new("id", "is empty")));
        assert_eq!(err.field(), "id");
        assert_eq!(err.to_string(), "the rendered call's id: is empty");
    }

    #[test]
    fn the_shape_check_catches_a_url_that_moved() {
        // Tamper with the expected shape: render must refuse what no longer matches it.
        let mut compiled = compile_url("https://api.example.com/a/{x}?k={x}");
        assert_eq!(compiled.host(), "api.example.com");
        compiled.url.shape.host = "other.example.com".into();
        let err = render_x(&compiled, "1").unwrap_err();
        assert_eq!(
            err,
            RowError::Shape("has host Some(\"api.example.com\")".into())
        );
        assert_eq!(err.field(), "url");
        let mut compiled = compile_url("https://api.example.com/a/{x}?k={x}");
        compiled.url.shape.query_keys = Some(vec!["k".into(), "extra".into()]);
        assert!(matches!(render_x(&compiled, "1"), Err(RowError::Shape(_))));
        let mut compiled = compile_url("https://api.example.com/a/{x}?k={x}");
        compiled.url.shape.segments[0] = Some("b".into());
        assert!(matches!(render_x(&compiled, "1"), Err(RowError::Shape(_))));
    }

    #[test]
    fn hosts_ports_and_literal_urls_keep_their_parsed_form() {
        for (url, host, port) in [
            ("https://API.Example.com/{x}", "api.example.com", None),
            ("https://api.example.com:443/{x}", "api.example.com", None),
            (
                "http://api.example.com:8080/{x}",
                "api.example.com",
                Some(8080),
            ),
            (
                "https://[2606:4700::1111]:8443/{x}",
                "[2606:4700::1111]",
                Some(8443),
            ),
            ("https://bücher.example/{x}", "xn--bcher-kva.example", None),
            ("https://api.example.com", "api.example.com", None),
            ("https://api.example.com?q={x}", "api.example.com", None),
        ] {
            let compiled = compile_url(url);
            assert_eq!(compiled.host(), host, "{url}");
            let target = render_x(&compiled, "../@evil.example:1/").unwrap();
            let parsed = url::Url::parse(&target.url).unwrap();
            assert_eq!(
                (parsed.host_str(), parsed.port()),
                (Some(host), port),
                "{url}"
            );
            assert_eq!(target.host().as_deref(), Some(host), "{url}");
        }
        let target = render_x(&compile_url("https://api.example.com/a/{x}/#frag"), "b").unwrap();
        assert_eq!(target.url, "https://api.example.com/a/b/#frag");
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        /// Any JSON value, a few levels deep.
        fn any_json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                ".{0,12}".prop_map(Value::from),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                    prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// Text rich in delimiters, escapes and non-ASCII, and any string at all.
        fn value() -> impl Strategy<Value = String> {
            prop_oneof![
                "[./?#@%&=+;:\\\\ a-zA-Z0-9{}$~\u{fc}\u{1f600}\u{200f}\u{202e}]{0,40}",
                "[./?#@%&=+;:\\\\ \r\n\t\0a-z{}$]{0,8}",
                any::<String>(),
            ]
        }

        /// Templates, and their segments without placeholders.
        const URLS: &[(&str, &[(usize, &str)])] = &[
            (
                "https://api.example.com:8443/v1/{x}/sync?mode=full",
                &[(0, "v1"), (2, "sync")],
            ),
            (
                "https://api.example.com:8443/v1/id-{x}.json?mode=full",
                &[(0, "v1")],
            ),
            (
                "https://api.example.com:8443/v1/{x}{y}?mode=full",
                &[(0, "v1")],
            ),
            (
                "https://api.example.com:8443/v1/sync?id={x}&mode={y}",
                &[(0, "v1"), (1, "sync")],
            ),
            (
                "https://api.example.com:8443/{x}/{y}/z?a={x}&b=pre{y}post",
                &[(2, "z")],
            ),
        ];

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1000))]

            #[test]
            fn any_values_keep_the_url_shape(which in 0..URLS.len(), x in value(), y in value()) {
                let (template, literal) = URLS[which];
                let compiled = compile(json!({
                    "url": template,
                    "method": "POST",
                    "body": {"x": "{x}", "t": "{x}/{y}"}
                }));
                let expected = shape(&render_x_y(&compiled, "a", "b").unwrap().url);
                match render_x_y(&compiled, &x, &y) {
                    Ok(target) => {
                        let (scheme, host, port, segments, keys) = shape(&target.url);
                        prop_assert_eq!(&(scheme, host, port), &(expected.0, expected.1, expected.2));
                        prop_assert_eq!(segments.len(), expected.3.len());
                        for (i, text) in literal {
                            prop_assert_eq!(&segments[*i], text);
                        }
                        prop_assert_eq!(keys, expected.4);
                        prop_assert!(target.check().is_ok());
                        prop_assert_eq!(target.body, Some(json!({"x": x, "t": format!("{x}/{y}")})));
                    }
                    Err(RowError::Refused { reason, .. }) => {
                        // Only a whole segment that would be empty or a dot-segment.
                        let dot = |v: &str| matches!(v, "" | "." | "..");
                        prop_assert!(dot(&x) || dot(&y) || dot(&format!("{x}{y}")), "{}", reason);
                    }
                    Err(e) => prop_assert!(false, "{}", e),
                }
            }

            #[test]
            fn any_values_in_a_header_are_that_headers_text(x in value(), y in value()) {
                let compiled = compile(json!({
                    "url": "https://api.example.com/a",
                    "headers": {"X-V": "{x}-${env:TOKEN}-{y}", "X-Trap": "{x}{{env:SECRET}}"}
                }));
                match render_x_y(&compiled, &x, &y) {
                    Ok(target) => {
                        prop_assert_eq!(target.headers.len(), 2);
                        prop_assert_eq!(&target.headers["X-V"], &format!("{x}-${{env:TOKEN}}-{y}"));
                        prop_assert_eq!(&target.headers["X-Trap"], &format!("{x}{{env:SECRET}}"));
                        prop_assert!(target.check().is_ok());
                    }
                    Err(RowError::Refused { reason, .. }) => {
                        let unsafe_value = |v: &str| v.chars().any(char::is_control) || v.contains("${");
                        prop_assert!(unsafe_value(&x) || unsafe_value(&y) || x.ends_with('$'), "{}", reason);
                    }
                    Err(e) => prop_assert!(false, "{}", e),
                }
            }

            #[test]
            fn any_json_keeps_its_type_in_the_body_and_only_scalars_enter_the_url(v in any_json()) {
                let compiled = compile(json!({
                    "url": "https://api.example.com/a/v{v}?q={v}",
                    "method": "POST",
                    "body": {"exact": "{v}", "list": ["{v}"]}
                }));
                match compiled.render("j", &row(json!({ "v": v })), &tick()) {
                    Ok(target) => {
                        prop_assert!(matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_)));
                        prop_assert_eq!(target.body, Some(json!({"exact": v, "list": [v]})));
                        let (_, host, _, segments, keys) = shape(&target.url);
                        prop_assert_eq!((host.as_str(), segments.len(), keys), (HOST, 2, vec!["q".to_owned()]));
                    }
                    Err(RowError::WrongType { .. }) => {
                        prop_assert!(matches!(v, Value::Null | Value::Array(_) | Value::Object(_)));
                    }
                    Err(RowError::TooLong { .. }) => {}
                    Err(e) => prop_assert!(false, "{}", e),
                }
            }
        }

        fn render_x_y(
            compiled: &CompiledTemplate,
            x: &str,
            y: &str,
        ) -> Result<JobTarget, RowError> {
            compiled.render("job-1", &row(json!({ "x": x, "y": y })), &tick())
        }
    }
}
