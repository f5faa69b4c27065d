//! A few seconds of every scenario against icegate-relay (debug build), the floor and, when
//! installed, coturn; the signal scenarios against icegate-signal (debug build) and, when
//! installed, Janus: the harness must keep working; no speed is asserted.
#![deny(unsafe_code)]

use icegate_bench::contender::{relay_binary, signal_binary, Kind, ServerSpec};
use icegate_bench::harness::{self, Plan};
use icegate_bench::report::{self, RunInfo, Section};
use icegate_bench::scenario::attack::{Figure, Stat, Transport};
use icegate_bench::scenario::{Metric, Params, Scenario};
use icegate_bench::uclient::{self, UclientParams};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

const COTURN: &str = "/usr/bin/turnserver";
const JANUS: &str = "/usr/bin/janus";

#[test]
fn every_scenario_against_every_contender() {
    let secret = "smoke-secret".to_string();
    let mut contenders = vec![Kind::Icegate, Kind::Floor];
    if Path::new(COTURN).exists() {
        contenders.push(Kind::Coturn);
    }
    if Path::new(JANUS).exists() {
        contenders.push(Kind::Janus);
    }
    let plan = Plan {
        contenders: contenders.clone(),
        scenarios: Scenario::ALL.to_vec(),
        repeat: 1,
        spec: ServerSpec {
            relay_bin: relay_binary("debug").expect("icegate-relay binary"),
            coturn_bin: PathBuf::from(COTURN),
            bench_bin: PathBuf::from(env!("CARGO_BIN_EXE_icegate-bench")),
            signal_bin: signal_binary("debug").expect("icegate-signal binary"),
            janus_bin: PathBuf::from(JANUS),
            listen_ip: Ipv4Addr::LOCALHOST,
            relay_ips: vec![Ipv4Addr::new(127, 0, 0, 2)],
            min_port: 49152,
            max_port: 65535,
            workers: 1,
            cpus: None,
            secret: secret.clone(),
            realm: "smoke.icegate".into(),
        },
        params: Params {
            calls: 20,
            call_pps: 50.0,
            call_secs: 1.0,
            warmup_secs: 0.3,
            blast_allocs: 2,
            blast_step_secs: 0.3,
            blast_start_pps: 2_000.0,
            blast_factor: 1.5,
            blast_max_steps: 3,
            blast_refine: 1,
            latency_pps: 1_000.0,
            alloc_secs: 0.5,
            alloc_concurrency: 4,
            idle: 200,
            idle_hold_secs: 0.2,
            setup_window: 64,
            tick: Duration::from_micros(200),
            // The attack's quick mode: half a second of baseline, a second of attack, a few
            // stalled connections.
            attack_baseline_secs: 0.5,
            attack_secs: 1.0,
            attack_slowloris: 20,
            attack_clients: 1,
            signal_sessions: 64,
            signal_window: 16,
            signal_prehello: 16,
            fanout_rooms: 1,
            fanout_secs: 0.5,
            secret: secret.clone(),
        },
        uclient: uclient::available().then_some(UclientParams {
            clients: 2,
            messages: 20,
            cpus: None,
            secret,
        }),
        generator_cpu: None,
    };
    let outcome = harness::run(&plan, |line| eprintln!("{line}")).expect("harness runs");
    assert!(outcome.errors.is_empty(), "errors: {:#?}", outcome.errors);

    let figure = |s: Scenario, k: Kind, m: Metric| -> f64 {
        outcome
            .records
            .iter()
            .find(|r| r.section == Section::Scenario(s) && r.kind == k)
            .and_then(|r| r.metrics.iter().find(|(x, _)| *x == m))
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {m:?} for {k:?} in {s:?}"))
    };
    for &k in &contenders {
        if k == Kind::Janus || k == Kind::Icegate {
            for s in [Scenario::Signal, Scenario::SignalPlain] {
                assert_eq!(figure(s, k, Metric::Sessions), 64.0, "{k:?} {s:?}");
                assert!(figure(s, k, Metric::SessionsPerSec) > 0.0, "{k:?} {s:?}");
                assert!(!figure(s, k, Metric::BytesPerSession).is_nan());
                assert!(!figure(s, k, Metric::BytesPerUnauthenticated).is_nan());
            }
        }
        if k == Kind::Icegate {
            assert!(
                figure(Scenario::Signal, k, Metric::FanoutPerSec) > 0.0,
                "no fan-out"
            );
            // Two instances over Redis: every session set up, and the rooms, whose members
            // are on both instances, deliver.
            let cluster = Scenario::SignalCluster;
            assert_eq!(figure(cluster, k, Metric::Sessions), 64.0);
            assert!(!figure(cluster, k, Metric::BytesPerSession).is_nan());
            assert!(
                figure(cluster, k, Metric::FanoutRemotePerSec) > 0.0,
                "no fan-out across instances"
            );
        }
        if k == Kind::Janus {
            continue;
        }
        assert!(
            figure(Scenario::Calls, k, Metric::RelayedPps) > 0.0,
            "{k:?} relayed nothing"
        );
        assert!(!figure(Scenario::Calls, k, Metric::LossPct).is_nan());
        assert!(!figure(Scenario::Calls, k, Metric::RttP99).is_nan());
        assert!(figure(Scenario::Calls, k, Metric::ServerCpu) >= 0.0);
        assert!(
            figure(Scenario::Blast, k, Metric::SustainedPps) > 0.0,
            "{k:?} blast"
        );
        assert!(figure(Scenario::Allocations, k, Metric::AllocsPerSec) > 0.0);
        assert_eq!(
            figure(Scenario::Idle, k, Metric::Allocations),
            200.0,
            "{k:?} idle"
        );
        assert!(!figure(Scenario::Idle, k, Metric::BytesPerAlloc).is_nan());
        if k == Kind::Floor {
            continue;
        }
        for transport in [Transport::Udp, Transport::Tcp] {
            let baseline = Metric::Attack(Figure {
                transport,
                stat: Stat::Completed,
                under_attack: false,
            });
            assert!(
                figure(Scenario::Attack, k, baseline) > 0.0,
                "{k:?} {transport:?} baseline"
            );
        }
        assert!(figure(Scenario::Attack, k, Metric::FloodPps) > 0.0);
    }
    if plan.uclient.is_some() && contenders.contains(&Kind::Coturn) {
        assert!(outcome
            .records
            .iter()
            .any(|r| r.section == Section::Uclient));
    }

    let text = report::render(
        &outcome.records,
        &RunInfo {
            machine: report::machine(),
            command: "smoke".into(),
            repeats: 1,
            ..RunInfo::default()
        },
    );
    for s in Scenario::ALL {
        assert!(
            text.contains(&format!("### Scenario `{}`", s.name())),
            "{text}"
        );
    }
    assert!(text.contains("icegate/floor"), "{text}");
    if contenders.contains(&Kind::Janus) {
        assert!(text.contains("icegate/janus"), "{text}");
    }
    assert!(text.contains("| relayed packets/s |"), "{text}");
    assert!(text.contains("CPU model:"), "{text}");
}
