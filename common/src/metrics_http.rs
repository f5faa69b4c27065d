//! Routes: `GET /metrics` (Prometheus text format), `GET /healthz` (the process is up),
//! `GET /readyz` (the process wants traffic). `HEAD` is accepted wherever `GET` is.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A client that has not sent its request headers within this time is dropped, so idle or
/// slow connections cannot pile up.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`serve`] waits for requests in flight after shutdown before dropping them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// After a failed `accept` (e.g. out of file descriptors), retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// The warning for a metrics listener on `addr`, if it is not on loopback; `docs_section` is
/// where docs/operations.md says how to protect it.
///
/// The listener has no authentication: whoever reaches it learns the load, the traffic and
/// the health of the process, and can scrape it as often as it likes.
pub fn exposure_warning(addr: std::net::SocketAddr, docs_section: &str) -> Option<String> {
    (!addr.ip().is_loopback()).then(|| {
        format!(
            "metrics-listen {addr} is not a loopback address and has no access control: \
             /metrics, /healthz and /readyz answer anyone who reaches it; bind it to \
             127.0.0.1 or a management network, firewall it, or put an authenticating \
             reverse proxy in front (docs/operations.md, \"{docs_section}\")"
        )
    })
}

/// Whether the process is ready for traffic, shared between the code that knows and `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
}

impl Health {
    /// A new flag, not ready until [`set_ready(true)`](Self::set_ready).
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the process ready (or, e.g. while draining, not ready).
    pub fn set_ready(&self, ready: bool) {
        // Nothing else is published through this flag, so no ordering beyond atomicity is needed.
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether `/readyz` currently answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown` completes.
///
/// Each connection gets its own task. On shutdown the listener closes at once, idle
/// connections are closed, and requests in flight get a few seconds to finish.
pub async fn serve(
    listener: TcpListener,
    registry: prometheus::Registry,
    health: Health,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);

    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "metrics listener: accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            // Reap finished connection tasks so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };

        let registry = registry.clone();
        let health = health.clone();
        let mut stop_rx = stop_rx.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = respond(&request, &registry, &health);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                // The watch guard is not Send, so it must not outlive this block.
                () = async { let _ = stop_rx.wait_for(|stop| *stop).await; } => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                // Scrapers hanging up mid-request are routine, hence debug.
                tracing::debug!(%error, "metrics connection ended with an error");
            }
        });
    }

    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.shutdown().await;
    }
}

/// Routes one request.
fn respond(
    request: &Request<Incoming>,
    registry: &prometheus::Registry,
    health: &Health,
) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/metrics" => metrics(registry),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        _ if health.is_ready() => text(StatusCode::OK, "ready\n"),
        _ => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
    }
}

/// Encodes every metric in `registry` in the Prometheus text format.
fn metrics(registry: &prometheus::Registry) -> Response<Full<Bytes>> {
    let encoder = prometheus::TextEncoder::new();
    match encoder.encode_to_string(&registry.gather()) {
        Ok(body) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(prometheus::TEXT_FORMAT),
            );
            response
        }
        Err(error) => {
            tracing::error!(%error, "cannot encode metrics");
            text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n")
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_PLAIN));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    struct Server {
        address: SocketAddr,
        health: Health,
        stop: oneshot::Sender<()>,
        task: JoinHandle<()>,
    }

    async fn start() -> Server {
        let registry = prometheus::Registry::new();
        let counter =
            prometheus::IntCounter::new("icegate_test_total", "A counter for the test").unwrap();
        counter.inc_by(7);
        registry.register(Box::new(counter)).unwrap();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let health = Health::new();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, registry, health.clone(), async {
            let _ = stopped.await;
        }));
        Server {
            address,
            health,
            stop,
            task,
        }
    }

    struct Reply {
        status: u16,
        headers: String,
        body: String,
    }

    /// A minimal HTTP/1.1 client: one request, `Connection: close`, read to EOF.
    async fn request(address: SocketAddr, method: &str, path: &str) -> Reply {
        let mut stream = TcpStream::connect(address).await.unwrap();
        let head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
            .await
            .expect("response within 10 s")
            .unwrap();
        let raw = String::from_utf8(raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").expect("complete head");
        let (status_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        Reply {
            status,
            headers: headers.to_ascii_lowercase(),
            body: body.to_owned(),
        }
    }

    #[tokio::test]
    async fn routes() {
        let server = start().await;

        let reply = request(server.address, "GET", "/metrics").await;
        assert_eq!(reply.status, 200);
        assert!(
            reply
                .headers
                .contains("content-type: text/plain; version=0.0.4"),
            "{}",
            reply.headers
        );
        assert!(
            reply.body.contains("icegate_test_total 7"),
            "{}",
            reply.body
        );

        let reply = request(server.address, "GET", "/healthz").await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "ok\n"));

        let reply = request(server.address, "GET", "/readyz").await;
        assert_eq!((reply.status, reply.body.as_str()), (503, "not ready\n"));
        server.health.set_ready(true);
        let reply = request(server.address, "GET", "/readyz").await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "ready\n"));
        server.health.set_ready(false);
        assert_eq!(request(server.address, "GET", "/readyz").await.status, 503);

        assert_eq!(request(server.address, "GET", "/").await.status, 404);
        assert_eq!(
            request(server.address, "GET", "/metricsx").await.status,
            404
        );
        assert_eq!(
            request(server.address, "POST", "/nothing").await.status,
            404
        );

        let reply = request(server.address, "POST", "/healthz").await;
        assert_eq!(reply.status, 405);
        assert!(
            reply.headers.contains("allow: get, head"),
            "{}",
            reply.headers
        );

        let reply = request(server.address, "HEAD", "/healthz").await;
        assert_eq!((reply.status, reply.body.as_str()), (200, ""));

        server.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server.task)
            .await
            .expect("serve returns after shutdown")
            .unwrap();
    }

    #[tokio::test]
    async fn shutdown_closes_idle_keep_alive_connections() {
        let server = start().await;
        // An idle keep-alive connection, as a scraper holds between scrapes.
        let mut idle = TcpStream::connect(server.address).await.unwrap();
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        let mut buffer = [0u8; 512];
        let read = idle.read(&mut buffer).await.unwrap();
        assert!(buffer[..read].starts_with(b"HTTP/1.1 200"));

        server.stop.send(()).unwrap();
        // Well under SHUTDOWN_GRACE: the idle connection must not hold shutdown up.
        tokio::time::timeout(Duration::from_secs(2), server.task)
            .await
            .expect("serve returns promptly")
            .unwrap();
        assert_eq!(
            idle.read(&mut buffer).await.unwrap(),
            0,
            "connection closed"
        );
        assert!(TcpStream::connect(server.address).await.is_err());
    }
}
