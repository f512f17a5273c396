//! The parts of an HTTP list endpoint: one part per page, each page fetched when the previous
//! one has been read to its end, so at most one page is in memory (its body is capped at
//! [`MAX_PAGE_BYTES`]).
//!
//! Every page is a GET through the guarded client the consumer calls targets with
//! (`fanout_shared::guarded_http`): the SSRF guard judges every address connected to, unless
//! the config sets `allow_private_networks`, and every redirect and every next page must stay
//! within the list's allow-list. That allow-list is the location's own host plus the config's
//! allowed hosts (every target's and template's host, every `hosts` key): the hosts the
//! pipeline already trusts, so a list that moves to another host (a CDN, a paging host) is
//! allowed by naming it under `hosts`, in the one place an operator reviews. Headers come from
//! `http.headers`, `${env:NAME}` resolved from the producer's environment when the client is
//! built; errors name the page and its URL, never a header's value.
//!
//! A page that fails in a way that may pass (a connection error, a timeout, HTTP 408, 429 or
//! 5xx) is asked again, up to [`PAGE_ATTEMPTS`] times with a doubling pause; then, and for
//! anything else, the source fails (the tick publishes nothing): an HTTP error status, a page that is not
//! JSON or whose rows are not where `http.rows_at` says (or not an array), a cursor of the
//! wrong type, a next page refused by the allow-list or the guard, a next page that leads back
//! to a page already read (a cursor loop), more pages than `http.max_pages`. A row that is not
//! a JSON object is a bad row, named by its page and element.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, LINK};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;
use tokio::runtime::Handle;

use fanout_shared::guarded_http::{
    self, env_headers, refused_address, root_cause, GuardedClient, Hop, HopRefused, RedirectRules,
    Sent,
};
use fanout_shared::rows::{json_kind, Format, ReadError, Row};
use fanout_shared::sources::{HttpList, Source};
use fanout_shared::PipelineConfig;

use super::parts::{Part, Parts, Rows, SourceError};

/// The largest page read, in bytes: one page is held in memory at a time (parsed, a few times
/// its size), and the producer runs in a small function. A list larger than that pages.
pub(super) const MAX_PAGE_BYTES: usize = 32 << 20;

/// How a refusal names the list's allow-list, so the reader learns how to extend it.
const ALLOW_LIST: &str = "the list's allowed hosts (its location's host and the config's \
                          allowed hosts; a `hosts` key of the config allows another)";

/// The pages of the HTTP list endpoint at `first` (the source's location), read with
/// `config`'s guard and allow-list. Fails before any request when the client cannot be built
/// (an unset `${env:…}` variable, an invalid header value) or no runtime drives it.
pub(super) fn parts(
    runtime: Option<Handle>,
    config: &PipelineConfig,
    source: &Source,
    first: Url,
) -> Result<Parts, SourceError> {
    let runtime = runtime.ok_or(SourceError::NoRuntime)?;
    let settings = source.http.clone().unwrap_or_default();
    let mut headers = env_headers(&settings.headers)?;
    if !headers.contains_key(ACCEPT) {
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    }
    let mut allowed = config.allowed_hosts();
    allowed.insert(first.host_str().unwrap_or_default().to_ascii_lowercase());
    let allow_private = config.allow_private_networks;
    let client = guarded_http::client_builder(allow_private)
        .build()
        .map_err(SourceError::Client)?;
    let rules = RedirectRules::new(allowed, allow_private, ALLOW_LIST);
    Ok(Box::new(Pages {
        client: GuardedClient::new(client, rules),
        runtime,
        timeout: Duration::from_millis(settings.timeout_ms),
        settings,
        headers,
        next: Some(first.clone()),
        first,
        read: 0,
        seen: HashMap::new(),
    }))
}

/// The iterator of a list's pages.
struct Pages {
    client: GuardedClient,
    runtime: Handle,
    settings: HttpList,
    timeout: Duration,
    /// Every page's request headers (sensitive values marked).
    headers: HeaderMap,
    /// The location: cursors are sent back to it.
    first: Url,
    /// The next page to read, if any.
    next: Option<Url>,
    /// Pages read so far.
    read: u32,
    /// Each page's URL and number, to refuse a loop.
    seen: HashMap<String, u32>,
}

