//! Polls each relay's `/readyz` and publishes whether it is up, so that ICE server lists
//! leave out relays that are down (or draining, which their `/readyz` also reports). What a
//! check result means (the start-up grace period, failures in a row) is decided by
//! [`Health`]; this module reads the clock and does the HTTP.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::header::HOST;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use icegate_signal_proto::ice::{Health, HealthChange, HealthUrl};
use tokio::net::TcpStream;

use super::state::Shared;

/// A check that takes longer than this counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// How often and how patiently relays are checked.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Between two checks of a relay.
    pub interval: Duration,
    /// How long a relay that has never passed a check stays handed out, from the start.
    pub grace: Duration,
}

/// Starts one checking task per relay that has a health URL.
pub fn spawn(shared: &Arc<Shared>, timing: Timing) {
    let start = Instant::now();
    let metrics = &shared.metrics;
    metrics.relays_configured.set(shared.relays.len() as i64);
    for relay in &shared.relays {
        let host: &[&str] = &[&relay.host];
        metrics.relay_up.with_label_values(host).set(1);
        let unconfirmed = relay.health_url.is_some();
        metrics
            .relay_unconfirmed
            .with_label_values(host)
            .set(i64::from(unconfirmed));
    }
    publish(shared);
    for (index, relay) in shared.relays.iter().enumerate() {
        if let Some(url) = relay.health_url.clone() {
            let health = Health::new(start, timing.grace);
            tokio::spawn(check_loop(Arc::clone(shared), index, url, timing, health));
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

async fn check_loop(
    shared: Arc<Shared>,
    index: usize,
    url: HealthUrl,
    timing: Timing,
    mut health: Health,
) {
    let mut shutdown = shared.shutdown.clone();
    let host = shared.relays[index].host.clone();
    loop {
        let ok = check(&url).await;
        match health.record(ok, Instant::now()) {
            Some(HealthChange::Answered) => {
                tracing::info!(relay = %host, url = %url.url, "relay answered its first health check");
            }
            Some(HealthChange::NeverAnswered { failures }) => tracing::warn!(
                relay = %host,
                url = %url.url,
                failures,
                grace_secs = timing.grace.as_secs(),
                "relay has not answered a health check within the start-up grace period; leaving it out of ICE servers"
            ),
            Some(HealthChange::Down) => {
                tracing::warn!(relay = %host, url = %url.url, "relay is down; leaving it out of ICE servers");
            }
            Some(HealthChange::Up) => {
                tracing::info!(relay = %host, url = %url.url, "relay is up again");
            }
            None => {}
        }
        shared.relay_up[index].store(health.is_up(), Ordering::Relaxed);
        let labels: &[&str] = &[&host];
        let metrics = &shared.metrics;
        metrics
            .relay_up
            .with_label_values(labels)
            .set(i64::from(health.is_up()));
        metrics
            .relay_unconfirmed
            .with_label_values(labels)
            .set(i64::from(health.is_unconfirmed()));
        publish(&shared);
        tokio::select! {
            () = tokio::time::sleep(timing.interval) => {}
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
