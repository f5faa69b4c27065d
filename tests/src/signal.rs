//! Starting icegate-signal for one test, and a blocking WebSocket client (tungstenite) that
//! speaks its JSON protocol, over plain HTTP or TLS.

use crate::http;
use crate::metrics::Metrics;
use crate::ports::PortBlock;
use serde_json::{json, Value};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

/// How long the server may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client waits for one message.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// How to start the server. `Default` is anonymous mode over plain HTTP on loopback.
#[derive(Debug, Clone)]
pub struct SignalConfig {
    pub anonymous: bool,
    pub jwt_secret: Option<String>,
    /// A PEM public key written to a file and passed as `--jwt-public-key`.
    pub jwt_public_key_pem: Option<String>,
    pub static_auth_secret: Option<String>,
    /// `--relay` URIs.
    pub relays: Vec<String>,
    /// `--relay-health` URLs.
    pub relay_health: Vec<String>,
    /// TLS with a generated certificate passed as `--cert`/`--pkey`; else `--plain-http`.
    pub tls: bool,
    /// More flags, appended last.
    pub args: Vec<String>,
}

impl Default for SignalConfig {
    fn default() -> Self {
        SignalConfig {
            anonymous: true,
            jwt_secret: None,
            jwt_public_key_pem: None,
            static_auth_secret: Some("signal-test-secret".into()),
            relays: vec![
                "stun:127.0.0.1:3478".into(),
                "turn:127.0.0.1:3478?transport=udp".into(),
            ],
            relay_health: vec![],
            tls: false,
            args: vec![],
        }
    }
}

/// The path of the icegate-signal binary (or `$ICEGATE_SIGNAL_BIN`).
pub fn signal_binary() -> PathBuf {
    crate::workspace_binary("icegate-signal", "ICEGATE_SIGNAL_BIN")
}

/// A running icegate-signal. Killed when dropped; its log is printed if the test panics.
pub struct Signal {
    pub config: SignalConfig,
    pub ports: PortBlock,
    child: Option<Child>,
    dir: tempfile::TempDir,
    log_path: PathBuf,
    /// The certificate clients trust, when TLS is on.
    pub cert_path: Option<PathBuf>,
}

impl Signal {
    /// Starts the server and waits until `/readyz` answers 200.
    pub fn start(config: SignalConfig) -> Signal {
        let ports = PortBlock::claim();
        let dir = tempfile::Builder::new()
            .prefix("icegate-signal-test-")
            .tempdir()
            .expect("tempdir");
        let log_path = dir.path().join("signal.log");
        let mut signal = Signal {
            config,
            ports,
            child: None,
            dir,
            log_path,
            cert_path: None,
        };
        let args = signal.command_line();
        let log = File::create(&signal.log_path).expect("create log file");
        let child = Command::new(signal_binary())
            .args(&args)
            .current_dir(signal.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("clone log fd")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn icegate-signal");
        eprintln!(
            "[harness] started icegate-signal pid {} ({})",
            child.id(),
            args.join(" ")
        );
        signal.child = Some(child);
        signal.wait_ready();
        signal
    }

    fn command_line(&mut self) -> Vec<String> {
        let c = self.config.clone();
        let mut a: Vec<String> = vec![
            "--listen".into(),
            self.addr().to_string(),
            "--metrics-listen".into(),
            self.metrics_addr().to_string(),
        ];
        if c.anonymous {
            a.push("--anonymous".into());
        }
        if let Some(secret) = &c.jwt_secret {
            a.extend(["--jwt-secret".into(), secret.clone()]);
        }
        if let Some(pem) = &c.jwt_public_key_pem {
            let path = self.dir.path().join("jwt-public.pem");
            std::fs::write(&path, pem).expect("write public key");
            a.extend(["--jwt-public-key".into(), path.display().to_string()]);
        }
        if let Some(secret) = &c.static_auth_secret {
            a.extend(["--static-auth-secret".into(), secret.clone()]);
        }
        for relay in &c.relays {
            a.extend(["--relay".into(), relay.clone()]);
        }
        for url in &c.relay_health {
            a.extend(["--relay-health".into(), url.clone()]);
        }
        if c.tls {
            let (cert, key) = crate::server::write_self_signed_cert(self.dir.path());
            a.extend([
                "--cert".into(),
                cert.display().to_string(),
                "--pkey".into(),
                key.display().to_string(),
            ]);
            self.cert_path = Some(cert);
        } else {
            a.push("--plain-http".into());
        }
        a.extend(c.args.iter().cloned());
        a
    }

    fn wait_ready(&mut self) {
        let metrics = self.metrics_addr();
        let ready = http::wait_ready(metrics, READY_TIMEOUT, Duration::from_millis(50), || {
            self.is_running()
        });
        if !ready {
            self.dump_log(100);
            panic!("icegate-signal did not become ready within {READY_TIMEOUT:?}");
        }
    }

    /// The HTTP(S) address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.ports.signal()))
    }

