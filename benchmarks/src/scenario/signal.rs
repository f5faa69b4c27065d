//! signal: WebSocket signaling sessions against icegate-signal and Janus, over wss (or ws).
//!
//! A session is what a browser opens before it calls anyone: on icegate-signal a connection
//! to `/ws?name=…` and its `welcome` (TURN credentials included); on Janus a connection with
//! the `janus-protocol` subprotocol, `create` and `attach` to `janus.plugin.echotest`, each
//! answered. The scenario opens `--signal-sessions` of them, `--signal-window` at a time,
//! and holds them: sessions per second and server CPU per session while opening them, server
//! RSS per session once they sit idle. Then `--signal-prehello` more connections that only
//! finish the upgrade (no `hello`, no `create`), held for a second, what an unauthenticated
//! flood costs within icegate-signal's 10 s hello deadline. Then, on icegate-signal only,
//! a fan-out through rooms (docs/signal-protocol.md): rooms of 32 sessions, in each one
//! member calls the room and hangs up again, in a loop, and every other member receives
//! `incoming` and `hangup`: messages delivered per second and server CPU per message.
//! Janus has no comparable path: its textroom plugin delivers room messages over WebRTC data
//! channels, not over the WebSocket, so there is no Janus fan-out figure.
//!
//! The clients run on one tokio thread (the generator's CPU), over tokio-tungstenite and
//! tokio-rustls, trusting exactly the certificate the harness gave the server.

use super::{per, Metric, Metrics, Params};
use crate::contender::{Contender, Kind};
use crate::error::BenchError;
use crate::janus::CERT_DER;
use crate::measure::{rss_bytes_all, Window};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinSet;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Members of a fan-out room: icegate-signal's limit.
pub const ROOM_MEMBERS: usize = 32;
/// How long one session's setup may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);
/// After the last setup, before RSS is read: the server's last writes and frees are done.
const SETTLE: Duration = Duration::from_secs(3);

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Ws = WebSocketStream<Box<dyn Io>>;

/// Connects clients to one contender.
#[derive(Clone)]
struct Client {
    kind: Kind,
    addr: SocketAddr,
    tls: Option<TlsConnector>,
}

impl Client {
    fn new(c: &Contender) -> Result<Self, BenchError> {
        let tls = match (c.tls, c.dir()) {
            (true, Some(dir)) => {
                let path = dir.join(CERT_DER);
                let der = std::fs::read(&path).map_err(|e| BenchError::io(&path, e))?;
                let mut roots = tokio_rustls::rustls::RootCertStore::empty();
                roots
                    .add(CertificateDer::from(der))
                    .map_err(|e| BenchError::Contender(format!("certificate: {e}")))?;
                let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
                    tokio_rustls::rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map_err(|e| BenchError::Contender(format!("TLS: {e}")))?
                .with_root_certificates(roots)
                .with_no_client_auth();
                Some(TlsConnector::from(Arc::new(config)))
            }
            (true, None) => return Err(BenchError::Contender("no certificate".into())),
            (false, _) => None,
        };
        Ok(Self {
            kind: c.kind,
            addr: std::net::SocketAddr::V4(c.addr),
            tls,
        })
    }

