//! The Asterisk gateway's connections: the SIP WebSocket (subprotocol `sip`, reconnected
//! with backoff), the ARI events WebSocket (opened when the controller asks) and ARI REST
//! requests (hyper, one connection per request, basic auth). Each reports to the switchboard
//! task through one bounded channel. Credentials are never logged.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use icegate_signal_asterisk::ari::backoff::reconnect_delay;
use icegate_signal_asterisk::ari::controller::RequestId;
use icegate_signal_asterisk::ari::rest::Method;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use super::config::{Asterisk, ServerUrl};

/// Events queued for the switchboard task.
pub const IO_CAPACITY: usize = 1024;
/// SIP frames queued for the WebSocket writer.
const SIP_OUTBOX: usize = 256;
/// Connecting (TCP, TLS, WebSocket handshake) may take this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A REST request may take this long (the controller has its own, longer, deadline).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(8);
/// Largest ARI response body read.
const MAX_BODY: usize = 1 << 20;

/// What the connections report.
#[derive(Debug)]
pub enum Io {
    /// The SIP WebSocket is open; frames for it go into this outbox.
    SipConnected(mpsc::Sender<String>),
    /// A SIP frame.
    SipFrame(String),
    /// The SIP WebSocket closed or could not be opened.
    SipClosed,
    /// The events WebSocket of this generation is open.
    AriConnected(u64),
    /// An event frame.
    AriEvent(u64, String),
    /// The events WebSocket closed or could not be opened.
    AriClosed(u64),
    /// A REST response; status 0 when there was none.
    AriResponse {
        /// The request.
        id: u64,
        /// The HTTP status.
        status: u16,
        /// The body.
        body: String,
    },
}

