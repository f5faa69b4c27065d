//! The HTTP(S) listener: `/ws` (WebSocket upgrade), `GET /v1/ice-servers` and the demo page.
//! Each TCP connection is its own task; an upgraded WebSocket becomes another.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    HeaderMap, HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD, ALLOW,
    AUTHORIZATION, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, ORIGIN, SEC_WEBSOCKET_ACCEPT,
    SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE, VARY, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use icegate_common::tls_stream::TlsServerStream;
use icegate_signal_proto::protocol::{ErrorCode, ServerMessage, UserId};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::state::Shared;
use super::ws::{self, UrlCredentials};

/// A client must finish the TLS handshake within this time, and send its request headers
/// within it after that, so half-open connections cannot pile up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed `accept` (e.g. out of file descriptors), retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The demo page, built into the binary.
const INDEX_HTML: &str = include_str!("../../assets/index.html");
/// How long a browser may cache a CORS preflight's answer: origins change only on SIGHUP.
const PREFLIGHT_MAX_AGE: &str = "600";

/// Accepts connections until shutdown.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shared: Arc<Shared>,
) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = super::state::shutdown(&mut shutdown) => return,
        };
        // Every exchange here is a small write the client waits for (TLS flights, the 101,
        // `welcome`, each message): with Nagle's algorithm on, a write after another one
        // waited for the client's delayed ACK, 40 ms on Linux, which held every wss session
        // setup back by that much.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%peer, %error, "TCP_NODELAY not set");
        }
        let shared = Arc::clone(&shared);
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_http(stream, peer, shared).await,
                Some(config) => {
                    // Not tokio-rustls: its connection keeps a 4 KiB read buffer for as long as
                    // the session lives, most of an idle session's memory (docs/operations.md,
                    // "Sizing icegate-signal").
                    let handshake = TlsServerStream::accept(config, stream);
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                        Ok(Ok(stream)) => serve_http(stream, peer, shared).await,
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

async fn serve_http<IO>(io: IO, peer: SocketAddr, shared: Arc<Shared>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let response = route(request, peer, &shared);
        async move { Ok::<_, Infallible>(response) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    if let Err(error) = connection.await {
        tracing::debug!(%peer, %error, "HTTP connection ended with an error");
    }
}

fn route(
    request: Request<Incoming>,
    peer: SocketAddr,
    shared: &Arc<Shared>,
) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if !matches!(path, "/" | "/index.html" | "/ws" | "/v1/ice-servers") {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if path == "/v1/ice-servers" && request.method() == Method::OPTIONS {
        return preflight(request.headers(), shared);
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/ws" => upgrade(request, peer, shared),
        "/v1/ice-servers" => {
            let mut response = ice_servers(&request, shared);
            cors(request.headers(), response.headers_mut(), shared);
            response
        }
        _ => {
            let mut response = Response::new(Full::new(Bytes::from_static(INDEX_HTML.as_bytes())));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            response
        }
    }
}

/// The `Origin` header's value, when there is one.
fn origin(headers: &HeaderMap) -> Option<&HeaderValue> {
    headers.get(ORIGIN)
}

/// Adds the CORS headers to a `/v1/ice-servers` answer when the request's origin is allowed.
fn cors(request: &HeaderMap, response: &mut HeaderMap, shared: &Shared) {
    // The answer depends on the Origin whatever it is, which caches must know.
    response.insert(VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = origin(request) {
        if shared.origins().allows(Some(origin.as_bytes())) {
            response.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        }
    }
}

/// `OPTIONS /v1/ice-servers`: a CORS preflight, for the `Authorization` header a page's
/// `fetch` sets. Only an allowed origin's preflight gets the CORS headers; without them the
/// browser does not send the request.
fn preflight(headers: &HeaderMap, shared: &Shared) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    let out = response.headers_mut();
    out.insert(ALLOW, HeaderValue::from_static("GET, HEAD, OPTIONS"));
    if headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD) {
        cors(headers, out, shared);
        if out.contains_key(ACCESS_CONTROL_ALLOW_ORIGIN) {
            out.insert(
                ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, HEAD"),
            );
            out.insert(
                ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("Authorization"),
            );
            out.insert(
                ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static(PREFLIGHT_MAX_AGE),
            );
        }
    }
    response
}

/// `GET /v1/ice-servers`: `Authorization: Bearer TOKEN` or `?token=`; none in anonymous mode.
fn ice_servers(request: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let token = bearer(request.headers()).or_else(|| query_param(request.uri().query(), "token"));
    let token_usable = shared.keys().auth.is_configured() || !shared.anonymous;
    let turn_user = match token {
        Some(token) if token_usable => match shared.authenticate(Some(&token), None) {
            Ok(identity) => identity.user.to_string(),
            Err(error) => {
                return json_error(StatusCode::UNAUTHORIZED, error.code(), &error.to_string())
            }
        },
        // Each anonymous caller gets a TURN username of its own, so relay quotas and logs
        // can still tell them apart.
        _ if shared.anonymous => format!("anon-{:016x}", rand::random::<u64>()),
        _ => {
            return json_error(
                StatusCode::UNAUTHORIZED,
                ErrorCode::TokenRequired,
                "a token is required",
            )
        }
    };
    let servers = shared.ice_servers(&turn_user, "http");
    let body = serde_json::to_string(&servers).expect("ICE servers always serialize");
    let mut response = Response::new(Full::new(Bytes::from(body)));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // Credentials are per request and short-lived: no cache may keep or share them.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /ws`: checks the handshake, the origin and the per-address limit, answers 101 and hands the
/// upgraded connection to a new task.
fn upgrade(
    request: Request<Incoming>,
    peer: SocketAddr,
    shared: &Arc<Shared>,
) -> Response<Full<Bytes>> {
    let headers = request.headers();
    let wants_websocket = header_has_token(headers, CONNECTION, "upgrade")
        && header_has_token(headers, UPGRADE, "websocket");
    let Some(key) = headers.get(SEC_WEBSOCKET_KEY).filter(|_| wants_websocket) else {
        return text(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade\n");
    };
    if headers
        .get(SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        let mut response = text(StatusCode::UPGRADE_REQUIRED, "WebSocket version 13 only\n");
        response
            .headers_mut()
            .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return response;
    }
    // Before anything else is looked at: a page of another site learns nothing but the refusal.
    if !shared
        .origins()
        .allows(origin(headers).map(HeaderValue::as_bytes))
    {
        shared
            .metrics
            .connections_refused
            .with_label_values(&["origin"])
            .inc();
        return json_error(
            StatusCode::FORBIDDEN,
            ErrorCode::OriginNotAllowed,
            "this page's origin may not use this server",
        );
    }
    let accept = derive_accept_key(key.as_bytes());
    let query = request.uri().query();
    // A name that is there but unusable is refused rather than ignored, so the client learns
    // why instead of waiting for a welcome that does not come.
    let name = match query_raw(query, "name").map(|raw| percent_decode(raw).map(UserId::new)) {
        None => None,
        Some(Some(Ok(name))) => Some(name),
        Some(Some(Err(error))) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadMessage,
                &error.to_string(),
            )
        }
        Some(None) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadMessage,
                "name is not percent-encoded UTF-8",
            )
        }
    };
    let credentials = UrlCredentials {
        token: bearer(headers).or_else(|| query_param(query, "token")),
        name,
    };
    // Counted before the upgrade, so a flood from one address costs no WebSocket state.
    let Some(admission) = shared.admit(peer.ip()) else {
        shared
            .metrics
            .connections_refused
            .with_label_values(&["too_many_connections"])
            .inc();
        return json_error(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooManyConnections,
            "too many connections from this address",
        );
    };

    let shared = Arc::clone(shared);
    // Taken out of the request here, so that the task (which lives as long as the session)
    // holds the small upgrade handle rather than room for the whole request.
    let upgrade = hyper::upgrade::on(request);
    // What the task needs after the upgrade, boxed: the values a future captures stay in it
    // for its whole life, next to the room of the session it runs.
    let start = Box::new((shared, credentials, admission, peer));
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                return tracing::debug!(peer = %start.3, %error, "WebSocket upgrade failed")
            }
        };
        let task = Box::pin(async move {
            let (shared, credentials, admission, _) = *start;
            let config = ws::websocket_config(shared.limits.max_message_bytes());
            let ws = WebSocketStream::from_raw_socket(
                ws::SpillRead::new(TokioIo::new(upgraded)),
                Role::Server,
                Some(config),
            )
            .await;
            ws::task(ws, shared, credentials, admission)
        })
        .await;
        ws::run(task).await;
    });

    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(
        SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    response
}

