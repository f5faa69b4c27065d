//! The Prometheus view of the relay: sums the workers' counter shards at scrape time.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use icegate_relay_proto::metrics::{
    result_label, AuthFailure, Counters, Direction, DropReason, MethodLabel, PeerConnection,
    PeerDenials, QuotaKind, RESULTS,
};
use icegate_relay_proto::peer_filter::DenyReason;
use icegate_relay_proto::{Family, Ledger, Transport};
use prometheus::core::{Collector, Desc};

use crate::stats::{DtlsHandshake, RuntimeCounters};
use crate::stream_admission::{Refusal, SharedAdmission};
use crate::stream_deadline::Expiry;
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};

/// Collects every worker's shard into Prometheus metrics.
pub struct RelayCollector {
    shards: Vec<Arc<Counters>>,
    denials: Vec<Arc<PeerDenials>>,
    ledger: Arc<Ledger>,
    stats: Vec<Arc<RuntimeCounters>>,
    vecs: Mutex<Vecs>,
    descs: Vec<Desc>,
    /// The admission of TCP/TLS connections, and their descriptor budget.
    streams: Option<(Arc<SharedAdmission>, u64)>,
    stream_vecs: StreamVecs,
}

/// The metrics of TCP/TLS connection limits.
struct StreamVecs {
    refused: IntCounterVec,
    evicted: IntCounter,
    timeouts: IntCounterVec,
    budget: IntGauge,
}

impl StreamVecs {
    fn new() -> Self {
        Self {
            refused: counter(
                "icegate_relay_stream_refused_total",
                "TCP/TLS connections refused at accept, by reason (per_ip, total, descriptors).",
                &["reason"],
            ),
            evicted: plain_counter(
                "icegate_relay_stream_evicted_total",
                "TCP/TLS connections without an allocation closed to make room for a new one \
                 while the relay was full (max-connections or the descriptor budget).",
            ),
            timeouts: counter(
                "icegate_relay_stream_timeouts_total",
                "TCP/TLS connections closed by a deadline: a partial frame that did not \
                 complete (frame), or no complete message for too long (idle).",
                &["reason"],
            ),
            budget: gauge(
                "icegate_relay_stream_connection_budget",
                "TCP/TLS connections the file descriptors left after relay sockets allow.",
            ),
        }
    }

    fn collectors(&self) -> [&dyn Collector; 4] {
        [&self.refused, &self.evicted, &self.timeouts, &self.budget]
    }
}

struct Vecs {
    allocations_active: IntGaugeVec,
    allocations_total: IntCounterVec,
    requests: IntCounterVec,
    auth_failures: IntCounterVec,
    quota_rejections: IntCounterVec,
    peer_denied: IntCounterVec,
    packets: IntCounterVec,
    bytes: IntCounterVec,
    dropped: IntCounterVec,
    peer_connections: IntCounterVec,
    malformed: IntCounter,
    rate_limited: IntCounter,
    ports_in_use: IntGauge,
    ports_capacity: IntGauge,
    send_failures: IntCounter,
    streams_open: IntGauge,
    tls_handshake_failures: IntCounter,
    dtls_handshakes: IntCounterVec,
    dtls_sessions: IntGauge,
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("metric definitions are static")
}

fn plain_counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect("metric definitions are static")
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("metric definitions are static")
}

