//! A small client side for tests: WebSocket connect (with a subprotocol), receive with a
//! timeout, one-shot HTTP requests with basic auth, and REGISTER with digest. Used
//! against the stand-in and against a real Asterisk alike.

use super::digest;
use super::sip::SipMessage;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// Connects to `ws://addr{path}`, asking for `protocol`; errors carry the HTTP status.
pub async fn ws_connect(
    addr: SocketAddr,
    path: &str,
    protocol: Option<&str>,
) -> Result<Ws, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut req = format!("ws://{addr}{path}")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    if let Some(p) = protocol {
        let v = p.parse().map_err(|_| "bad protocol".to_string())?;
        req.headers_mut().insert("Sec-WebSocket-Protocol", v);
    }
    let (ws, resp) = tokio_tungstenite::client_async(req, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let got = resp
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok());
    if protocol.is_some() && got != protocol {
        return Err(format!("subprotocol {protocol:?} asked, {got:?} given"));
    }
    Ok(ws)
}

/// The next text (or binary, as UTF-8) message; None when closed or after `timeout`.
pub async fn recv_text(ws: &mut Ws, timeout: Duration) -> Option<String> {
    loop {
        match tokio::time::timeout(timeout, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Some(t.to_string()),
            Ok(Some(Ok(Message::Binary(b)))) => {
                return Some(String::from_utf8_lossy(&b).into_owned())
            }
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => return None,
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: String,
}

/// One HTTP/1.1 request with `Connection: close` and optional basic auth.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
    timeout: Duration,
) -> Result<HttpReply, String> {
    use base64::Engine;
    let mut tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    if let Some((u, p)) = auth {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        req.push_str(&format!("Authorization: Basic {b}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    tokio::time::timeout(timeout, tcp.read_to_end(&mut buf))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP head")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    let content_type = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        })
        .map(|(_, v)| v.trim().to_string());
    Ok(HttpReply {
        status,
        content_type,
        body: body.to_string(),
    })
}

fn register_text(user: &str, call_id: &str, cseq: u32, auth: Option<String>) -> String {
    let mut m = format!(
        "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/WS c.invalid;branch=z9hG4bK{:016x};rport\r\nMax-Forwards: 70\r\nFrom: <sip:{user}@127.0.0.1>;tag=t{call_id}\r\nTo: <sip:{user}@127.0.0.1>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{user}@c.invalid;transport=ws>;expires=600\r\n",
        rand::random::<u64>()
    );
    if let Some(a) = auth {
        m.push_str(&format!("Authorization: {a}\r\n"));
    }
    m + "Content-Length: 0\r\n\r\n"
}

/// REGISTER, answer the 401 with digest credentials, return the final response.
pub async fn register(ws: &mut Ws, user: &str, password: &str) -> Result<SipMessage, String> {
    let wait = Duration::from_secs(5);
    let call_id = format!("reg{:08x}", rand::random::<u32>());
    let send = |text: String| Message::text(text);
    ws.send(send(register_text(user, &call_id, 1, None)))
        .await
        .map_err(|e| e.to_string())?;
    let text = recv_text(ws, wait).await.ok_or("no answer to REGISTER")?;
    let challenge = SipMessage::parse(&text)?;
    if challenge.status() != Some(401) {
        return Ok(challenge);
    }
    let auth = challenge
        .header("WWW-Authenticate")
        .and_then(|c| digest::authorization(c, "REGISTER", "sip:127.0.0.1", user, password))
        .ok_or("401 without a usable digest challenge")?;
    ws.send(send(register_text(user, &call_id, 2, Some(auth))))
        .await
        .map_err(|e| e.to_string())?;
    let text = recv_text(ws, wait)
        .await
        .ok_or("no answer to the authenticated REGISTER")?;
    SipMessage::parse(&text)
}

/// The same, for tests against the stand-in: each waits [`checked::WAIT`] and panics with
/// what went wrong, so a test reads as the exchange it checks.
pub mod checked {
    use super::{HttpReply, SipMessage, Ws};
    use futures_util::SinkExt;
    use serde_json::Value;
    use std::net::SocketAddr;
    use std::time::Duration;
    use tokio_tungstenite::tungstenite::Message;

    /// How long each of these waits for an answer.
    pub const WAIT: Duration = Duration::from_secs(5);

    /// The next text frame, if one comes within [`WAIT`].
    pub async fn recv_text(ws: &mut Ws) -> Option<String> {
        super::recv_text(ws, WAIT).await
    }

    /// The next SIP message; panics on none or a malformed one.
    pub async fn recv_sip(ws: &mut Ws) -> SipMessage {
        let text = recv_text(ws)
            .await
            .expect("a SIP message from the stand-in");
        SipMessage::parse(&text).unwrap_or_else(|e| panic!("stand-in sent bad SIP ({e}):\n{text}"))
    }

    /// The next ARI event; panics on none or non-JSON.
    pub async fn recv_event(ws: &mut Ws) -> Value {
        let text = recv_text(ws).await.expect("an ARI event from the stand-in");
        serde_json::from_str(&text).expect("event is JSON")
    }

    /// Sends OPTIONS and asserts that the next SIP message is its 200. The stand-in reads one
    /// connection in order and answers at once, so whatever it sent for the earlier messages came
    /// before: this proves, without a wait, that it sent nothing else for them.
    pub async fn options_answered_next(ws: &mut Ws, what: &str) {
        let call_id = format!("opt{}", rand::random::<u32>());
        let options = format!(
            "OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/WS c.invalid;branch=z9hG4bK{call_id}\r\nMax-Forwards: 70\r\nFrom: <sip:icegate@127.0.0.1>;tag=t{call_id}\r\nTo: <sip:127.0.0.1>\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        ws.send(Message::text(options)).await.unwrap();
        let next = recv_sip(ws).await;
        assert!(
            next.call_id() == call_id && next.status() == Some(200),
            "{what}: before its answer to OPTIONS the stand-in sent {next:?}"
        );
    }

    /// One HTTP request; panics when it cannot be made.
    pub async fn http(
        addr: SocketAddr,
        method: &str,
        path: &str,
        auth: Option<(&str, &str)>,
    ) -> HttpReply {
        super::http(addr, method, path, auth, WAIT)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// REGISTER with digest, as a UA does it; returns the final response.
    pub async fn register(ws: &mut Ws) -> SipMessage {
        super::register(ws, "icegate", "sip-secret")
            .await
            .expect("REGISTER")
    }
}