    /// TCP, TLS when on, and the WebSocket upgrade of `path`.
    async fn connect(&self, path: &str) -> Result<Ws, String> {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match &self.tls {
            Some(tls) => {
                let name = ServerName::try_from("localhost").expect("a valid name");
                Box::new(
                    tls.connect(name, tcp)
                        .await
                        .map_err(|e| format!("TLS: {e}"))?,
                )
            }
            None => Box::new(tcp),
        };
        let mut request = format!("ws://{}{path}", self.addr)
            .into_client_request()
            .map_err(|e| format!("request: {e}"))?;
        if self.kind == Kind::Janus {
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                "janus-protocol".parse().expect("a valid header value"),
            );
        }
        // Thousands of clients in this process: small buffers here too.
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (ws, _) = tokio_tungstenite::client_async_with_config(request, io, Some(config))
            .await
            .map_err(|e| format!("upgrade: {e}"))?;
        Ok(ws)
    }

    /// One whole session, as described at the top.
    async fn session(&self, n: usize) -> Result<Ws, String> {
        match self.kind {
            Kind::Janus => {
                let mut ws = self.connect("/").await?;
                let created = request(
                    &mut ws,
                    serde_json::json!({"janus": "create", "transaction": format!("c{n}")}),
                )
                .await?;
                let session = created["data"]["id"]
                    .as_u64()
                    .ok_or_else(|| format!("create: {created}"))?;
                let attached = request(
                    &mut ws,
                    serde_json::json!({
                        "janus": "attach",
                        "session_id": session,
                        "plugin": "janus.plugin.echotest",
                        "transaction": format!("a{n}"),
                    }),
                )
                .await?;
                if attached["data"]["id"].as_u64().is_none() {
                    return Err(format!("attach: {attached}"));
                }
                Ok(ws)
            }
            _ => {
                let mut ws = self.connect(&format!("/ws?name=bench{n}")).await?;
                let welcome = next_json(&mut ws).await?;
                if welcome["type"] != "welcome" {
                    return Err(format!("expected welcome: {welcome}"));
                }
                Ok(ws)
            }
        }
    }

    /// A connection that stops after the upgrade: no `hello`, no `create`.
    async fn unauthenticated(&self) -> Result<Ws, String> {
        self.connect(if self.kind == Kind::Janus { "/" } else { "/ws" })
            .await
    }
}

/// Sends a Janus request and reads its answer, which must be `success`.
async fn request(ws: &mut Ws, body: serde_json::Value) -> Result<serde_json::Value, String> {
    ws.send(Message::text(body.to_string()))
        .await
        .map_err(|e| format!("send: {e}"))?;
    let answer = next_json(ws).await?;
    if answer["janus"] != "success" {
        return Err(format!("Janus answered {answer}"));
    }
    Ok(answer)
}

/// The next text message, as JSON.
async fn next_json(ws: &mut Ws) -> Result<serde_json::Value, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(text.as_str()).map_err(|e| format!("JSON: {e}"))
            }
            Some(Ok(Message::Close(frame))) => return Err(format!("closed: {frame:?}")),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("read: {e}")),
            None => return Err("closed".into()),
        }
    }
}

/// Opens `count` connections with `open`, `window` at a time; returns those that worked,
/// the number that failed and the first error.
async fn open_many<T, F, Fut>(
    count: usize,
    window: usize,
    open: F,
) -> (Vec<T>, usize, Option<String>)
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>> + Send + 'static,
{
    let mut set = JoinSet::new();
    let mut ok = Vec::with_capacity(count);
    let (mut failed, mut first_error) = (0, None);
    let mut record = |r: Result<Result<T, String>, _>| match r {
        Ok(Ok(ws)) => ok.push(ws),
        Ok(Err(e)) => {
            failed += 1;
            first_error.get_or_insert(e);
        }
        Err(_) => {
            failed += 1;
            first_error.get_or_insert("timed out".to_string());
        }
    };
    for n in 0..count {
        if set.len() >= window.max(1) {
            if let Some(r) = set.join_next().await {
                record(r.expect("setup task"));
            }
        }
        set.spawn(tokio::time::timeout(SETUP_TIMEOUT, open(n)));
    }
    while let Some(r) = set.join_next().await {
        record(r.expect("setup task"));
    }
    (ok, failed, first_error)
}