impl RelayCollector {
    /// A collector over the given shards.
    pub fn new(
        shards: Vec<Arc<Counters>>,
        denials: Vec<Arc<PeerDenials>>,
        stats: Vec<Arc<RuntimeCounters>>,
        ledger: Arc<Ledger>,
    ) -> Self {
        let vecs = Vecs {
            allocations_active: IntGaugeVec::new(
                Opts::new("icegate_relay_allocations_active", "Allocations now open."),
                &["transport", "family"],
            )
            .expect("static"),
            allocations_total: counter(
                "icegate_relay_allocations_total",
                "Allocations ever made.",
                &["transport", "family"],
            ),
            requests: counter(
                "icegate_relay_requests_total",
                "STUN/TURN requests answered, by method and result.",
                &["method", "result"],
            ),
            auth_failures: counter(
                "icegate_relay_auth_failures_total",
                "Requests that failed authentication, by reason.",
                &["reason"],
            ),
            quota_rejections: counter(
                "icegate_relay_quota_rejections_total",
                "Allocations refused by a quota or an exhausted port range.",
                &["quota"],
            ),
            peer_denied: counter(
                "icegate_relay_peer_denied_total",
                "Permissions refused (403) by the peer filter, by reason.",
                &["reason"],
            ),
            packets: counter(
                "icegate_relay_packets_total",
                "Relayed packets.",
                &["direction"],
            ),
            bytes: counter(
                "icegate_relay_bytes_total",
                "Relayed payload bytes.",
                &["direction"],
            ),
            dropped: counter(
                "icegate_relay_dropped_packets_total",
                "Relayed packets dropped, by reason.",
                &["reason"],
            ),
            peer_connections: counter(
                "icegate_relay_peer_connections_total",
                "TCP peer connections of TCP allocations (RFC 6062), by direction and whether \
                 they were made or refused/failed.",
                &["direction", "result"],
            ),
            malformed: plain_counter(
                "icegate_relay_malformed_packets_total",
                "Packets from clients that could not be parsed.",
            ),
            rate_limited: plain_counter(
                "icegate_relay_rate_limited_total",
                "Unauthenticated requests dropped by the per-source rate limit.",
            ),
            ports_in_use: gauge("icegate_relay_ports_in_use", "Relay ports in use."),
            ports_capacity: gauge(
                "icegate_relay_ports_capacity",
                "Relay ports in the configured range(s).",
            ),
            send_failures: plain_counter(
                "icegate_relay_send_failures_total",
                "Packets the kernel refused or a slow TCP/TLS client had no room for.",
            ),
            streams_open: gauge(
                "icegate_relay_stream_connections",
                "TCP and TLS client connections now open.",
            ),
            tls_handshake_failures: plain_counter(
                "icegate_relay_tls_handshake_failures_total",
                "TLS handshakes that failed or timed out.",
            ),
            dtls_handshakes: counter(
                "icegate_relay_dtls_handshakes_total",
                "DTLS ClientHellos and handshakes, by result: cookie_sent (answered statelessly), \
                 started, completed, failed, timed_out.",
                &["result"],
            ),
            dtls_sessions: gauge(
                "icegate_relay_dtls_sessions",
                "DTLS client sessions now open, handshaking or established.",
            ),
        };
        let mut descs = Vec::new();
        let collectors: [&dyn Collector; 19] = [
            &vecs.peer_connections,
            &vecs.allocations_active,
            &vecs.allocations_total,
            &vecs.requests,
            &vecs.auth_failures,
            &vecs.quota_rejections,
            &vecs.peer_denied,
            &vecs.packets,
            &vecs.bytes,
            &vecs.dropped,
            &vecs.malformed,
            &vecs.rate_limited,
            &vecs.ports_in_use,
            &vecs.ports_capacity,
            &vecs.send_failures,
            &vecs.streams_open,
            &vecs.tls_handshake_failures,
            &vecs.dtls_handshakes,
            &vecs.dtls_sessions,
        ];
        let stream_vecs = StreamVecs::new();
        for c in collectors.into_iter().chain(stream_vecs.collectors()) {
            descs.extend(c.desc().into_iter().cloned());
        }
        Self {
            shards,
            denials,
            ledger,
            stats,
            vecs: Mutex::new(vecs),
            descs,
            streams: None,
            stream_vecs,
        }
    }

    /// Also reports what `admission` refused, and the descriptor `budget` of connections.
    pub fn with_streams(mut self, admission: Arc<SharedAdmission>, budget: u64) -> Self {
        self.streams = Some((admission, budget));
        self
    }

    fn sum(&self, f: impl Fn(&Counters) -> u64) -> u64 {
        self.shards.iter().map(|s| f(s)).sum()
    }
}