/// Attempts at one page before its failure fails the source.
const PAGE_ATTEMPTS: u32 = 3;
/// The pause after a page's first failed attempt; it doubles after each.
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// A page that could not be read, which ends the list and fails the source. It names the page
/// and its URL (never a header: secrets stay in the request).
#[derive(Debug, thiserror::Error)]
#[error("page {number} ({url}): {problem}")]
pub(super) struct PageError {
    /// The page, 1-based.
    number: u32,
    /// Where it was asked for.
    url: Url,
    /// What went wrong.
    problem: PageProblem,
}

/// Why a page ended the list.
#[derive(Debug, thiserror::Error)]
enum PageProblem {
    /// Every attempt failed in a way that may pass; the last one's failure.
    #[error("{0} (after {PAGE_ATTEMPTS} attempts)")]
    GaveUp(FetchError),
    /// A failure that another attempt would repeat.
    #[error(transparent)]
    Failed(FetchError),
    /// The `Link` header's next page breaks the list's rules (allow-list, guard).
    #[error("next page refused: {0}")]
    NextRefused(HopRefused),
    /// The next page is one already read: the list would never end.
    #[error("{next} leads back to page {earlier}, already read (a pagination loop)")]
    Loop {
        /// How the page said where the list goes on.
        next: NextPage,
        /// The page it leads back to.
        earlier: u32,
    },
    /// More pages than `http.max_pages`.
    #[error("the list goes on past {0} pages, the most read (http.max_pages)")]
    TooManyPages(u32),
}

/// Why one attempt at a page failed.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    /// The page's URL breaks the list's rules (allow-list, guard).
    #[error("refused: {0}")]
    Refused(HopRefused),
    /// A redirect the rules refused (`redirect refused: …`).
    #[error("{0}")]
    Redirect(String),
    /// The guard's resolver refused the address the page's host resolves to.
    #[error("refused: {0}")]
    RefusedAddress(String),
    /// No connection, as the client's innermost error words it.
    #[error("connection failed: {0}")]
    Connect(String),
    /// The request failed otherwise, as the client's innermost error words it.
    #[error("request failed: {0}")]
    Request(String),
    /// The page (redirects and body included) took longer than `http.timeout_ms`.
    #[error("no complete answer within {0} ms (http.timeout_ms)")]
    TimedOut(u128),
    /// An error status.
    #[error("HTTP {0}")]
    Status(StatusCode),
    /// A body past [`MAX_PAGE_BYTES`].
    #[error("the page is larger than {MAX_PAGE_BYTES} bytes")]
    TooLarge,
    /// A body that is not JSON.
    #[error("the page is not JSON ({0})")]
    NotJson(serde_json::Error),
    /// JSON without the rows or cursor where the list's settings say.
    #[error(transparent)]
    Content(#[from] BadPage),
}

/// A page whose JSON (or `Link` header) does not hold what the list's settings say: another
/// attempt would read the same.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum BadPage {
    /// The cursor is neither a string nor an integer.
    #[error("the cursor at {pointer} (http.next_cursor) is {found}, not a string or an integer")]
    Cursor {
        /// `http.next_cursor`.
        pointer: String,
        /// What it is instead.
        found: &'static str,
    },
    /// No `http.rows_at`, and the page is not an array.
    #[error("the page is {0}, not an array of rows (http.rows_at says where they are in it)")]
    NotArray(&'static str),
    /// Nothing at `http.rows_at`.
    #[error("no rows at {0} (http.rows_at)")]
    NoRows(String),
    /// Something other than an array at `http.rows_at`.
    #[error("the rows at {pointer} (http.rows_at) are {found}, not an array")]
    RowsNotArray {
        /// `http.rows_at`.
        pointer: String,
        /// What is there instead.
        found: &'static str,
    },
    /// The `Link` header's next target does not resolve to a URL.
    #[error("the Link header's next URL {target:?} is not a URL ({reason})")]
    Link {
        /// The target, as the header gives it.
        target: String,
        /// The parser's objection.
        reason: UrlParseError,
    },
}

/// `url`'s parse error, named through reqwest's `Url`.
type UrlParseError = <Url as std::str::FromStr>::Err;

/// Why a page could not be had: worth another attempt, or not.
#[derive(Debug)]
enum Failed {
    /// A connection error, a timeout, HTTP 408, 429 or 5xx.
    Transient(FetchError),
    /// Anything else: an error status, a page that is not a list, a refused address.
    Permanent(FetchError),
}

/// A page's content is what it is: asking again reads the same.
impl From<BadPage> for Failed {
    fn from(e: BadPage) -> Self {
        Failed::Permanent(e.into())
    }
}

