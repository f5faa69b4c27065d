//! The stand-in process: one HTTP server on 127.0.0.1 (like Asterisk's http.conf) with
//! `/ws`, `/ari/events` and `/ari/...`, on its own tokio runtime thread, and the handle a
//! test uses to inspect and script it.

use super::state::{Config, Core, Dir, Faults, LogEntry, Registration, Stream, WsCmd};
use super::ws::{plain, Body};
use super::{ari_events, calls::Hangup, sip::SipMessage, sip_ws};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// A running stand-in. Stops (closing every connection) when dropped.
pub struct AsteriskStandIn {
    addr: SocketAddr,
    core: Arc<Mutex<Core>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

async fn handle(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    core: Arc<Mutex<Core>>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/ws" {
        return Ok(sip_ws::accept(&mut req, peer, core));
    }
    if path == "/ari/events" {
        return Ok(ari_events::accept(&mut req, core));
    }
    let Some(ari_path) = path.strip_prefix("/ari") else {
        return Ok(plain(
            StatusCode::NOT_FOUND,
            "text/plain",
            "Not Found\n".into(),
        ));
    };
    let method = req.method().as_str().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(plain(
                StatusCode::BAD_REQUEST,
                "text/plain",
                "bad body\n".into(),
            ))
        }
    };
    let (status, json) = {
        let mut c = core.lock().unwrap_or_else(|e| e.into_inner());
        c.ari_rest(&method, ari_path, &query, auth.as_deref(), &body)
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = match json {
        Some(j) => plain(status, "application/json", j.to_string()),
        None => {
            let mut r = plain(status, "text/plain", String::new());
            r.headers_mut().remove("Content-Type");
            r
        }
    };
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            "WWW-Authenticate",
            hyper::header::HeaderValue::from_static("Basic realm=\"Asterisk REST Interface\""),
        );
    }
    Ok(resp)
}

async fn accept_loop(
    listener: TcpListener,
    core: Arc<Mutex<Core>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            continue;
        };
        let core = core.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, peer, core.clone()));
            let http = http1::Builder::new();
            let _ = match tls {
                Some(tls) => match tls.accept(tcp).await {
                    Ok(stream) => {
                        http.serve_connection(TokioIo::new(stream), svc)
                            .with_upgrades()
                            .await
                    }
                    Err(_) => return,
                },
                None => {
                    http.serve_connection(TokioIo::new(tcp), svc)
                        .with_upgrades()
                        .await
                }
            };
        });
    }
}