impl Collector for RelayCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let v = self.vecs.lock().unwrap_or_else(|e| e.into_inner());
        let load = Counters::get;
        for t in Transport::ALL {
            for f in Family::ALL {
                let (ti, fi) = (t as usize, f as usize);
                let active: i64 = self
                    .shards
                    .iter()
                    .map(|s| {
                        s.allocations_active[ti][fi].load(std::sync::atomic::Ordering::Relaxed)
                    })
                    .sum();
                v.allocations_active
                    .with_label_values(&[t.as_str(), f.as_str()])
                    .set(active);
                set_counter(
                    &v.allocations_total,
                    &[t.as_str(), f.as_str()],
                    self.sum(|s| load(&s.allocations_total[ti][fi])),
                );
            }
        }
        for m in MethodLabel::ALL {
            for (ri, &code) in RESULTS.iter().enumerate() {
                let n = self.sum(|s| load(&s.requests[m as usize][ri]));
                if n > 0 {
                    set_counter(&v.requests, &[m.as_str(), &result_label(code)], n);
                }
            }
        }
        for r in AuthFailure::ALL {
            set_counter(
                &v.auth_failures,
                &[r.as_str()],
                self.sum(|s| load(&s.auth_failures[r as usize])),
            );
        }
        for q in QuotaKind::ALL {
            set_counter(
                &v.quota_rejections,
                &[q.as_str()],
                self.sum(|s| load(&s.quota_rejections[q as usize])),
            );
        }
        for r in DenyReason::ALL {
            let n: u64 = self
                .denials
                .iter()
                .flat_map(|d| d.snapshot())
                .filter(|(reason, _)| *reason == r.as_str())
                .map(|(_, n)| n)
                .sum();
            set_counter(&v.peer_denied, &[r.as_str()], n);
        }
        for d in Direction::ALL {
            set_counter(
                &v.packets,
                &[d.as_str()],
                self.sum(|s| load(&s.packets[d as usize])),
            );
            set_counter(
                &v.bytes,
                &[d.as_str()],
                self.sum(|s| load(&s.bytes[d as usize])),
            );
        }
        for r in DropReason::ALL {
            set_counter(
                &v.dropped,
                &[r.as_str()],
                self.sum(|s| load(&s.dropped[r as usize])),
            );
        }
        for k in PeerConnection::ALL {
            set_counter(
                &v.peer_connections,
                &[k.as_str(), "made"],
                self.sum(|s| load(&s.peer_connections[k as usize])),
            );
            set_counter(
                &v.peer_connections,
                &[k.as_str(), "failed"],
                self.sum(|s| load(&s.peer_connections_failed[k as usize])),
            );
        }
        advance(&v.malformed, self.sum(|s| load(&s.malformed)));
        advance(&v.rate_limited, self.sum(|s| load(&s.rate_limited)));
        let (used, cap) = self.ledger.port_usage();
        v.ports_in_use.set(used as i64);
        v.ports_capacity.set(cap as i64);
        let stat = |f: fn(&RuntimeCounters) -> u64| self.stats.iter().map(|s| f(s)).sum::<u64>();
        advance(
            &v.send_failures,
            stat(|s| s.send_failures.load(Ordering::Relaxed)),
        );
        advance(
            &v.tls_handshake_failures,
            stat(|s| s.tls_handshake_failures.load(Ordering::Relaxed)),
        );
        v.streams_open.set(
            self.stats
                .iter()
                .map(|s| s.streams_open.load(Ordering::Relaxed))
                .sum(),
        );

        for r in DtlsHandshake::ALL {
            set_counter(
                &v.dtls_handshakes,
                &[r.as_str()],
                self.stats
                    .iter()
                    .map(|s| s.dtls_handshakes[r as usize].load(Ordering::Relaxed))
                    .sum(),
            );
        }
        v.dtls_sessions.set(
            self.stats
                .iter()
                .map(|s| s.dtls_sessions.load(Ordering::Relaxed))
                .sum(),
        );

        let collectors: [&dyn Collector; 19] = [
            &v.peer_connections,
            &v.allocations_active,
            &v.allocations_total,
            &v.requests,
            &v.auth_failures,
            &v.quota_rejections,
            &v.peer_denied,
            &v.packets,
            &v.bytes,
            &v.dropped,
            &v.malformed,
            &v.rate_limited,
            &v.ports_in_use,
            &v.ports_capacity,
            &v.send_failures,
            &v.streams_open,
            &v.tls_handshake_failures,
            &v.dtls_handshakes,
            &v.dtls_sessions,
        ];
        let streams = &self.stream_vecs;
        if let Some((admission, budget)) = &self.streams {
            let refused = admission.refused();
            for r in Refusal::ALL {
                set_counter(&streams.refused, &[r.as_str()], refused[r as usize]);
            }
            advance(&streams.evicted, admission.evicted());
            streams
                .budget
                .set(i64::try_from(*budget).unwrap_or(i64::MAX));
        }
        for e in Expiry::ALL {
            set_counter(
                &streams.timeouts,
                &[e.as_str()],
                self.stats
                    .iter()
                    .map(|s| s.stream_timeouts[e as usize].load(Ordering::Relaxed))
                    .sum(),
            );
        }
        collectors
            .into_iter()
            .chain(streams.collectors())
            .flat_map(|c| c.collect())
            .collect()
    }
}

/// Counters only go up; the shards hold the truth, so set the exported value to their sum.
fn set_counter(vec: &IntCounterVec, labels: &[&str], total: u64) {
    advance(&vec.with_label_values(labels), total);
}

/// Moves a counter up to `total`, the sum of the shards.
fn advance(counter: &IntCounter, total: u64) {
    let current = counter.get();
    if total > current {
        counter.inc_by(total - current);
    }
}
