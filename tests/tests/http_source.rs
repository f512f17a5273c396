//! HTTP list endpoints (issue #25 item 2): a source whose location is an `http(s)://` URL, read
//! page by page at tick time (cursor or `Link` pagination, rows at a JSON pointer, headers from
//! the environment) through the guarded client, against the testkit's list server. Reads go
//! through `fanout_producer::preview` (what `fanout targets show` and a tick read), and one run
//! goes end to end on the embedded backend.

#![allow(clippy::unwrap_used)] // test code (Cargo.toml, [workspace.lints])

use std::collections::BTreeMap;

use fanout::run;
use fanout_producer::{preview, ListReaders, Preview};
use fanout_shared::embedded::Duplicates;
use fanout_shared::{PipelineConfig, TickValues};
use fanout_testkit::list_server::{ListServer, Page};
use fanout_testkit::target_server::TargetServer;
use fanout_tests::{embedded_pipeline, fast_options};
use serde_json::{json, Value};

/// A config whose one source `customers` reads `location` with the `http` section `http`, each
/// row called at `{target}/ok/{id}`; `extra` is merged into the config's top level.
fn config_with(location: &str, http: Value, target: &str, extra: Value) -> PipelineConfig {
    let mut text = json!({
        "allow_private_networks": true,
        "templates": { "sync": { "url": format!("{target}/ok/{{id}}"), "timeout_ms": 2000 } },
        "sources": [{ "name": "customers", "template": "sync", "id_field": "id",
                      "location": location, "http": http }]
    });
    if let (Some(text), Value::Object(extra)) = (text.as_object_mut(), extra) {
        text.extend(extra);
    }
    PipelineConfig::parse(&text.to_string(), false, "fanout.json").unwrap()
}

/// [`config_with`] calling `https://api.example.com`, nothing merged.
fn config(location: &str, http: Value) -> PipelineConfig {
    config_with(location, http, "https://api.example.com", json!({}))
}

/// The rows `{"id": "<prefix>1"}` … `{"id": "<prefix>n"}`.
fn rows(prefix: &str, n: usize) -> Vec<Value> {
    (1..=n)
        .map(|i| json!({ "id": format!("{prefix}{i}") }))
        .collect()
}

/// What a tick would read from `config`'s sources.
async fn read_list(config: &PipelineConfig) -> Result<Vec<Preview>, String> {
    preview(
        config,
        &ListReaders::new(None),
        &TickValues::default(),
        None,
        None,
    )
    .await
    .map_err(|e| e.to_string())
}

/// The row IDs of the calls a read rendered, in order.
fn ids(previews: &[Preview]) -> Vec<String> {
    previews
        .iter()
        .flat_map(|p| &p.calls)
        .map(|call| call.id.trim_start_matches("customers/").to_owned())
        .collect()
}