/// Why the connections cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The CA file.
    #[error("asterisk-ca {path}: {message}")]
    Ca {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// What every connection needs: addresses, credentials, TLS, and the way back.
#[derive(Clone)]
pub struct Clients {
    sip: ServerUrl,
    ari: ServerUrl,
    /// `Basic ...` for REST.
    ari_auth: Arc<str>,
    /// `user:password`, for the events WebSocket's `api_key`, percent-encoded.
    api_key: Arc<str>,
    tls: Option<tokio_rustls::TlsConnector>,
    io: mpsc::Sender<Io>,
}

impl Clients {
    /// Prepares the clients; loads the CA file when TLS is used.
    pub fn new(settings: &Asterisk, io: mpsc::Sender<Io>) -> Result<Clients, IoError> {
        let password = String::from_utf8_lossy(settings.ari_password.expose()).into_owned();
        let credentials = format!("{}:{password}", settings.ari_user);
        let tls = if settings.sip_ws.tls || settings.ari.tls {
            Some(tls_connector(settings.ca.as_deref())?)
        } else {
            None
        };
        Ok(Clients {
            sip: settings.sip_ws.clone(),
            ari: settings.ari.clone(),
            ari_auth: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(&credentials)
            )
            .into(),
            api_key: percent_encode(&credentials).into(),
            tls,
            io,
        })
    }

    async fn stream(&self, url: &ServerUrl) -> Result<Box<dyn Stream>, String> {
        let tcp = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| format!("connect to {}: {e}", url.authority()))?;
        let _ = tcp.set_nodelay(true);
        if !url.tls {
            return Ok(Box::new(tcp));
        }
        let connector = self.tls.as_ref().ok_or("no TLS configuration")?;
        let name = ServerName::try_from(url.host.clone()).map_err(|e| e.to_string())?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {}: {e}", url.authority()))?;
        Ok(Box::new(tls))
    }

    async fn websocket(
        &self,
        url: &ServerUrl,
        path: &str,
        subprotocol: Option<&str>,
    ) -> Result<tokio_tungstenite::WebSocketStream<Box<dyn Stream>>, String> {
        let attempt = async {
            let stream = self.stream(url).await?;
            let scheme = if url.tls { "wss" } else { "ws" };
            let mut request = format!("{scheme}://{}{path}", url.authority())
                .into_client_request()
                .map_err(|e| e.to_string())?;
            if let Some(protocol) = subprotocol {
                request.headers_mut().insert(
                    "Sec-WebSocket-Protocol",
                    HeaderValue::from_str(protocol).map_err(|e| e.to_string())?,
                );
            }
            let (ws, _) = tokio_tungstenite::client_async(request, stream)
                .await
                // The error names the status, never the URL with its api_key.
                .map_err(|e| format!("WebSocket handshake with {}: {e}", url.authority()))?;
            Ok(ws)
        };
        tokio::time::timeout(CONNECT_TIMEOUT, attempt)
            .await
            .map_err(|_| format!("{}: timed out", url.authority()))?
    }

    /// Opens the events WebSocket at `path` in its own task, reporting as `generation`.
    pub fn connect_events(&self, path: String, generation: u64) {
        let clients = self.clone();
        tokio::spawn(async move {
            let full = format!(
                "{}{path}&api_key={}",
                clients.ari.path.trim_end_matches('/'),
                clients.api_key
            );
            let mut ws = match clients.websocket(&clients.ari, &full, None).await {
                Ok(ws) => ws,
                Err(error) => {
                    tracing::warn!("ARI events: {error}");
                    let _ = clients.io.send(Io::AriClosed(generation)).await;
                    return;
                }
            };
            if clients.io.send(Io::AriConnected(generation)).await.is_err() {
                return;
            }
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(text))) => {
                        let event = Io::AriEvent(generation, text.to_string());
                        if clients.io.send(event).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(Message::Ping(data))) => {
                        let _ = ws.send(Message::Pong(data)).await;
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                }
                if clients.io.is_closed() {
                    return;
                }
            }
            let _ = clients.io.send(Io::AriClosed(generation)).await;
        });
    }

    /// Performs one REST request in its own task.
    pub fn request(&self, id: RequestId, method: Method, path: String, body: Option<String>) {
        let clients = self.clone();
        tokio::spawn(async move {
            let (status, body) = match tokio::time::timeout(
                REQUEST_TIMEOUT,
                clients.rest(method, &path, body),
            )
            .await
            {
                Ok(Ok(reply)) => reply,
                Ok(Err(error)) => {
                    tracing::warn!("ARI {} {path}: {error}", method.as_str());
                    (0, String::new())
                }
                Err(_) => (0, String::new()),
            };
            let _ = clients
                .io
                .send(Io::AriResponse {
                    id: id.0,
                    status,
                    body,
                })
                .await;
        });
    }

    async fn rest(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(u16, String), String> {
        let stream = self.stream(&self.ari).await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let uri = format!("{}/ari{path}", self.ari.path.trim_end_matches('/'));
        let mut request = hyper::Request::builder()
            .method(method.as_str())
            .uri(uri)
            .header(HOST, self.ari.authority())
            .header(AUTHORIZATION, &*self.ari_auth);
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = http_body_util::Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// Keeps the SIP WebSocket open: connects, reports, pumps frames both ways, and reconnects
/// after a loss with [`reconnect_delay`] (reset by a connection that lasted).
pub async fn sip_loop(clients: Clients, io: mpsc::Sender<Io>, mut shutdown: watch::Receiver<bool>) {
    let mut attempt: u32 = 0;
    loop {
        let opened = tokio::select! {
            result = clients.websocket(&clients.sip, &clients.sip.path, Some("sip")) => result,
            () = super::state::shutdown(&mut shutdown) => return,
        };
        match opened {
            Ok(ws) => {
                let started = tokio::time::Instant::now();
                let (outbox, frames) = mpsc::channel(SIP_OUTBOX);
                if io.send(Io::SipConnected(outbox)).await.is_err() {
                    return;
                }
                let stop = pump_sip(ws, frames, &io).await;
                if io.send(Io::SipClosed).await.is_err() || stop {
                    return;
                }
                if started.elapsed() > Duration::from_secs(10) {
                    attempt = 0;
                }
            }
            Err(error) => {
                tracing::warn!("SIP WebSocket: {error}");
                if io.send(Io::SipClosed).await.is_err() {
                    return;
                }
            }
        }
        let delay = reconnect_delay(attempt);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = super::state::shutdown(&mut shutdown) => return,
        }
    }
}

/// Moves frames until the WebSocket ends; true when shutting down. At shutdown the gateway
/// still says BYE and unregisters on this connection: it ends when the gateway drops the
/// outbox.
async fn pump_sip(
    ws: tokio_tungstenite::WebSocketStream<Box<dyn Stream>>,
    mut outbox: mpsc::Receiver<String>,
    io: &mpsc::Sender<Io>,
) -> bool {
    let (mut sink, mut stream) = ws.split();
    loop {
        tokio::select! {
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    if io.send(Io::SipFrame(text.to_string())).await.is_err() {
                        return true;
                    }
                }
                // Some servers send SIP in binary frames; it is text all the same.
                Some(Ok(Message::Binary(data))) => {
                    let text = String::from_utf8_lossy(&data).into_owned();
                    if io.send(Io::SipFrame(text)).await.is_err() {
                        return true;
                    }
                }
                Some(Ok(Message::Ping(data))) => {
                    let _ = sink.send(Message::Pong(data)).await;
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return false,
                Some(Ok(_)) => {}
            },
            frame = outbox.recv() => match frame {
                Some(text) => {
                    if sink.send(Message::text(text)).await.is_err() {
                        return false;
                    }
                }
                None => {
                    let _ = sink.send(Message::Close(None)).await;
                    return true;
                }
            },
        }
    }
}

fn tls_connector(ca: Option<&Path>) -> Result<tokio_rustls::TlsConnector, IoError> {
    let ca = ca.ok_or_else(|| IoError::Ca {
        path: "(not set)".into(),
        message: "wss:// and https:// need asterisk-ca, the CA that signed Asterisk's certificate"
            .into(),
    })?;
    let error = |message: String| IoError::Ca {
        path: ca.display().to_string(),
        message,
    };
    let file = File::open(ca).map_err(|e| error(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut BufReader::new(file)) {
        let cert = cert.map_err(|e| error(e.to_string()))?;
        roots.add(cert).map_err(|e| error(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(error("no certificate in the file".into()));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| error(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Percent-encodes everything but unreserved characters, for a query value.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
