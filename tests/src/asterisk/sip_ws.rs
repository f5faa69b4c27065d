//! `GET /ws`: SIP over WebSocket (RFC 7118) with subprotocol `sip`, as
//! res_pjsip_transport_websocket serves it.

use super::state::{Core, Dir, SipConn, Stream};
use super::ws::{self, Body};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

pub fn accept(
    req: &mut Request<Incoming>,
    peer: SocketAddr,
    core: Arc<Mutex<Core>>,
) -> Response<Body> {
    let offers_sip = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("sip"));
    if !offers_sip {
        // Without the `sip` subprotocol the request reaches no SIP transport.
        return ws::plain(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "subprotocol sip required\n".into(),
        );
    }
    let id = {
        let mut c = core.lock().unwrap_or_else(|e| e.into_inner());
        c.next_conn += 1;
        c.next_conn
    };
    ws::upgrade(
        req,
        Some("sip"),
        core,
        Box::new(move |c: &mut Core, tx| {
            c.sip_conns.insert(id, SipConn { tx, peer });
            c.record(
                Stream::SipWs,
                Dir::Note,
                format!("WebSocket open, subprotocol \"sip\" (connection {id}, peer {peer})"),
            );
        }),
        Box::new(move |c: &mut Core, text: &str| c.on_sip_text(id, text)),
        Box::new(move |c: &mut Core| c.sip_closed(id)),
    )
}