/// Whether a comma-separated header contains `token`, ignoring case.
fn header_has_token(headers: &HeaderMap, name: hyper::header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

/// The token of an `Authorization: Bearer TOKEN` header.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// The percent-decoded value of `name` in a query string.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query_raw(query, name).and_then(percent_decode)
}

/// The value of `name` in a query string, as written.
fn query_raw<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Decodes `%XX` escapes and `+` (a space in form encoding); `None` on a malformed escape
/// or a result that is not UTF-8.
fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// An HTTP error whose body is the protocol's `error` message.
fn json_error(status: StatusCode, code: ErrorCode, message: &str) -> Response<Full<Bytes>> {
    let body = ServerMessage::error(None, code, message).encode();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_decoded() {
        let query = Some("a=1&name=bob%40example.org&token=x.y.z&plus=a+b");
        assert_eq!(
            query_param(query, "name").as_deref(),
            Some("bob@example.org")
        );
        assert_eq!(query_param(query, "token").as_deref(), Some("x.y.z"));
        assert_eq!(query_param(query, "plus").as_deref(), Some("a b"));
        assert_eq!(query_param(query, "missing"), None);
        assert_eq!(query_param(Some("name=%4"), "name"), None);
        assert_eq!(query_param(Some("name=%ff"), "name"), None);
        assert_eq!(query_param(None, "name"), None);
        assert_eq!(query_raw(Some("name=%ff&x=1"), "name"), Some("%ff"));
        assert_eq!(query_raw(Some("x=1"), "name"), None);
    }

    #[test]
    fn bearer_tokens_and_header_tokens() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(AUTHORIZATION, HeaderValue::from_static("bearer abc.def"));
        assert_eq!(bearer(&headers).as_deref(), Some("abc.def"));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&headers), None);
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert!(header_has_token(&headers, CONNECTION, "upgrade"));
        assert!(!header_has_token(&headers, UPGRADE, "websocket"));
    }
}
