use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// What the operator asked for by signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlSignal {
    /// SIGHUP: re-read configuration and certificates.
    Reload,
    /// SIGTERM or SIGINT: shut down gracefully.
    Terminate,
}

/// Starts listening for SIGHUP, SIGTERM and SIGINT; must be called inside a tokio runtime.
///
/// The handlers are installed before this returns, so a signal sent afterwards is never lost
/// to the default action. Once installed they stay for the life of the process: a second
/// SIGTERM no longer kills it, so a binary that wants that must exit on its own.
/// The receiver ends when the forwarding task stops, i.e. when the runtime shuts down.
pub fn control_signals() -> std::io::Result<mpsc::Receiver<ControlSignal>> {
    // `signal()` panics outside a runtime; an error is kinder to a caller's `main`.
    tokio::runtime::Handle::try_current().map_err(std::io::Error::other)?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;

    // Signals of one kind that arrive before they are received coalesce in tokio anyway,
    // so a small buffer loses nothing that matters.
    let (sender, receiver) = mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            let received = tokio::select! {
                Some(()) = hangup.recv() => ControlSignal::Reload,
                Some(()) = terminate.recv() => ControlSignal::Terminate,
                Some(()) = interrupt.recv() => ControlSignal::Terminate,
                else => break,
            };
            if sender.send(received).await.is_err() {
                // Nobody listens any more.
                break;
            }
        }
    });
    Ok(receiver)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    use std::time::Duration;

    async fn next(receiver: &mut mpsc::Receiver<ControlSignal>) -> ControlSignal {
        tokio::time::timeout(Duration::from_secs(5), receiver.recv())
            .await
            .expect("signal delivered within 5 s")
            .expect("channel open")
    }

    #[tokio::test]
    async fn signals_map_to_control_signals() {
        let mut receiver = control_signals().unwrap();
        // This is the only test that installs signal handlers, so sending these to the whole
        // test process is safe: tokio's handlers catch them.
        kill(Pid::this(), Signal::SIGHUP).unwrap();
        assert_eq!(next(&mut receiver).await, ControlSignal::Reload);
        kill(Pid::this(), Signal::SIGTERM).unwrap();
        assert_eq!(next(&mut receiver).await, ControlSignal::Terminate);
        kill(Pid::this(), Signal::SIGINT).unwrap();
        assert_eq!(next(&mut receiver).await, ControlSignal::Terminate);
    }

    #[test]
    fn outside_a_runtime_is_an_error_not_a_panic() {
        assert!(control_signals().is_err());
    }
}
