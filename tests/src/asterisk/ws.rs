//! The WebSocket side shared by `/ws` (SIP) and `/ari/events`: the RFC 6455 upgrade on a
//! hyper request, and one task per connection that forwards incoming text to the core and
//! outgoing [`WsCmd`]s to the socket.

use super::state::{Core, WsCmd};
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type Body = Full<Bytes>;

pub fn plain(status: StatusCode, ctype: &str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("Content-Type", ctype)
        .header("Server", "Asterisk/22.10.1")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts")
}

/// What a connection does with what it receives.
pub type OnText = Box<dyn FnMut(&mut Core, &str) + Send>;
/// Called once with the connection's sender when the WebSocket is up.
pub type OnOpen = Box<dyn FnOnce(&mut Core, UnboundedSender<WsCmd>) + Send>;
/// Called once when the connection ends.
pub type OnClose = Box<dyn FnOnce(&mut Core) + Send>;

/// Answers the upgrade (101, with `protocol` echoed when given) and spawns the connection
/// task; `register` is called with the sender once the WebSocket is up.
pub fn upgrade(
    req: &mut Request<Incoming>,
    protocol: Option<&str>,
    core: Arc<Mutex<Core>>,
    register: OnOpen,
    on_text: OnText,
    on_close: OnClose,
) -> Response<Body> {
    let is_ws = req
        .headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return plain(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "not a WebSocket request\n".into(),
        );
    };
    if !is_ws {
        return plain(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "not a WebSocket request\n".into(),
        );
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on.await else { return };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let (tx, rx) = unbounded_channel();
        {
            let mut c = core.lock().unwrap_or_else(|e| e.into_inner());
            register(&mut c, tx);
        }
        run(ws, rx, core, on_text, on_close).await;
    });
    let mut resp = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("Upgrade", "websocket")
        .header("Connection", "Upgrade")
        .header("Sec-WebSocket-Accept", accept);
    if let Some(p) = protocol {
        resp = resp.header("Sec-WebSocket-Protocol", p);
    }
    resp.body(Full::new(Bytes::new()))
        .expect("static response parts")
}

async fn run(
    ws: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>,
    mut rx: UnboundedReceiver<WsCmd>,
    core: Arc<Mutex<Core>>,
    mut on_text: OnText,
    on_close: OnClose,
) {
    let (mut sink, mut stream) = ws.split();
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let mut c = core.lock().unwrap_or_else(|e| e.into_inner());
                    on_text(&mut c, t.as_str());
                }
                Some(Ok(Message::Binary(b))) => {
                    // RFC 7118 allows binary frames carrying UTF-8 SIP.
                    let t = String::from_utf8_lossy(&b).into_owned();
                    let mut c = core.lock().unwrap_or_else(|e| e.into_inner());
                    on_text(&mut c, &t);
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            cmd = rx.recv() => match cmd {
                Some(WsCmd::Text(t)) => {
                    if sink.send(Message::text(t)).await.is_err() {
                        break;
                    }
                }
                Some(WsCmd::Close) => {
                    let _ = sink.send(Message::Close(None)).await;
                    let _ = sink.close().await;
                    break;
                }
                Some(WsCmd::Abort) | None => break,
            },
        }
    }
    let mut c = core.lock().unwrap_or_else(|e| e.into_inner());
    on_close(&mut c);
}
