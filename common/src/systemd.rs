//! The protocol is `sd_notify(3)`, for `Type=notify` units: a daemon says `READY=1` once every
//! listener is bound, `RELOADING=1` … `READY=1` around a SIGHUP reload, `STOPPING=1` when it
//! starts to shut down, a one-line `STATUS=` for `systemctl status`, and `WATCHDOG=1` at half
//! of `$WATCHDOG_USEC` while it is healthy.
//!
//! Everything here is a no-op when `$NOTIFY_SOCKET` is unset, i.e. outside systemd. A
//! notification that cannot be sent is logged, not returned: the daemon should go on serving,
//! and systemd, missing a `READY=1` or a watchdog ping, acts on it as it is configured to.

use std::time::Duration;

use sd_notify::NotifyState;

/// The shortest watchdog ping period, so that a tiny `$WATCHDOG_USEC` cannot spin a task.
const MIN_PING_PERIOD: Duration = Duration::from_millis(1);

/// Tells systemd that the service is up, with every listener bound, and what it is doing.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd that a reload has begun; send [`ready`] when it is done.
pub fn reloading() {
    // systemd 253 and later match RELOADING=1 to the reload request by this timestamp (and
    // require it for Type=notify-reload); older versions ignore the field.
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading"),
        ]),
        Err(error) => {
            tracing::warn!(%error, "cannot read CLOCK_MONOTONIC for systemd");
            send(&[NotifyState::Reloading, NotifyState::Status("reloading")]);
        }
    }
}

/// Tells systemd that the service is shutting down, and how.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// Sets the one-line status that `systemctl status` shows.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// How often to ping the watchdog: half of `$WATCHDOG_USEC`, or `None` when systemd does not
/// watch this process (no `$NOTIFY_SOCKET`, no `$WATCHDOG_USEC`, or another `$WATCHDOG_PID`).
pub fn watchdog_period() -> Option<Duration> {
    std::env::var_os("NOTIFY_SOCKET")?;
    let timeout = sd_notify::watchdog_enabled().filter(|t| !t.is_zero())?;
    // Half the timeout, as sd_watchdog_enabled(3) advises: one late ping is not yet fatal.
    Some((timeout / 2).max(MIN_PING_PERIOD))
}

/// Pings the watchdog every [`watchdog_period`] from a task on the current tokio runtime, as
/// long as `healthy()` says so; does nothing when the watchdog is off. Must be called inside a
/// runtime.
///
/// The pings prove that this runtime still runs tasks; `healthy` lets the caller add what
/// else must be alive. Once it returns `false` the pings stop and systemd, after
/// `WatchdogSec`, kills and (with `Restart=`) restarts the service.
pub fn spawn_watchdog(mut healthy: impl FnMut() -> bool + Send + 'static) {
    let Some(period) = watchdog_period() else {
        return;
    };
    tracing::info!(?period, "systemd watchdog on");
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        // After a stall, ping once and go on from now rather than in a burst that would hide it.
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if !healthy() {
                tracing::error!("unhealthy: no more systemd watchdog pings");
                return;
            }
            send(&[NotifyState::Watchdog]);
        }
    });
}

/// Sends `status()` as `STATUS=` every `period` when it changed, from a task on the current
/// tokio runtime; does nothing outside systemd. Must be called inside a runtime.
pub fn spawn_status(period: Duration, mut status: impl FnMut() -> String + Send + 'static) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = String::new();
        loop {
            ticks.tick().await;
            let now = status();
            if now != last {
                send(&[NotifyState::Status(&now)]);
                last = now;
            }
        }
    });
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(%error, "cannot notify systemd");
    }
}