fn paths(server: &ListServer) -> Vec<String> {
    server.requests().into_iter().map(|r| r.path).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pages_by_cursor_with_rows_at_a_json_pointer() {
    let list = ListServer::start().await.unwrap();
    let page = |prefix: &str, next: Value| {
        Page::json(json!({ "data": rows(prefix, 2), "meta": { "next": next } }).to_string())
    };
    list.set("/customers?limit=2", page("a", json!("c2")));
    list.set("/customers?limit=2&after=c2", page("b", json!(3)));
    list.set("/customers?limit=2&after=3", page("c", Value::Null));
    let url = format!("{}/customers?limit=2", list.base_url());
    let http = json!({ "rows_at": "/data", "next_cursor": "/meta/next", "cursor_param": "after" });
    let cfg = config(&url, http);

    let read = read_list(&cfg).await.unwrap();
    assert_eq!(ids(&read), ["a1", "a2", "b1", "b2", "c1", "c2"]);
    assert_eq!(read[0].read.rows, 6);
    assert_eq!(read[0].read.location, url);
    assert_eq!(
        paths(&list),
        [
            "/customers?limit=2",
            "/customers?limit=2&after=c2",
            "/customers?limit=2&after=3"
        ]
    );
    assert!(list
        .requests()
        .iter()
        .all(|r| r.header("accept") == Some("application/json")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pages_by_link_header_absolute_then_relative() {
    let list = ListServer::start().await.unwrap();
    let base = list.base_url();
    let array = |prefix: &str| Value::Array(rows(prefix, 3)).to_string();
    list.set(
        "/v1/customers",
        Page::json(array("a")).header(
            "link",
            format!(r#"<{base}/v1/customers?page=2>; rel="next", <{base}/v1/customers?page=3>; rel="last""#),
        ),
    );
    list.set(
        "/v1/customers?page=2",
        Page::json(array("b"))
            .header("link", r#"</v1/customers>; rel="prev""#)
            .header("link", r#"<customers?page=3>; rel="next""#),
    );
    list.set(
        "/v1/customers?page=3",
        Page::json(array("c")).header("link", r#"</v1/customers?page=2>; rel="prev""#),
    );
    let cfg = config(&format!("{base}/v1/customers"), Value::Null);

    let read = read_list(&cfg).await.unwrap();
    assert_eq!(
        ids(&read),
        ["a1", "a2", "a3", "b1", "b2", "b3", "c1", "c2", "c3"]
    );
    assert_eq!(
        paths(&list),
        [
            "/v1/customers",
            "/v1/customers?page=2",
            "/v1/customers?page=3"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_loop_fails_the_source_naming_the_page() {
    let list = ListServer::start().await.unwrap();
    let base = list.base_url();
    let page = |prefix: &str, next: &str| {
        Page::json(json!({ "rows": rows(prefix, 1), "next": next }).to_string())
    };
    list.set("/c", page("a", "c2"));
    list.set("/c?cursor=c2", page("b", "c3"));
    list.set("/c?cursor=c3", page("c", "c2"));
    let http = json!({ "rows_at": "/rows", "next_cursor": "/next" });
    let cfg = config(&format!("{base}/c"), http);
    let error = read_list(&cfg).await.unwrap_err();
    assert!(
        error.contains(&format!(
            "cannot be read: page 3 ({base}/c?cursor=c3): its next cursor \"c2\" leads back to \
             page 2, already read (a pagination loop)"
        )),
        "{error}"
    );
    assert_eq!(paths(&list).len(), 3, "the loop is not followed");

    // A `Link` that points back at the first page is the same loop.
    list.set(
        "/l",
        Page::json("[]").header("link", r#"</l?p=2>; rel="next""#),
    );
    list.set(
        "/l?p=2",
        Page::json("[]").header("link", r#"</l>; rel="next""#),
    );
    let cfg = config(&format!("{base}/l"), Value::Null);
    let error = read_list(&cfg).await.unwrap_err();
    assert!(
        error.contains(&format!(
            "page 2 ({base}/l?p=2): its next link {base}/l leads back to page 1"
        )),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_longer_than_max_pages_fails_naming_the_limit() {
    let list = ListServer::start().await.unwrap();
    let base = list.base_url();
    for (path, next) in [("/c", "c2"), ("/c?cursor=c2", "c3"), ("/c?cursor=c3", "")] {
        list.set(
            path,
            Page::json(json!({ "rows": rows(path, 1), "next": next }).to_string()),
        );
    }
    let http = |max: u32| json!({ "rows_at": "/rows", "next_cursor": "/next", "max_pages": max });
    let url = format!("{base}/c");
    let error = read_list(&config(&url, http(2))).await.unwrap_err();
    assert!(
        error.contains(&format!(
            "page 2 ({base}/c?cursor=c2): the list goes on past 2 pages, the most read \
             (http.max_pages)"
        )),
        "{error}"
    );
    assert_eq!(paths(&list).len(), 2, "no page past the limit is requested");
    let read = read_list(&config(&url, http(3))).await.unwrap();
    assert_eq!(read[0].read.rows, 3, "exactly max_pages pages are fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_and_next_links_outside_the_allow_list_are_refused_naming_the_host() {
    let list = ListServer::start().await.unwrap();
    let base = list.base_url();
    let port = list.addr().port();
    // A redirect on the list's own host is followed.
    list.set("/old", Page::redirect("/new"));
    list.set("/new", Page::json(Value::Array(rows("n", 2)).to_string()));
    let url = format!("{base}/old");
    let read = read_list(&config(&url, Value::Null)).await.unwrap();
    assert_eq!(ids(&read), ["n1", "n2"]);

    // To a host outside it: refused before anything connects there.
    list.set(
        "/away",
        Page::redirect(format!("http://elsewhere.test:{port}/new")),
    );
    let url = format!("{base}/away");
    let error = read_list(&config(&url, Value::Null)).await.unwrap_err();
    assert!(
        error.contains(&format!(
            "page 1 ({url}): redirect refused: host \"elsewhere.test\" is not in the list's \
             allowed hosts (its location's host and the config's allowed hosts; a `hosts` key \
             of the config allows another)"
        )),
        "{error}"
    );
    // A next link too.
    list.set(
        "/linked",
        Page::json("[]").header(
            "link",
            format!(r#"<http://other.test:{port}/new>; rel="next""#),
        ),
    );
    let url = format!("{base}/linked");
    let error = read_list(&config(&url, Value::Null)).await.unwrap_err();
    assert!(
        error.contains(&format!(
            "page 1 ({url}): next page refused: host \"other.test\" is not in the list's allowed \
             hosts"
        )),
        "{error}"
    );

    // The config's allowed hosts (a `hosts` key here) extend the list's.
    list.set(
        "/to-localhost",
        Page::redirect(format!("http://localhost:{port}/new")),
    );
    let url = format!("{base}/to-localhost");
    let hosts = json!({ "hosts": { "localhost": { "per_second": 5 } } });
    let read = read_list(&config_with(
        &url,
        Value::Null,
        "https://api.example.com",
        hosts,
    ))
    .await
    .unwrap();
    assert_eq!(ids(&read), ["n1", "n2"]);
    let reached: Vec<String> = paths(&list);
    assert_eq!(
        reached.iter().filter(|p| *p == "/new").count(),
        2,
        "only allowed hops connected: {reached:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_refuses_a_list_whose_name_resolves_to_loopback() {
    let list = ListServer::start().await.unwrap();
    let hostname = fanout_testkit::target_server::loopback_hostname()
        .await
        .expect("the host name resolves to loopback (/etc/hosts)");
    list.set("/c", Page::json("[]"));
    let url = format!("http://{hostname}:{}/c", list.addr().port());
    let text = json!({
        "templates": { "sync": { "url": "https://api.example.com/ok/{id}" } },
        "sources": [{ "name": "customers", "template": "sync", "id_field": "id",
                      "location": url }]
    });
    let cfg = PipelineConfig::parse(&text.to_string(), false, "fanout.json").unwrap();
    let error = read_list(&cfg).await.unwrap_err();
    assert!(
        error.contains(&format!(
            "page 1 ({url}): refused: {hostname} resolves to a loopback address"
        )),
        "{error}"
    );
    assert!(list.requests().is_empty(), "nothing connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_headers_are_sent_on_every_page_and_never_appear_in_an_error() {
    std::env::set_var("FANOUT_TEST_LIST_TOKEN", "list-s3cret-9");
    let list = ListServer::start().await.unwrap();
    let base = list.base_url();
    list.set(
        "/c",
        Page::json(json!({ "rows": rows("a", 1), "next": "c2" }).to_string()),
    );
    list.set(
        "/c?cursor=c2",
        Page::status(500, "list-s3cret-9 is not welcome"),
    );
    let http = json!({
        "headers": { "Authorization": "Bearer ${env:FANOUT_TEST_LIST_TOKEN}", "X-Plain": "p" },
        "rows_at": "/rows", "next_cursor": "/next"
    });
    let cfg = config(&format!("{base}/c"), http.clone());
    let error = read_list(&cfg).await.unwrap_err();
    assert!(
        error.contains(&format!(
            "page 2 ({base}/c?cursor=c2): HTTP 500 Internal Server Error"
        )),
        "{error}"
    );
    assert!(!error.contains("list-s3cret-9"), "{error}");
    let requests = list.requests();
    assert_eq!(
        requests.len(),
        4,
        "page 1, then page 2 three times (a 500 is tried again)"
    );
    for request in &requests {
        assert_eq!(
            request.header("authorization"),
            Some("Bearer list-s3cret-9")
        );
        assert_eq!(request.header("x-plain"), Some("p"));
    }

    // An unset variable fails the source before any request, naming the variable.
    let http = json!({ "headers": { "X-Key": "${env:FANOUT_TEST_LIST_UNSET}" } });
    let cfg = config(&format!("{base}/c"), http);
    let error = read_list(&cfg).await.unwrap_err();
    assert!(
        error.contains("header X-Key: environment variable FANOUT_TEST_LIST_UNSET is not set"),
        "{error}"
    );
    assert_eq!(list.requests().len(), 4, "no request without its header");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_row_is_named_with_its_page_and_element() {
    let list = ListServer::start().await.unwrap();
    let base = list.base_url();
    list.set(
        "/c",
        Page::json(json!({ "rows": rows("a", 2), "next": "c2" }).to_string()),
    );
    list.set(
        "/c?cursor=c2",
        Page::json(
            json!({ "rows": [{"id": "b1"}, 42, {"id": "b3"}, {"name": "no id"}] }).to_string(),
        ),
    );
    let http = json!({ "rows_at": "/rows", "next_cursor": "/next" });
    let cfg = config(&format!("{base}/c"), http);
    let error = read_list(&cfg).await.unwrap_err();
    for expected in [
        "2 bad row(s), nothing published",
        "source \"customers\" (page 2) element 2: expected an object, got a number",
        "source \"customers\" (page 2) line 4: no field `id`",
    ] {
        assert!(error.contains(expected), "{expected:?} not in:\n{error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_that_cannot_be_read_fail_the_source_naming_the_page_url() {
    let list = ListServer::start().await.unwrap();
    let base = list.base_url();
    list.set("/not-json", Page::json("<html>sorry</html>"));
    list.set("/no-data", Page::json(r#"{"items": []}"#));
    list.set("/object", Page::json(r#"{"data": {"id": 1}}"#));
    let cases = [
        ("/missing", Value::Null, "HTTP 404 Not Found"),
        (
            "/not-json",
            Value::Null,
            "the page is not JSON (expected value",
        ),
        (
            "/no-data",
            json!({ "rows_at": "/data" }),
            "no rows at /data (http.rows_at)",
        ),
        (
            "/no-data",
            Value::Null,
            "the page is an object, not an array of rows (http.rows_at says where they are in it)",
        ),
        (
            "/object",
            json!({ "rows_at": "/data" }),
            "the rows at /data (http.rows_at) are an object, not an array",
        ),
    ];
    for (path, http, expected) in cases {
        let url = format!("{base}{path}");
        let error = read_list(&config(&url, http)).await.unwrap_err();
        let expected =
            format!("source \"customers\" ({url}): cannot be read: page 1 ({url}): {expected}");
        assert!(error.contains(&expected), "{expected:?} not in:\n{error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_of_three_pages_is_called_exactly_once_end_to_end() {
    let list = ListServer::start().await.unwrap();
    let target = TargetServer::start().await.unwrap();
    let base = list.base_url();
    let mut expected = Vec::new();
    for (path, prefix, next) in [
        ("/customers", "a-", json!("p2")),
        ("/customers?cursor=p2", "b-", json!("p3")),
        ("/customers?cursor=p3", "c-", Value::Null),
    ] {
        let page_rows = rows(prefix, 40);
        expected.extend(
            page_rows
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_owned()),
        );
        list.set(
            path,
            Page::json(json!({ "data": page_rows, "next_cursor": next }).to_string()),
        );
    }
    let http = json!({ "rows_at": "/data", "next_cursor": "/next_cursor" });
    let config = config_with(
        &format!("{base}/customers"),
        http,
        &target.base_url(),
        json!({}),
    );
    let pipeline = embedded_pipeline(5, Duplicates::default());
    let (summary, _) = run(&config, &pipeline, "http-list-1", &fast_options(4))
        .await
        .unwrap();
    assert_eq!(
        (summary.jobs, summary.succeeded, summary.lost),
        (120, 120, 0),
        "{summary:?}"
    );
    let mut called: BTreeMap<String, usize> = BTreeMap::new();
    for record in target.records() {
        let id = record.path.trim_start_matches("/ok/").to_owned();
        *called.entry(id).or_default() += 1;
    }
    expected.sort();
    assert_eq!(called.keys().cloned().collect::<Vec<_>>(), expected);
    assert!(
        called.values().all(|&n| n == 1),
        "each row once: {called:?}"
    );
    let mut pages = paths(&list);
    pages.sort();
    pages.dedup();
    assert_eq!(
        pages,
        ["/customers", "/customers?cursor=p2", "/customers?cursor=p3"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_fails_for_a_moment_is_tried_again_and_a_lasting_failure_fails_the_source() {
    let list = ListServer::start().await.unwrap();
    let base = list.base_url();
    let rows_page = || Page::json(Value::Array(rows("c", 3)).to_string());

    // 503 at first; the endpoint recovers while the reader waits its first pause (500 ms).
    list.set("/flaky", Page::status(503, "busy"));
    let url = format!("{base}/flaky");
    let reading = tokio::spawn({
        let config = config(&url, Value::Null);
        async move { read_list(&config).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    list.set("/flaky", rows_page());
    let read = reading.await.unwrap().unwrap();
    assert_eq!(ids(&read), ["c1", "c2", "c3"]);
    let attempts = paths(&list).iter().filter(|p| *p == "/flaky").count();
    assert!(attempts >= 2, "the failed page was asked again: {attempts}");

    // A lasting 503: three attempts, then the source fails saying so.
    list.set("/down", Page::status(503, "down"));
    let url = format!("{base}/down");
    let error = read_list(&config(&url, Value::Null)).await.unwrap_err();
    assert!(
        error.contains("page 1")
            && error.contains("HTTP 503")
            && error.contains("after 3 attempts"),
        "{error}"
    );
    assert_eq!(paths(&list).iter().filter(|p| *p == "/down").count(), 3);

    // A 404 is not retried.
    let url = format!("{base}/gone");
    read_list(&config(&url, Value::Null)).await.unwrap_err();
    assert_eq!(paths(&list).iter().filter(|p| *p == "/gone").count(), 1);
}