/// Runs the scenario.
pub fn run(c: &Contender, p: &Params) -> Result<Metrics, BenchError> {
    let client = Client::new(c)?;
    // One client per instance (two in the cluster scenario): session n goes to instance
    // n mod their number, so that half the sessions of a cluster are on each.
    let clients: Vec<Client> = c
        .instances()
        .into_iter()
        .map(|addr| Client {
            addr: SocketAddr::V4(addr),
            ..client.clone()
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::io("tokio runtime", e))?;
    runtime.block_on(run_async(c, clients, p))
}

async fn run_async(c: &Contender, clients: Vec<Client>, p: &Params) -> Result<Metrics, BenchError> {
    let pids = c.pids();
    let clients = Arc::new(clients);
    let before = rss_bytes_all(&pids)?;
    let w = Window::start_all(&pids)?;
    let t = Instant::now();
    let opener = Arc::clone(&clients);
    let (sessions, failed, first_error) = open_many(p.signal_sessions, p.signal_window, |n| {
        let clients = Arc::clone(&opener);
        async move {
            let instance = n % clients.len();
            Ok((instance, clients[instance].session(n).await?))
        }
    })
    .await;
    let setup_secs = t.elapsed().as_secs_f64();
    let setup = w.finish()?;
    if let Some(e) = &first_error {
        eprintln!("{} signal: first failure: {e}", c.kind.name());
    }
    if sessions.is_empty() {
        return Err(BenchError::Contender(format!(
            "{}: no session: {}",
            c.kind.name(),
            first_error.unwrap_or_default()
        )));
    }
    tokio::time::sleep(SETTLE).await;
    let with_sessions = rss_bytes_all(&pids)?;
    let held = sessions.len() as f64;

    // Unauthenticated connections, on top of the sessions.
    let opener = Arc::clone(&clients);
    let (bare, _, bare_error) = open_many(p.signal_prehello, p.signal_window, |n| {
        let clients = Arc::clone(&opener);
        async move { clients[n % clients.len()].unauthenticated().await }
    })
    .await;
    if let Some(e) = &bare_error {
        eprintln!(
            "{} signal: first unauthenticated failure: {e}",
            c.kind.name()
        );
    }
    tokio::time::sleep(SETTLE).await;
    let with_bare = rss_bytes_all(&pids)?;
    let bare_count = bare.len() as f64;
    drop(bare);

    let mut m = vec![
        (Metric::Sessions, held),
        (Metric::SetupFailures, failed as f64),
        (Metric::SessionsPerSec, per(held, setup_secs)),
        (Metric::CpuPerSession, per(setup.server_cpu * 1e6, held)),
        (
            Metric::BytesPerSession,
            per(with_sessions.saturating_sub(before) as f64, held),
        ),
        (
            Metric::BytesPerUnauthenticated,
            per(with_bare.saturating_sub(with_sessions) as f64, bare_count),
        ),
        (Metric::GeneratorCpu, setup.own_cpu),
    ];
    if c.kind == Kind::Icegate && p.fanout_rooms > 0 {
        m.extend(fanout(&pids, c.kind, sessions, clients.len(), p).await?);
    }
    Ok(m)
}

/// The fan-out through rooms (icegate-signal only), over sessions already open. With several
/// instances, a room's members are taken from each in turn, so that its caller (member 0,
/// on the first instance) reaches most members through Redis.
async fn fanout(
    pids: &[u32],
    kind: Kind,
    sessions: Vec<(usize, Ws)>,
    instances: usize,
    p: &Params,
) -> Result<Metrics, BenchError> {
    let mut pools: Vec<Vec<Ws>> = (0..instances).map(|_| Vec::new()).collect();
    for (instance, ws) in sessions {
        pools[instance].push(ws);
    }
    let smallest = pools.iter().map(Vec::len).min().unwrap_or(0);
    let rooms = p.fanout_rooms.min(smallest * instances / ROOM_MEMBERS);
    if rooms == 0 {
        return Ok(vec![]);
    }
    let delivered = Arc::new(AtomicU64::new(0));
    // Counted apart: what members on another instance than the caller's received, which
    // crossed Redis.
    let delivered_remote = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let joined = Arc::new(tokio::sync::Barrier::new(rooms * ROOM_MEMBERS + 1));
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut tasks = JoinSet::new();
    for room in 0..rooms {
        for member in 0..ROOM_MEMBERS {
            let mut ws = pools[member % instances].pop().expect("enough sessions");
            let counter = if member % instances == 0 {
                &delivered
            } else {
                &delivered_remote
            };
            let (delivered, counting, joined, stop) = (
                Arc::clone(counter),
                Arc::clone(&counting),
                Arc::clone(&joined),
                Arc::clone(&stop),
            );
            tasks.spawn(async move {
                let name = format!("fanout{room}");
                let join = serde_json::json!({"v": 1, "type": "join", "id": 1, "room": name});
                ws.send(Message::text(join.to_string()))
                    .await
                    .map_err(|e| format!("join: {e}"))?;
                let ack = next_json(&mut ws).await?;
                if ack["type"] != "ack" {
                    return Err(format!("join: {ack}"));
                }
                joined.wait().await;
                if member == 0 {
                    call_loop(&mut ws, &name, &stop).await
                } else {
                    receive_loop(&mut ws, &delivered, &counting, &stop).await
                }
            });
        }
    }
    joined.wait().await;
    counting.store(true, Ordering::Relaxed);
    let w = Window::start_all(pids)?;
    tokio::time::sleep(Duration::from_secs_f64(p.fanout_secs)).await;
    counting.store(false, Ordering::Relaxed);
    let r = w.finish()?;
    let remote = delivered_remote.load(Ordering::Relaxed) as f64;
    let count = delivered.load(Ordering::Relaxed) as f64 + remote;
    stop.notify_waiters();
    let mut first_error = None;
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(e)) = done {
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        eprintln!("{} signal fan-out: first failure: {e}", kind.name());
    }
    let mut m = vec![(Metric::FanoutPerSec, per(count, r.secs))];
    if instances > 1 {
        m.push((Metric::FanoutRemotePerSec, per(remote, r.secs)));
    }
    m.extend([
        (Metric::CpuPerFanout, per(r.server_cpu * 1e6, count)),
        (Metric::FanoutGeneratorCpu, r.own_cpu),
    ]);
    Ok(m)
}

