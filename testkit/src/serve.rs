//! The accept loop every test server of the kit runs: HTTP/1 on a free port, one task per
//! connection, each request answered by a handler.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What a handler answers; an error drops the connection without a response.
pub(crate) type Answer = Result<Response<Full<Bytes>>, std::io::Error>;

/// Listens on a free port of `ip` and answers every request with `handle`; the server runs
/// until the task is aborted.
pub(crate) async fn serve<F, Fut>(
    ip: IpAddr,
    handle: F,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Answer> + Send + 'static,
{
    let listener = TcpListener::bind((ip, 0)).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handle = handle.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(handle);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((addr, task))
}
