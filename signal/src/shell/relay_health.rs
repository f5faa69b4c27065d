//! Polls each relay's `/readyz` and publishes whether it is up, so that ICE server lists
//! leave out relays that are down (or draining, which their `/readyz` also reports).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::header::HOST;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use icegate_signal::ice::{Health, HealthUrl};
use tokio::net::TcpStream;

use super::state::Shared;

/// A check that takes longer than this counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Starts one checking task per relay that has a health URL.
pub fn spawn(shared: &Arc<Shared>, interval: Duration) {
    let metrics = &shared.metrics;
    metrics.relays_configured.set(shared.relays.len() as i64);
    for relay in &shared.relays {
        metrics.relay_up.with_label_values(&[&relay.host]).set(1);
    }
    publish(shared);
    for (index, relay) in shared.relays.iter().enumerate() {
        if let Some(url) = relay.health_url.clone() {
            tokio::spawn(check_loop(Arc::clone(shared), index, url, interval));
        }
    }
}

/// Updates the gauge of relays handed out.
fn publish(shared: &Shared) {
    let up = shared
        .relay_up
        .iter()
        .filter(|up| up.load(Ordering::Relaxed))
        .count();
    shared.metrics.relays_healthy.set(up as i64);
}

async fn check_loop(shared: Arc<Shared>, index: usize, url: HealthUrl, interval: Duration) {
    let mut health = Health::default();
    let mut shutdown = shared.shutdown.clone();
    let host = shared.relays[index].host.clone();
    loop {
        let ok = check(&url).await;
        if health.record(ok) {
            if health.is_up() {
                tracing::info!(relay = %host, url = %url.url, "relay is up again");
            } else {
                tracing::warn!(relay = %host, url = %url.url, "relay is down; leaving it out of ICE servers");
            }
        }
        shared.relay_up[index].store(health.is_up(), Ordering::Relaxed);
        shared
            .metrics
            .relay_up
            .with_label_values(&[&host])
            .set(i64::from(health.is_up()));
        publish(&shared);
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = super::state::shutdown(&mut shutdown) => return,
        }
    }
}

/// One `GET` of the health URL; true on 200.
async fn check(url: &HealthUrl) -> bool {
    let attempt = async {
        let host = url.host.trim_start_matches('[').trim_end_matches(']');
        let stream = TcpStream::connect((host, url.port)).await.ok()?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        // The connection future drives the socket; it ends when `sender` is dropped.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let request = Request::get(url.path.as_str())
            .header(HOST, format!("{}:{}", url.host, url.port))
            .body(Empty::<Bytes>::new())
            .ok()?;
        let response = sender.send_request(request).await.ok()?;
        Some(response.status() == StatusCode::OK)
    };
    matches!(
        tokio::time::timeout(CHECK_TIMEOUT, attempt).await,
        Ok(Some(true))
    )
}
