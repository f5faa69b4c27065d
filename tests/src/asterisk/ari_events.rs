//! `GET /ari/events?app=icegate&api_key=user:pass`: the ARI events WebSocket. Connecting
//! registers the applications; events go to every connection of their application.

use super::ari_rest::{authorized, parse_query};
use super::state::{Core, Dir, EventConn, Stream};
use super::ws::{self, Body};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json;
use std::sync::{Arc, Mutex};

pub fn accept(req: &mut Request<Incoming>, core: Arc<Mutex<Core>>) -> Response<Body> {
    let query = parse_query(req.uri().query().unwrap_or_default());
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let id = {
        let mut c = core.lock().unwrap_or_else(|e| e.into_inner());
        if !authorized(&c, auth.as_deref(), &query) {
            c.note("ARI events WebSocket refused: bad credentials");
            return ws::plain(
                StatusCode::UNAUTHORIZED,
                "application/json",
                json!({"message": "Authentication required"}).to_string(),
            );
        }
        if c.faults.refuse_ari_events {
            c.note("ARI events WebSocket refused: fault injected");
            return ws::plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "unavailable\n".into(),
            );
        }
        c.next_conn += 1;
        c.next_conn
    };
    let apps: Vec<String> = query
        .iter()
        .filter(|(k, _)| k == "app")
        .flat_map(|(_, v)| v.split(','))
        .map(str::to_string)
        .filter(|a| !a.is_empty())
        .collect();
    if apps.is_empty() {
        return ws::plain(
            StatusCode::BAD_REQUEST,
            "application/json",
            json!({"message": "Missing required query parameter app"}).to_string(),
        );
    }
    ws::upgrade(
        req,
        None,
        core,
        Box::new(move |c: &mut Core, tx| {
            c.record(
                Stream::AriEvents,
                Dir::Note,
                format!("events WebSocket open for {apps:?} (connection {id})"),
            );
            c.event_conns.insert(id, EventConn { tx, apps });
        }),
        Box::new(move |c: &mut Core, text: &str| {
            // Asterisk ignores what clients send on the events socket.
            c.record(Stream::AriEvents, Dir::ToAsterisk, text.to_string());
        }),
        Box::new(move |c: &mut Core| {
            c.event_conns.remove(&id);
            c.note(format!("events WebSocket {id} closed"));
        }),
    )
}