/// Where a page says the list goes on.
#[derive(Debug, PartialEq)]
enum NextPage {
    /// The cursor found at `http.next_cursor`.
    Cursor(String),
    /// The URL of the `Link: <…>; rel="next"` header.
    Link(Url),
}

/// How a loop's error names the way the page led on.
impl std::fmt::Display for NextPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NextPage::Cursor(cursor) => write!(f, "its next cursor {cursor:?}"),
            NextPage::Link(url) => write!(f, "its next link {url}"),
        }
    }
}

impl Iterator for Pages {
    type Item = Result<Part, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        let url = self.next.take()?;
        let number = self.read + 1;
        let page = self.page(number, &url).map_err(|problem| {
            SourceError::Page(Box::new(PageError {
                number,
                url,
                problem,
            }))
        });
        Some(page)
    }
}

impl Pages {
    /// Reads page `number` at `url` and finds the next one; an error ends the list.
    fn page(&mut self, number: u32, url: &Url) -> Result<Part, PageProblem> {
        self.seen.insert(url.as_str().to_owned(), number);
        let (rows, next) = self.runtime.block_on(self.fetch_retried(url))?;
        self.read = number;
        self.next = match next {
            None => None,
            Some(next) => Some(self.next_url(number, next)?),
        };
        tracing::debug!(page = number, rows = rows.len(), "list page read");
        let rows: Rows = Box::new(rows.into_iter().enumerate().map(|(i, value)| {
            let line = i as u64 + 1;
            match value {
                Value::Object(values) => Ok(Row { line, values }),
                other => Err(ReadError::BadRow {
                    format: Format::JsonArray,
                    line,
                    problem: format!("expected an object, got {}", json_kind(&other)),
                }),
            }
        }));
        Ok(Part {
            label: Some(format!("page {number}")),
            version: None,
            rows,
        })
    }

    /// The URL page `number` leads to, or why it may not be read: refused by the allow-list or
    /// the guard, a page already read (a loop), past `http.max_pages`.
    fn next_url(&self, number: u32, next: NextPage) -> Result<Url, PageProblem> {
        let url = match &next {
            NextPage::Cursor(cursor) => {
                with_cursor(&self.first, self.settings.cursor_param(), cursor)
            }
            NextPage::Link(url) => {
                self.client
                    .rules()
                    .check(url)
                    .map_err(PageProblem::NextRefused)?;
                url.clone()
            }
        };
        if let Some(&earlier) = self.seen.get(url.as_str()) {
            return Err(PageProblem::Loop { next, earlier });
        }
        let max = self.settings.max_pages;
        if number >= max {
            return Err(PageProblem::TooManyPages(max));
        }
        Ok(url)
    }