/// The TLS acceptor for `cfg.tls`.
fn tls_acceptor(
    files: &(std::path::PathBuf, std::path::PathBuf),
) -> Result<tokio_rustls::TlsAcceptor, String> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
    };
    let chain = rustls_pemfile::certs(&mut &read(&files.0)?[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let key = rustls_pemfile::private_key(&mut &read(&files.1)?[..])
        .map_err(|e| e.to_string())?
        .ok_or("no private key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

impl AsteriskStandIn {
    /// Starts the stand-in and returns once it accepts connections.
    pub fn start(cfg: Config) -> AsteriskStandIn {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("asterisk-standin".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                rt.block_on(async move {
                    let tls = match cfg.tls.as_ref().map(tls_acceptor).transpose() {
                        Ok(tls) => tls,
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("TLS: {e}")));
                            return;
                        }
                    };
                    let listener = match TcpListener::bind((Ipv4Addr::LOCALHOST, cfg.port)).await {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("bind 127.0.0.1:{}: {e}", cfg.port)));
                            return;
                        }
                    };
                    let addr = listener.local_addr().expect("local addr");
                    let core = Arc::new(Mutex::new(Core::new(
                        cfg,
                        addr,
                        tokio::runtime::Handle::current(),
                    )));
                    core.lock().expect("fresh mutex").me = Arc::downgrade(&core);
                    let _ = ready_tx.send(Ok((addr, core.clone())));
                    tokio::select! {
                        _ = accept_loop(listener, core, tls) => {}
                        _ = stop_rx => {}
                    }
                });
                // Dropping the runtime ends every connection task.
                rt.shutdown_timeout(Duration::from_millis(200));
            })
            .expect("spawn stand-in thread");
        let (addr, core) = ready_rx
            .recv()
            .expect("stand-in thread ended early")
            .unwrap_or_else(|e| panic!("asterisk stand-in: {e}"));
        AsteriskStandIn {
            addr,
            core,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Stops the stand-in; every connection drops (like Asterisk going away).
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Stops and starts again on the same port with the same configuration (an Asterisk
    /// restart: registrations, calls and ARI subscriptions are gone).
    pub fn restart(&mut self) {
        let mut cfg = self.lock().cfg.clone();
        cfg.port = self.addr.port();
        self.stop();
        *self = AsteriskStandIn::start(cfg);
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// `ws://127.0.0.1:PORT/ws` (subprotocol `sip`), `wss://` with TLS.
    pub fn sip_ws_url(&self) -> String {
        format!("{}://{}/ws", self.scheme("ws"), self.addr)
    }
    /// `http://127.0.0.1:PORT/ari`, `https://` with TLS.
    pub fn ari_url(&self) -> String {
        format!("{}://{}/ari", self.scheme("http"), self.addr)
    }
    fn scheme(&self, plain: &str) -> String {
        let tls = self.lock().cfg.tls.is_some();
        if tls {
            format!("{plain}s")
        } else {
            plain.to_string()
        }
    }
    /// icegate-signal's flags for a gateway to this stand-in: its SIP WebSocket and ARI URLs
    /// and the passwords of its configuration.
    pub fn gateway_args(&self) -> Vec<String> {
        let (sip_password, ari_password) = {
            let c = self.lock();
            (c.cfg.sip_password.clone(), c.cfg.ari_password.clone())
        };
        vec![
            "--asterisk-sip-ws".into(),
            self.sip_ws_url(),
            "--asterisk-sip-password".into(),
            sip_password,
            "--asterisk-ari-url".into(),
            self.ari_url(),
            "--asterisk-ari-password".into(),
            ari_password,
        ]
    }

    /// The events URL with `api_key`, as the recordings connect.
    pub fn ari_events_url(&self, app: &str) -> String {
        let c = self.lock();
        format!(
            "ws://{}/ari/events?app={app}&api_key={}:{}&subscribeAll=false",
            self.addr, c.cfg.ari_user, c.cfg.ari_password
        )
    }

    /// Direct access to the state, for assertions this API lacks. Do not hold it long.
    pub fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Everything received and sent so far, in the recordings' format.
    pub fn log(&self) -> Vec<LogEntry> {
        self.lock().log.clone()
    }

    /// SIP messages received from clients (parsed; unparsable ones are skipped).
    pub fn sip_received(&self) -> Vec<SipMessage> {
        self.log()
            .iter()
            .filter(|e| e.stream == Stream::SipWs && e.dir == Dir::ToAsterisk)
            .filter_map(|e| SipMessage::parse(&e.data).ok())
            .collect()
    }

    /// SIP requests received with this method.
    pub fn sip_requests(&self, method: &str) -> Vec<SipMessage> {
        self.sip_received()
            .into_iter()
            .filter(|m| m.is_request() && m.method() == method)
            .collect()
    }

    /// ARI REST requests received: (method, path with query).
    pub fn ari_requests(&self) -> Vec<(String, String)> {
        self.log()
            .iter()
            .filter(|e| e.stream == Stream::AriRest && e.dir == Dir::ToAsterisk)
            .filter_map(|e| serde_json::from_str::<Value>(&e.data).ok())
            .map(|v| {
                (
                    v["method"].as_str().unwrap_or_default().to_string(),
                    v["path"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// ARI events delivered to a client.
    pub fn events_sent(&self) -> Vec<Value> {
        self.log()
            .iter()
            .filter(|e| e.stream == Stream::AriEvents && e.dir == Dir::FromAsterisk)
            .filter_map(|e| serde_json::from_str(&e.data).ok())
            .collect()
    }

    /// The live channels as ARI shows them.
    pub fn channels(&self) -> Vec<Value> {
        self.lock().calls.iter().map(|c| c.channel.json()).collect()
    }

    pub fn registrations(&self) -> Vec<Registration> {
        self.lock().registrations.clone()
    }

    /// True when no channel and no bridge is left (leak checks). Takes the lock once: two
    /// `lock()` calls in one expression would deadlock.
    pub fn idle(&self) -> bool {
        let c = self.lock();
        c.calls.is_empty() && c.bridges.is_empty()
    }

    /// Number of open SIP and ARI-events WebSockets.
    pub fn connections(&self) -> (usize, usize) {
        let c = self.lock();
        (c.sip_conns.len(), c.event_conns.len())
    }

    /// Digits ARI asked to send on a channel (`POST /channels/{id}/dtmf`).
    pub fn dtmf_sent(&self, channel_id: &str) -> Option<String> {
        let c = self.lock();
        c.calls
            .iter()
            .find(|x| x.channel.id == channel_id)
            .map(|x| x.dtmf_sent.clone())
    }

    /// Polls `f` on the state until it is true or `timeout` passes.
    pub fn wait_until(&self, timeout: Duration, mut f: impl FnMut(&Core) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if f(&self.lock()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Replaces the scripted faults.
    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// Closes every SIP WebSocket: with a close frame, or (`abort`) by dropping TCP.
    pub fn drop_sip(&self, abort: bool) {
        let c = self.lock();
        for conn in c.sip_conns.values() {
            let _ = conn
                .tx
                .send(if abort { WsCmd::Abort } else { WsCmd::Close });
        }
    }

    /// Closes every ARI events WebSocket (the app stays known; channels stay in Stasis).
    pub fn drop_ari_events(&self, abort: bool) {
        let c = self.lock();
        for conn in c.event_conns.values() {
            let _ = conn
                .tx
                .send(if abort { WsCmd::Abort } else { WsCmd::Close });
        }
    }

    /// Sends raw text (malformed SIP, say) on every SIP WebSocket.
    pub fn send_sip_raw(&self, text: &str) {
        let mut c = self.lock();
        c.record(Stream::SipWs, Dir::FromAsterisk, text.to_string());
        for conn in c.sip_conns.values() {
            let _ = conn.tx.send(WsCmd::Text(text.to_string()));
        }
    }

    /// Sends raw text (malformed JSON, unknown events) on every events WebSocket.
    pub fn send_ari_raw(&self, text: &str) {
        let mut c = self.lock();
        c.record(Stream::AriEvents, Dir::FromAsterisk, text.to_string());
        for conn in c.event_conns.values() {
            let _ = conn.tx.send(WsCmd::Text(text.to_string()));
        }
    }

    /// Hangs a channel up from the Asterisk side, as ARI DELETE does (cause 16 = normal).
    pub fn hangup(&self, channel_id: &str, cause: u32) -> bool {
        let mut c = self.lock();
        match c.call_index_by_channel(channel_id) {
            Some(i) => {
                c.hangup(i, Hangup::Ari { cause });
                true
            }
            None => false,
        }
    }

    /// Sends a re-INVITE with a changed offer in the channel's call; false when it cannot.
    pub fn reinvite(&self, channel_id: &str) -> bool {
        let mut c = self.lock();
        match c.call_index_by_channel(channel_id) {
            Some(i) => c.reinvite(i),
            None => false,
        }
    }

    /// A key pressed on the PBX side, as a SIP INFO in the channel's dialog (an endpoint with
    /// `dtmf_mode=info`); false when the call is not up.
    pub fn send_dtmf_info(&self, channel_id: &str, digit: &str) -> bool {
        let mut c = self.lock();
        match c.call_index_by_channel(channel_id) {
            Some(i) => c.send_dtmf_info(i, digit),
            None => false,
        }
    }

    /// A `ChannelDtmfReceived` as if the caller had sent an RFC 4733 digit: digits Asterisk
    /// received from the browser, which the gateway does not send back to it.
    pub fn inject_dtmf(&self, channel_id: &str, digit: &str) -> bool {
        self.lock().dtmf_received(channel_id, digit, 120)
    }

    /// The id of the channel whose SIP Call-ID is `call_id`.
    pub fn channel_for_call_id(&self, call_id: &str) -> Option<String> {
        let c = self.lock();
        c.calls
            .iter()
            .find(|x| x.call_id() == call_id)
            .map(|x| x.channel.id.clone())
    }
}

impl Drop for AsteriskStandIn {
    fn drop(&mut self) {
        self.stop();
    }
}
