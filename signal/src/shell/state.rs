//! What every connection task shares: configuration, keys, relay health, the hub's inbox,
//! the per-address connection counter and the metrics.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use icegate_common::clock::unix_now;
use icegate_signal_proto::auth::AuthError;
use icegate_signal_proto::ice::{self, IceServers, Relay};
use icegate_signal_proto::limits::{ConnectionCounter, Limits};
use icegate_signal_proto::origin::OriginPolicy;
use icegate_signal_proto::protocol::UserId;
use tokio::sync::{mpsc, watch};

use super::config::Keys;
use super::inbox::HubInput;
use super::metrics::Metrics;

/// Who a client turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id: a token's `sub` or an anonymous client's chosen name.
    pub user: UserId,
    /// Whether it came without a token.
    pub anonymous: bool,
}

/// The state shared by all tasks.
pub struct Shared {
    /// Whether clients may connect without a token.
    pub anonymous: bool,
    keys: RwLock<Arc<Keys>>,
    origins: RwLock<Arc<OriginPolicy>>,
    /// The relays, in configuration order.
    pub relays: Vec<Relay>,
    /// Whether each relay is handed out, set by the health checks.
    pub relay_up: Vec<AtomicBool>,
    /// TURN credential lifetime, seconds.
    pub credential_ttl: u64,
    /// Per-connection limits.
    pub limits: Limits,
    /// The switchboard task's inbox (the hub's requests).
    pub hub: mpsc::Sender<HubInput>,
    connections: Mutex<ConnectionCounter>,
    /// Every metric.
    pub metrics: Metrics,
    /// Becomes `true` when the server shuts down.
    pub shutdown: watch::Receiver<bool>,
}

impl Shared {
    /// Assembles the shared state.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        anonymous: bool,
        keys: Keys,
        origins: OriginPolicy,
        relays: Vec<Relay>,
        credential_ttl: u64,
        limits: Limits,
        hub: mpsc::Sender<HubInput>,
        metrics: Metrics,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let relay_up = relays.iter().map(|_| AtomicBool::new(true)).collect();
        Shared {
            anonymous,
            keys: RwLock::new(Arc::new(keys)),
            origins: RwLock::new(Arc::new(origins)),
            relays,
            relay_up,
            credential_ttl,
            limits,
            hub,
            connections: Mutex::new(ConnectionCounter::default()),
            metrics,
            shutdown,
        }
    }

    /// The keys in force now.
    pub fn keys(&self) -> Arc<Keys> {
        // The guarded value is one Arc, which a panicking writer cannot leave half-set.
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the keys (SIGHUP); connections already authenticated stay.
    pub fn set_keys(&self, keys: Keys) {
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
    }

    /// The web origins allowed now.
    pub fn origins(&self) -> Arc<OriginPolicy> {
        Arc::clone(&self.origins.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the allowed origins (SIGHUP); connections already open stay.
    pub fn set_origins(&self, origins: OriginPolicy) {
        *self.origins.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(origins);
    }

    /// Authenticates with a token, or, in anonymous mode and without a token, a chosen name.
    pub fn authenticate(
        &self,
        token: Option<&str>,
        name: Option<UserId>,
    ) -> Result<Identity, AuthError> {
        let keys = self.keys();
        match (token, name) {
            (Some(token), _) if keys.auth.is_configured() || !self.anonymous => {
                keys.auth.verify(token, unix_now()).map(|user| Identity {
                    user,
                    anonymous: false,
                })
            }
            (_, Some(name)) if self.anonymous => Ok(Identity {
                user: name,
                anonymous: true,
            }),
            _ => Err(AuthError::Missing),
        }
    }

    /// ICE servers with fresh credentials for `turn_user`; `via` labels the metric.
    pub fn ice_servers(&self, turn_user: &str, via: &str) -> IceServers {
        let keys = self.keys();
        let servers = ice::ice_servers(
            &self.relays,
            |index| self.relay_up[index].load(Ordering::Relaxed),
            keys.turn_secret.as_ref(),
            turn_user,
            unix_now(),
            self.credential_ttl,
        );
        if servers.ice_servers.iter().any(|s| s.username.is_some()) {
            self.metrics.ice_credentials.with_label_values(&[via]).inc();
        }
        servers
    }

    /// Counts a connection from `ip`; `None` when the address has too many.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admission> {
        let admitted = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .try_acquire(ip, self.limits.max_connections_per_ip);
        admitted.then(|| Admission {
            shared: Arc::clone(self),
            ip,
        })
    }
}

/// A counted connection; dropping it releases the count.
pub struct Admission {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.shared
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .release(self.ip);
    }
}

/// Completes once the server shuts down (or the sender is gone).
///
/// A function of its own because `wait_for`'s guard is not `Send`: it must be dropped
/// before the future it is in is held across an `await` in a spawned task.
pub async fn shutdown(receiver: &mut watch::Receiver<bool>) {
    let _ = receiver.wait_for(|stop| *stop).await;
}