    /// The metrics address.
    pub fn metrics_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.ports.signal_metrics()))
    }

    /// One scrape of `/metrics`.
    pub fn metrics(&self) -> Metrics {
        let response =
            http::get(self.metrics_addr(), "/metrics", Duration::from_secs(5)).expect("scrape");
        Metrics::parse(&response.body).expect("valid Prometheus text")
    }

    /// `GET path` on the main listener (plain HTTP only), with extra request headers.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> HttpReply {
        self.request("GET", path, headers)
    }

    /// `METHOD path` on the main listener (plain HTTP only), with extra request headers.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpReply {
        assert!(!self.config.tls, "Signal::request speaks plain HTTP");
        let mut stream = TcpStream::connect(self.addr()).expect("connect");
        stream.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        HttpReply::parse(&raw)
    }

    /// `GET /v1/ice-servers` as JSON, asserting 200.
    pub fn ice_servers(&self, headers: &[(&str, &str)]) -> Value {
        let response = self.get("/v1/ice-servers", headers);
        assert_eq!(response.status, 200, "{}", response.body);
        serde_json::from_str(&response.body).expect("JSON body")
    }

    /// Opens `/ws?QUERY` (empty: no query) and completes the WebSocket handshake.
    pub fn connect(&self, query: &str) -> WsClient {
        self.try_connect(query, &[])
            .unwrap_or_else(|e| panic!("connect /ws?{query}: {e}"))
    }

    /// Like [`connect`](Self::connect), with extra headers; the error is the handshake's.
    pub fn try_connect(
        &self,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<WsClient, tungstenite::Error> {
        let tcp = TcpStream::connect(self.addr()).expect("connect");
        tcp.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
        tcp.set_nodelay(true).unwrap();
        let scheme = if self.config.tls { "wss" } else { "ws" };
        let path = if query.is_empty() {
            "/ws".to_string()
        } else {
            format!("/ws?{query}")
        };
        let uri = format!("{scheme}://localhost:{}{path}", self.ports.signal());
        let mut request = tungstenite::client::IntoClientRequest::into_client_request(uri)?;
        for (name, value) in headers {
            request.headers_mut().insert(
                tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let stream = match &self.cert_path {
            None => Stream::Plain(tcp),
            Some(cert) => Stream::Tls(Box::new(tls_stream(cert, tcp))),
        };
        match tungstenite::client(request, stream) {
            Ok((ws, _response)) => Ok(WsClient { ws }),
            Err(tungstenite::HandshakeError::Failure(error)) => Err(error),
            Err(tungstenite::HandshakeError::Interrupted(_)) => {
                panic!("blocking handshake interrupted")
            }
        }
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Prints the last `lines` of the log.
    pub fn dump_log(&self, lines: usize) {
        let file = match File::open(&self.log_path) {
            Ok(f) => f,
            Err(_) => return,
        };
        let all: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
        eprintln!(
            "----- icegate-signal log ({}) -----",
            self.log_path.display()
        );
        for line in &all[all.len().saturating_sub(lines)..] {
            eprintln!("{line}");
        }
        eprintln!("----- end of icegate-signal log -----");
    }

    /// Waits until the Asterisk gateway says it is registered over SIP and connected to ARI;
    /// panics with the log's tail otherwise.
    pub fn assert_gateway_up(&self, wait: Duration) {
        let gauge = |name: &str| self.metrics().sum(name, &[]);
        let up = eventually(wait, || {
            gauge("icegate_signal_asterisk_sip_registered") == 1.0
                && gauge("icegate_signal_asterisk_ari_connected") == 1.0
        });
        if !up {
            self.dump_log(80);
            panic!("the gateway did not register with the PBX and connect ARI within {wait:?}");
        }
    }

    /// Waits until the Asterisk gateway holds no call and every started call has ended, then
    /// checks that exactly one PBX call was answered and that no client got an error.
    pub fn assert_one_pbx_call_answered_and_released(&self, wait: Duration) {
        let clean = eventually(wait, || {
            let m = self.metrics();
            m.sum("icegate_signal_asterisk_calls_active", &[]) == 0.0
                && m.sum("icegate_signal_calls_started_total", &[])
                    == m.sum("icegate_signal_calls_ended_total", &[])
        });
        let metrics = self.metrics();
        assert!(clean, "the signal server holds calls: {}", metrics.raw);
        let answered = [("result", "answered")];
        assert_eq!(
            metrics.sum("icegate_signal_asterisk_calls_total", &answered),
            1.0,
            "{}",
            metrics.raw
        );
        assert_eq!(
            metrics.sum("icegate_signal_errors_total", &[]),
            0.0,
            "{}",
            metrics.raw
        );
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The directory the server runs in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Signal {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() || std::env::var_os("ICEGATE_TEST_SHOW_LOGS").is_some() {
            self.dump_log(150);
        }
    }
}

fn tls_stream(
    cert: &Path,
    tcp: TcpStream,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let pem = std::fs::read_to_string(cert).expect("read cert");
    let der = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<String>();
    use base64::Engine as _;
    let der = base64::engine::general_purpose::STANDARD
        .decode(der)
        .expect("PEM body is base64");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.into()).expect("trust the test certificate");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    rustls::StreamOwned::new(connection, tcp)
}

/// A client socket, plain or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// A response of the main listener (which always sends `Content-Length`).
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    fn parse(raw: &[u8]) -> HttpReply {
        let text = String::from_utf8_lossy(raw);
        let (head, body) = text.split_once("\r\n\r\n").expect("complete head");
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .expect("status line");
        let headers = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        HttpReply {
            status,
            headers,
            body: body.to_string(),
        }
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What a client read: a JSON message, or the server's close.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    Json(Value),
    Closed(Option<u16>),
}

/// A blocking WebSocket client of the signal protocol.
pub struct WsClient {
    ws: WebSocket<Stream>,
}

impl WsClient {
    /// Sends a JSON message as a text frame.
    pub fn send(&mut self, message: Value) {
        self.send_text(&message.to_string());
    }

    /// Sends a raw text frame.
    pub fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_owned()))
            .expect("send text frame");
    }

    /// Sends a raw binary frame.
    pub fn send_binary(&mut self, bytes: &[u8]) {
        self.ws
            .send(Message::binary(bytes.to_vec()))
            .expect("send binary frame");
    }

    /// The next message or close, skipping pings; panics after [`RECV_TIMEOUT`].
    pub fn recv(&mut self) -> Received {
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => {
                    return Received::Json(
                        serde_json::from_str(text.as_str()).expect("server sends JSON"),
                    )
                }
                Ok(Message::Close(frame)) => {
                    return Received::Closed(frame.map(|f| u16::from(f.code)))
                }
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                Ok(Message::Binary(_)) => panic!("the server sent a binary frame"),
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Received::Closed(None)
                }
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    panic!("no message within {RECV_TIMEOUT:?}")
                }
                Err(tungstenite::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::ConnectionReset =>
                {
                    return Received::Closed(None)
                }
                Err(e) => panic!("websocket read: {e}"),
            }
        }
    }

    /// The next message, whatever its type; panics on a close.
    pub fn recv_json(&mut self) -> Value {
        match self.recv() {
            Received::Json(value) => value,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Calls `to` (`{"user":…}` or `{"room":…}`) with `sdp` until the callee has reached this
    /// client's signal instance (with `redis-url`, a few milliseconds after the user's welcome
    /// or the room's join elsewhere), retrying on `unknown_user` and `unknown_room` for up to
    /// `wait`; returns the call id.
    pub fn call_when_known(&mut self, to: Value, sdp: &str, wait: Duration) -> String {
        let deadline = Instant::now() + wait;
        loop {
            self.send(json!({"v":1,"type":"call","id":"c","to":to,"sdp":sdp}));
            let reply = self.recv_json();
            let unknown = reply["code"] == "unknown_user" || reply["code"] == "unknown_room";
            match reply["type"].as_str() {
                Some("ack") => return reply["call"].as_str().expect("call id").to_owned(),
                Some("error") if unknown && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => panic!("calling {to}: {reply}"),
            }
        }
    }

    /// The next message, which must be JSON of `type`.
    pub fn expect(&mut self, kind: &str) -> Value {
        match self.recv() {
            Received::Json(value) if value["type"] == kind => value,
            other => panic!("expected a {kind:?} message, got {other:?}"),
        }
    }

    /// The next message, which must be an `error` with `code`; returns it.
    pub fn expect_error(&mut self, code: &str) -> Value {
        let error = self.expect("error");
        assert_eq!(error["code"], code, "{error}");
        error
    }

    /// Reads until the server closes; returns the close code. Panics on any other message.
    pub fn expect_close(&mut self) -> Option<u16> {
        match self.recv() {
            Received::Closed(code) => code,
            other => panic!("expected the server to close, got {other:?}"),
        }
    }

    /// Reads until the server has sent `n` WebSocket pings, answering each (tungstenite queues
    /// the pong and writes it on the next read or write); panics on any message or close
    /// before that. The server's keepalive timer paces this wait, not a sleep of the test.
    pub fn expect_server_pings(&mut self, n: usize) {
        let mut seen = 0;
        while seen < n {
            match self.ws.read() {
                Ok(Message::Ping(_)) => seen += 1,
                Ok(Message::Pong(_) | Message::Frame(_)) => {}
                Ok(other) => panic!("expected the server's ping {}, got {other:?}", seen + 1),
                Err(e) => panic!("waiting for the server's ping {}: {e}", seen + 1),
            }
        }
    }

    /// Sends `{"v":1,"type":"ping","id":ID}` and waits for the pong: proof the connection is up.
    pub fn ping(&mut self, id: u64) {
        self.send(json!({"v":1,"type":"ping","id":id}));
        let pong = self.expect("pong");
        assert_eq!(pong["id"], id);
    }

    /// Sends `hello` with a name (anonymous mode) and returns the welcome.
    pub fn hello_name(&mut self, name: &str) -> Value {
        self.send(json!({"v":1,"type":"hello","id":"hello","name":name}));
        self.expect("welcome")
    }

    /// Closes the connection from the client side.
    pub fn close(mut self) {
        let _ = self.ws.close(Some(tungstenite::protocol::CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }));
        let _ = self.ws.flush();
    }

    /// Waits up to `timeout` (instead of [`RECV_TIMEOUT`]) for each following message.
    pub fn set_recv_timeout(&mut self, timeout: Duration) {
        let tcp = match self.ws.get_ref() {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => &tls.sock,
        };
        tcp.set_read_timeout(Some(timeout)).unwrap();
    }

    /// Starts the closing handshake with `code` (none: an empty close frame) and reads until
    /// the server's close frame: `Ok` with its code (`None` for an empty one), or `Err` saying
    /// what came instead.
    pub fn close_handshake(&mut self, code: Option<u16>) -> Result<Option<u16>, String> {
        let frame = code.map(|code| tungstenite::protocol::CloseFrame {
            code: CloseCode::from(code),
            reason: "bye".into(),
        });
        self.ws
            .close(frame)
            .map_err(|e| format!("sending the close: {e}"))?;
        loop {
            match self.ws.read() {
                Ok(Message::Close(frame)) => return Ok(frame.map(|f| u16::from(f.code))),
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                Ok(other) => return Err(format!("a message instead of the close: {other:?}")),
                Err(e) => return Err(format!("no close frame from the server: {e}")),
            }
        }
    }

    /// After [`close_handshake`](Self::close_handshake): whether the server then ended the
    /// TCP connection (the client's next read ends without error or data).
    pub fn server_closed_tcp(&mut self) -> bool {
        matches!(self.ws.read(), Err(tungstenite::Error::ConnectionClosed))
    }

    /// Drops the TCP connection without a close handshake, as a crashed browser would.
    pub fn kill(self) {
        let stream = self.ws.get_ref();
        if let Stream::Plain(tcp) = stream {
            let _ = tcp.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Unix time in seconds.
pub use icegate_common::clock::unix_now;

/// An HS256 JWT with `sub` and `exp = now + exp_in` (negative: already expired).
pub fn hs256_token(secret: &str, sub: &str, exp_in: i64) -> String {
    let exp = unix_now() as i64 + exp_in;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign token")
}

/// The TURN REST password for `username`: base64(HMAC-SHA1(secret, username)), computed
/// by the test kit, independently of icegate's own code.
pub fn rest_password(secret: &str, username: &str) -> String {
    icegate_testkit::rest_password(secret.as_bytes(), username)
}

/// Polls `f` until it is true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
