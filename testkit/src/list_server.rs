//! An HTTP list endpoint on 127.0.0.1 for the producer's HTTP sources: each page is set by its
//! path and query (`/customers?cursor=c2`), with the status, headers and body it answers, so a
//! test scripts cursors, `Link` headers, redirects, loops and errors page by page. A path
//! without a page answers 404. Every request is recorded with its headers.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::serve::{serve, Answer};

/// What one path answers.
#[derive(Debug, Clone)]
pub struct Page {
    /// The status code.
    pub status: u16,
    /// Response headers, name and value.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl Page {
    /// 200 with a JSON `body`.
    pub fn json(body: impl Into<String>) -> Self {
        Self {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into(),
        }
    }

    /// `status` with a text `body`.
    pub fn status(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// A 302 to `location`.
    pub fn redirect(location: impl Into<String>) -> Self {
        Self::status(302, "").header("location", location)
    }

    /// The same page with one more header (`Link`, `Location`, …).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// One request the list server saw.
#[derive(Debug, Clone)]
pub struct ListRequest {
    /// Its path with query.
    pub path: String,
    /// Every header, lower-case name and value (values that are not text are left out).
    pub headers: Vec<(String, String)>,
}

impl ListRequest {
    /// The value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    pages: HashMap<String, Page>,
    requests: Vec<ListRequest>,
}

/// A running list server; stops when dropped.
pub struct ListServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for ListServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ListServer {
    /// Starts on a free port of 127.0.0.1, with no pages.
    pub async fn start() -> std::io::Result<Self> {
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let (addr, task) = serve(Ipv4Addr::LOCALHOST.into(), move |req| {
            handle(req, shared.clone())
        })
        .await?;
        Ok(Self { addr, state, task })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Makes `path` (with its query, exactly as requested) answer `page`.
    pub fn set(&self, path: &str, page: Page) {
        self.lock().pages.insert(path.to_owned(), page);
    }

    /// Every request seen so far.
    pub fn requests(&self) -> Vec<ListRequest> {
        self.lock().requests.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for ListServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(req: Request<Incoming>, state: Arc<Mutex<State>>) -> Answer {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let headers = req
        .headers()
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let page = {
        let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
        s.requests.push(ListRequest {
            path: path.clone(),
            headers,
        });
        s.pages.get(&path).cloned()
    };
    let page = page.unwrap_or_else(|| Page::status(404, format!("no page at {path}")));
    let mut response = Response::builder().status(page.status);
    for (name, value) in &page.headers {
        response = response.header(name, value);
    }
    response
        .body(Full::new(Bytes::from(page.body)))
        .map_err(|e| std::io::Error::other(e.to_string()))
}
