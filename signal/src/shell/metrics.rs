//! Every Prometheus metric of the signal server, defined once.

use icegate_signal_proto::hub::CallEvent;
use icegate_signal_proto::protocol::{HangupReason, ServerMessage, CLIENT_KINDS};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// The label for client frames that are not a valid message.
pub const INVALID_KIND: &str = "invalid";

/// The signal server's metrics, registered in `registry`.
#[derive(Clone)]
pub struct Metrics {
    /// The registry served at `/metrics`.
    pub registry: Registry,
    /// WebSocket connections open now.
    pub connections_active: IntGauge,
    /// WebSocket connections ever accepted.
    pub connections_total: IntCounter,
    /// WebSocket upgrades refused, by reason.
    pub connections_refused: IntCounterVec,
    /// Authenticated sessions open now.
    pub sessions_active: IntGauge,
    /// Messages, by direction (`in`, `out`) and type.
    pub messages: IntCounterVec,
    /// `error` messages sent, by code.
    pub errors: IntCounterVec,
    /// Connections closed by the server, by close code.
    pub closes: IntCounterVec,
    /// TURN credentials issued, by where (`http`, `ws`).
    pub ice_credentials: IntCounterVec,
    /// Calls started.
    pub calls_started: IntCounter,
    /// Calls answered.
    pub calls_answered: IntCounter,
    /// Calls ended, by reason.
    pub calls_ended: IntCounterVec,
    /// Relays handed out now (up, unconfirmed in the start-up grace period, or not
    /// health-checked).
    pub relays_healthy: IntGauge,
    /// Relays configured.
    pub relays_configured: IntGauge,
    /// Per relay host: 1 while handed out.
    pub relay_up: IntGaugeVec,
    /// Per relay host: 1 while handed out in its start-up grace period, no check passed yet.
    pub relay_unconfirmed: IntGaugeVec,
    /// 1 when the Asterisk gateway's SIP registration is in place.
    pub sip_registered: IntGauge,
    /// 1 when an Asterisk gateway is configured (`asterisk-*` settings), else 0.
    pub asterisk_configured: IntGauge,
    /// 1 when the Asterisk gateway's ARI events connection is up.
    pub ari_connected: IntGauge,
    /// Calls with Asterisk, by result (answered, or the hangup reason of a failed one).
    pub pbx_calls: IntCounterVec,
    /// Calls the Asterisk gateway tracks now.
    pub pbx_calls_active: IntGauge,
    /// 1 when `redis-url` is set (several processes serve as one), else 0.
    pub cluster_configured: IntGauge,
    /// 1 while the cluster bus (Redis) is connected; 0 while it is not, or without one.
    pub redis_connected: IntGauge,
    /// Other instances of the cluster known now.
    pub cluster_instances: IntGauge,
    /// Cluster bus messages, by direction (`in`, `out`; `dropped` when the outbox was full
    /// or the bus down, `invalid` for unusable ones received).
    pub bus_messages: IntCounterVec,
    /// ARI events the gateway handled, by type (`unreadable` for malformed frames).
    pub ari_events: IntCounterVec,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let metric = IntCounter::with_opts(opts(name, help)).expect("static definition");
            registry
                .register(Box::new(metric.clone()))
                .expect("registered once");
            metric
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(opts(name, help), labels).expect("static definition");
            registry
                .register(Box::new(metric.clone()))
                .expect("registered once");
            metric
        };
        let gauge = |name: &str, help: &str| {
            let metric = IntGauge::with_opts(opts(name, help)).expect("static definition");
            registry
                .register(Box::new(metric.clone()))
                .expect("registered once");
            metric
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntGaugeVec::new(opts(name, help), labels).expect("static definition");
            registry
                .register(Box::new(metric.clone()))
                .expect("registered once");
            metric
        };
        let metrics = Metrics {
            connections_active: gauge(
                "icegate_signal_connections_active",
                "WebSocket connections open now.",
            ),
            connections_total: counter(
                "icegate_signal_connections_total",
                "WebSocket connections accepted.",
            ),
            connections_refused: counter_vec(
                "icegate_signal_connections_refused_total",
                "WebSocket upgrades refused, by reason.",
                &["reason"],
            ),
            sessions_active: gauge(
                "icegate_signal_sessions_active",
                "Authenticated sessions open now.",
            ),
            messages: counter_vec(
                "icegate_signal_messages_total",
                "Signaling messages, by direction and type.",
                &["direction", "type"],
            ),
            errors: counter_vec(
                "icegate_signal_errors_total",
                "Error messages sent to clients, by code.",
                &["code"],
            ),
            closes: counter_vec(
                "icegate_signal_closes_total",
                "Connections closed by the server, by WebSocket close code.",
                &["code"],
            ),
            ice_credentials: counter_vec(
                "icegate_signal_ice_credentials_issued_total",
                "TURN credentials issued, by endpoint.",
                &["via"],
            ),
            calls_started: counter("icegate_signal_calls_started_total", "Calls started."),
            calls_answered: counter("icegate_signal_calls_answered_total", "Calls answered."),
            calls_ended: counter_vec(
                "icegate_signal_calls_ended_total",
                "Calls ended, by reason.",
                &["reason"],
            ),
            relays_healthy: gauge(
                "icegate_signal_relays_healthy",
                "Relays handed out now: up, unconfirmed within the start-up grace period, or not health-checked.",
            ),
            relays_configured: gauge("icegate_signal_relays_configured", "Relays configured."),
            relay_up: gauge_vec(
                "icegate_signal_relay_up",
                "1 while the relay is handed out, 0 while its health checks say it is down.",
                &["relay"],
            ),
            relay_unconfirmed: gauge_vec(
                "icegate_signal_relay_unconfirmed",
                "1 while the relay is handed out in its start-up grace period, before any health check of it has passed.",
                &["relay"],
            ),
            asterisk_configured: gauge(
                "icegate_signal_asterisk_configured",
                "1 when an Asterisk gateway is configured: then the two gauges below should be 1.",
            ),
            sip_registered: gauge(
                "icegate_signal_asterisk_sip_registered",
                "1 when the SIP registration with Asterisk is in place.",
            ),
            ari_connected: gauge(
                "icegate_signal_asterisk_ari_connected",
                "1 when the ARI events WebSocket to Asterisk is up.",
            ),
            pbx_calls: counter_vec(
                "icegate_signal_asterisk_calls_total",
                "Calls with Asterisk, by result: answered or why they failed.",
                &["result"],
            ),
            pbx_calls_active: gauge(
                "icegate_signal_asterisk_calls_active",
                "Calls the Asterisk gateway tracks now.",
            ),
            cluster_configured: gauge(
                "icegate_signal_cluster_configured",
                "1 when redis-url is set: then icegate_signal_redis_connected should be 1.",
            ),
            redis_connected: gauge(
                "icegate_signal_redis_connected",
                "1 while the cluster bus (Redis, redis-url) is connected; 0 while it is not, or without redis-url.",
            ),
            cluster_instances: gauge(
                "icegate_signal_cluster_instances",
                "Other icegate-signal instances of the cluster known now.",
            ),
            bus_messages: counter_vec(
                "icegate_signal_bus_messages_total",
                "Cluster bus messages, by direction: in, out, dropped (outbox full), invalid (unusable, received).",
                &["direction"],
            ),
            ari_events: counter_vec(
                "icegate_signal_asterisk_ari_events_total",
                "ARI events the gateway handled, by type: the ARI type name, other for types it does not read, unreadable for malformed frames.",
                &["event"],
            ),
            registry,
        };
        // Series that exist from the start read as 0 rather than missing in dashboards.
        for kind in CLIENT_KINDS.iter().chain([&INVALID_KIND]) {
            metrics.messages.with_label_values(&["in", kind]);
        }
        for reason in HangupReason::ALL {
            metrics.calls_ended.with_label_values(&[reason.as_str()]);
        }
        for via in ["http", "ws"] {
            metrics.ice_credentials.with_label_values(&[via]);
        }
        // The two that mean trouble, so a rate over them reads 0 rather than nothing.
        for event in ["unreadable", "other"] {
            metrics.ari_events.with_label_values(&[event]);
        }
        for direction in ["in", "out", "dropped", "invalid"] {
            metrics.bus_messages.with_label_values(&[direction]);
        }
        for reason in ["too_many_connections", "origin"] {
            metrics.connections_refused.with_label_values(&[reason]);
        }
        metrics
    }

    /// Counts a message sent to a client.
    pub fn sent(&self, message: &ServerMessage) {
        self.messages
            .with_label_values(&["out", message.kind()])
            .inc();
        if let ServerMessage::Error { code, .. } = message {
            self.errors.with_label_values(&[code.as_str()]).inc();
        }
    }

    /// Counts a message received from a client.
    pub fn received(&self, kind: &str) {
        self.messages.with_label_values(&["in", kind]).inc();
    }

    /// Counts a close initiated by the server.
    pub fn closed(&self, code: u16) {
        self.closes.with_label_values(&[&code.to_string()]).inc();
    }

    /// Counts a call event from the hub.
    pub fn call(&self, event: CallEvent) {
        match event {
            CallEvent::Started => self.calls_started.inc(),
            CallEvent::Answered => self.calls_answered.inc(),
            CallEvent::Ended(reason) => {
                self.calls_ended.with_label_values(&[reason.as_str()]).inc()
            }
        }
    }
}