    /// [`Pages::fetch`], tried up to [`PAGE_ATTEMPTS`] times while it fails in a way that may
    /// pass (a connection error, a timeout, HTTP 408, 429 or 5xx), with a growing pause: a list
    /// endpoint's blip costs a moment, not the tick. The last failure is the one reported.
    async fn fetch_retried(
        &self,
        url: &Url,
    ) -> Result<(Vec<Value>, Option<NextPage>), PageProblem> {
        let mut pause = FIRST_RETRY_PAUSE;
        let mut attempt = 1;
        loop {
            match self.fetch(url).await {
                Ok(page) => return Ok(page),
                Err(Failed::Transient(why)) if attempt < PAGE_ATTEMPTS => {
                    tracing::warn!(%url, attempt, error = %why, "list page failed, retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    attempt += 1;
                }
                Err(Failed::Transient(why)) => return Err(PageProblem::GaveUp(why)),
                Err(Failed::Permanent(why)) => return Err(PageProblem::Failed(why)),
            }
        }
    }

    /// One page's rows and where the list goes on.
    async fn fetch(&self, url: &Url) -> Result<(Vec<Value>, Option<NextPage>), Failed> {
        self.client
            .rules()
            .check(url)
            .map_err(|e| Failed::Permanent(FetchError::Refused(e)))?;
        let hop = Hop {
            url: url.clone(),
            method: Method::GET,
            headers: self.headers.clone(),
            body: None,
        };
        let mut response = match self.client.send(hop, self.timeout).await {
            Sent::Response(response) => response,
            Sent::Refused { reason, .. } => {
                return Err(Failed::Permanent(FetchError::Redirect(reason)))
            }
            Sent::Failed(err) if refused_address(&err).is_some() => {
                return Err(Failed::Permanent(self.failed(&err)))
            }
            Sent::Failed(err) => return Err(Failed::Transient(self.failed(&err))),
            Sent::TimedOut => return Err(Failed::Transient(self.timed_out())),
        };
        let status = response.status();
        if !status.is_success() {
            let why = FetchError::Status(status);
            return Err(
                if status.is_server_error() || matches!(status.as_u16(), 408 | 429) {
                    Failed::Transient(why)
                } else {
                    Failed::Permanent(why)
                },
            );
        }
        let link = match &self.settings.next_cursor {
            None => next_link(response.headers(), response.url())?,
            Some(_) => None,
        };
        let body = self.body(&mut response).await?;
        let mut page: Value =
            serde_json::from_slice(&body).map_err(|e| Failed::Permanent(FetchError::NotJson(e)))?;
        drop(body);
        let next = match &self.settings.next_cursor {
            Some(pointer) => cursor(&page, pointer)?.map(NextPage::Cursor),
            None => link.map(NextPage::Link),
        };
        let rows = take_rows(&mut page, self.settings.rows_at.as_deref())?;
        Ok((rows, next))
    }

    /// The body, refused past [`MAX_PAGE_BYTES`].
    async fn body(&self, response: &mut reqwest::Response) -> Result<Vec<u8>, Failed> {
        if response
            .content_length()
            .is_some_and(|n| n > MAX_PAGE_BYTES as u64)
        {
            return Err(Failed::Permanent(FetchError::TooLarge));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| Failed::Transient(self.failed(&e)))?
        {
            if body.len() + chunk.len() > MAX_PAGE_BYTES {
                return Err(Failed::Permanent(FetchError::TooLarge));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Why a request failed, from its innermost cause (which names neither headers nor values).
    fn failed(&self, err: &reqwest::Error) -> FetchError {
        if let Some(refused) = refused_address(err) {
            FetchError::RefusedAddress(refused)
        } else if err.is_timeout() {
            self.timed_out()
        } else if err.is_connect() {
            FetchError::Connect(root_cause(err))
        } else {
            FetchError::Request(root_cause(err))
        }
    }

    fn timed_out(&self) -> FetchError {
        FetchError::TimedOut(self.timeout.as_millis())
    }
}

/// The location with `cursor` as its query parameter `param` (replacing one already there;
/// other parameters kept).
fn with_cursor(first: &Url, param: &str, cursor: &str) -> Url {
    let kept: Vec<(String, String)> = first
        .query_pairs()
        .filter(|(key, _)| key != param)
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect();
    let mut url = first.clone();
    url.query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .append_pair(param, cursor);
    url
}

/// The cursor at `pointer` in `page`: a string or an integer; absent, `null` or `""` when the
/// list ends there.
fn cursor(page: &Value, pointer: &str) -> Result<Option<String>, BadPage> {
    match page.pointer(pointer) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Some(n.to_string())),
        Some(other) => Err(BadPage::Cursor {
            pointer: pointer.to_owned(),
            found: json_kind(other),
        }),
    }
}

/// The rows of `page` at `pointer` (the page itself without one), taken out of it.
fn take_rows(page: &mut Value, pointer: Option<&str>) -> Result<Vec<Value>, BadPage> {
    let Some(pointer) = pointer else {
        return match page.take() {
            Value::Array(rows) => Ok(rows),
            other => Err(BadPage::NotArray(json_kind(&other))),
        };
    };
    match page.pointer_mut(pointer).map(Value::take) {
        Some(Value::Array(rows)) => Ok(rows),
        None => Err(BadPage::NoRows(pointer.to_owned())),
        Some(other) => Err(BadPage::RowsNotArray {
            pointer: pointer.to_owned(),
            found: json_kind(&other),
        }),
    }
}

/// The target of the first `Link` header entry whose `rel` holds `next`, resolved against
/// `base` (the URL the page came from).
fn next_link(headers: &HeaderMap, base: &Url) -> Result<Option<Url>, BadPage> {
    for value in headers.get_all(LINK) {
        let Ok(value) = value.to_str() else {
            continue;
        };
        let mut rest = value;
        while let Some(open) = rest.find('<') {
            let after = &rest[open + 1..];
            let Some(close) = after.find('>') else {
                break;
            };
            let target = &after[..close];
            let params_end = after[close..].find('<').map_or(after.len(), |i| close + i);
            if is_next(&after[close + 1..params_end]) {
                return base
                    .join(target.trim())
                    .map(Some)
                    .map_err(|reason| BadPage::Link {
                        target: target.to_owned(),
                        reason,
                    });
            }
            rest = &after[params_end..];
        }
    }
    Ok(None)
}

/// Whether a `Link` entry's parameters (`; rel="next"`, up to the next entry) say `next`.
fn is_next(params: &str) -> bool {
    params
        .trim()
        .trim_end_matches(',')
        .split(';')
        .filter_map(|param| {
            let (key, value) = param.split_once('=')?;
            key.trim()
                .eq_ignore_ascii_case("rel")
                .then(|| value.trim().trim_matches('"'))
        })
        .any(|rel| {
            rel.split_ascii_whitespace()
                .any(|r| r.eq_ignore_ascii_case("next"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn link(value: &str) -> Option<String> {
        let mut headers = HeaderMap::new();
        headers.insert(LINK, HeaderValue::from_str(value).unwrap());
        let base = Url::parse("https://api.example.com/v1/items?page=1").unwrap();
        next_link(&headers, &base).unwrap().map(String::from)
    }

    #[test]
    fn the_next_link_is_found_among_others_and_resolved() {
        assert_eq!(
            link(r#"<https://api.example.com/v1/items?page=2>; rel="next""#).as_deref(),
            Some("https://api.example.com/v1/items?page=2")
        );
        assert_eq!(
            link(r#"</v1/items?page=1>; rel="prev", </v1/items?a=1,2&page=3>; rel="next", </v1/items?page=9>; rel="last""#)
                .as_deref(),
            Some("https://api.example.com/v1/items?a=1,2&page=3")
        );
        assert_eq!(
            link(r#"<?page=4>; title="x"; REL="prefetch next""#).as_deref(),
            Some("https://api.example.com/v1/items?page=4")
        );
        assert_eq!(
            link(r#"<https://api.example.com/v1/items?page=9>; rel="last""#),
            None
        );
        assert_eq!(link("garbage"), None);
    }

    #[test]
    fn cursors_are_strings_or_integers_and_absent_ends_the_list() {
        let page = json!({"next": "c2", "n": 7, "none": null, "empty": "", "obj": {}});
        assert_eq!(cursor(&page, "/next"), Ok(Some("c2".into())));
        assert_eq!(cursor(&page, "/n"), Ok(Some("7".into())));
        for end in ["/none", "/empty", "/missing"] {
            assert_eq!(cursor(&page, end), Ok(None), "{end}");
        }
        assert_eq!(
            cursor(&page, "/obj").unwrap_err().to_string(),
            "the cursor at /obj (http.next_cursor) is an object, not a string or an integer"
        );
    }

    #[test]
    fn cursors_replace_their_parameter_and_keep_the_others() {
        let first = Url::parse("https://api.example.com/v1/items?limit=100&cursor=old").unwrap();
        assert_eq!(
            with_cursor(&first, "cursor", "a b&c").as_str(),
            "https://api.example.com/v1/items?limit=100&cursor=a+b%26c"
        );
        let bare = Url::parse("https://api.example.com/v1/items").unwrap();
        assert_eq!(
            with_cursor(&bare, "after", "c2").as_str(),
            "https://api.example.com/v1/items?after=c2"
        );
    }

    #[test]
    fn rows_are_the_page_or_at_a_pointer_and_must_be_an_array() {
        assert_eq!(
            take_rows(&mut json!([{"id": 1}]), None),
            Ok(vec![json!({"id": 1})])
        );
        let mut page = json!({"data": {"items": [1, 2]}, "meta": {}});
        assert_eq!(
            take_rows(&mut page, Some("/data/items")),
            Ok(vec![json!(1), json!(2)])
        );
        assert_eq!(
            take_rows(&mut json!({"data": []}), Some("/rows"))
                .unwrap_err()
                .to_string(),
            "no rows at /rows (http.rows_at)"
        );
        assert_eq!(
            take_rows(&mut json!({"data": 3}), Some("/data"))
                .unwrap_err()
                .to_string(),
            "the rows at /data (http.rows_at) are a number, not an array"
        );
        assert_eq!(
            take_rows(&mut json!({"data": []}), None)
                .unwrap_err()
                .to_string(),
            "the page is an object, not an array of rows (http.rows_at says where they are in it)"
        );
    }
}