/// A room's caller: `call` to the room, its `ack`, `hangup`, its `ack`, until stopped.
async fn call_loop(ws: &mut Ws, room: &str, stop: &tokio::sync::Notify) -> Result<(), String> {
    let stopped = stop.notified();
    tokio::pin!(stopped);
    let mut id = 10u64;
    loop {
        let cycle = async {
            id += 2;
            let call = serde_json::json!({"v": 1, "type": "call", "id": id, "to": {"room": room},
                                          "sdp": "v=0\r\n"});
            ws.send(Message::text(call.to_string()))
                .await
                .map_err(|e| format!("call: {e}"))?;
            let ack = next_json(ws).await?;
            let call_id = ack["call"]
                .as_str()
                .ok_or_else(|| format!("call: {ack}"))?
                .to_string();
            let hangup = serde_json::json!({"v": 1, "type": "hangup", "id": id + 1,
                                            "call": call_id});
            ws.send(Message::text(hangup.to_string()))
                .await
                .map_err(|e| format!("hangup: {e}"))?;
            let ack = next_json(ws).await?;
            if ack["type"] != "ack" {
                return Err(format!("hangup: {ack}"));
            }
            Ok::<(), String>(())
        };
        tokio::select! {
            done = cycle => done?,
            () = &mut stopped => return Ok(()),
        }
    }
}

/// A room's member: counts `incoming` and `hangup` while the window is open.
async fn receive_loop(
    ws: &mut Ws,
    delivered: &AtomicU64,
    counting: &std::sync::atomic::AtomicBool,
    stop: &tokio::sync::Notify,
) -> Result<(), String> {
    let stopped = stop.notified();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            message = ws.next() => match message {
                Some(Ok(Message::Text(_))) => {
                    if counting.load(Ordering::Relaxed) {
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("read: {e}")),
                None => return Err("closed".into()),
            },
            () = &mut stopped => return Ok(()),
        }
    }
}
