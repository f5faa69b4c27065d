//! The switchboard: the [`Hub`] and the optional Asterisk [`Gateway`] as one sans-IO core, so
//! that one owner drives both. What the hub says to the PBX goes into the gateway, and what
//! the gateway says to the hub goes into the hub, here and synchronously, the way
//! `Gateway::pump` joins the SIP user agent and the ARI controller: no channel between them,
//! so nothing between them can be dropped, delayed or reordered.
//!
//! ```text
//!  browser sessions: open / message / close ─┐                      ┌─► Output::Session (to a browser)
//!  SIP WebSocket: connected / frame / closed ─┤     Switchboard      ├─► Output::Sip (frames)
//!  ARI: connected / event / lost / response ──┤  Hub ◄──route──► Gateway ├─► Output::AriConnect / AriRequest
//!  time: handle_timeout(now), shutdown(now) ──┘   (PbxCall, Send{Pbx},  ├─► Output::Call, PbxResult (metrics)
//!                                                  PbxRequest ⇄ ToHub)  └─► Output::Log
//! ```
//!
//! In a cluster (`redis-url`) the switchboard joins a third core the same way, the
//! [`Cluster`]: the hub's messages for sessions on other instances go into it and come out as
//! bus messages ([`Output::Bus`]); what comes off the bus goes through it into the hub (remote
//! sessions, their requests, lost instances) or out to local sessions; and a local session's
//! request about a call another instance owns goes to that instance instead of the hub. A PBX
//! call for a user connected to another instance is therefore bridged: the PBX leg stays with
//! this instance's gateway and hub, the browser leg is remote.
//!
//! Call order: after any input, drain [`Switchboard::poll_output`] until `None`, then re-arm
//! the timer from [`Switchboard::poll_timeout`]. Every input takes `now`; nothing here reads a
//! clock. Without a gateway the hub is configured without a PBX (`HubConfig::pbx` false), so
//! it never addresses one, and the SIP and ARI inputs are ignored.

use std::collections::VecDeque;
use std::time::Instant;

use icegate_signal_proto::cluster::wire::WireError;
use icegate_signal_proto::cluster::{
    Channel, Cluster, Output as ClusterOutput, ToHub as ClusterToHub,
};
use icegate_signal_proto::hub::{
    CallEvent, Endpoint, Hub, OpenError, Output as HubOutput, PbxEvent,
};
use icegate_signal_proto::protocol::{
    ClientMessage, ErrorCode, HangupReason, RequestId, ServerMessage, SessionId, UserId,
};

use crate::ari::controller::RequestId as AriRequestId;
use crate::ari::rest::Method;
use crate::gateway::{CallResult, Gateway, Output as GatewayOutput, ToHub};

/// What the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send `message` to a browser session.
    Session {
        /// The session.
        session: SessionId,
        /// The message.
        message: ServerMessage,
    },
    /// Send this text frame on the SIP WebSocket.
    Sip(String),
    /// Open the ARI events WebSocket at this path (the shell adds the credentials).
    AriConnect(String),
    /// Perform this ARI REST request, then call [`Switchboard::handle_ari_response`].
    AriRequest {
        /// Its id.
        id: AriRequestId,
        /// The method.
        method: Method,
        /// Path and query below `/ari`.
        path: String,
        /// JSON body.
        body: Option<String>,
    },
    /// Count a call event of the hub.
    Call(CallEvent),
    /// Count how a call with the PBX ended.
    PbxResult(CallResult),
    /// Publish this on the cluster bus.
    Bus {
        /// The channel.
        channel: Channel,
        /// The message.
        payload: String,
    },
    /// The cluster bus's subscription hears nothing: drop the Redis connections and connect
    /// again (then [`Switchboard::bus_disconnected`] and [`Switchboard::bus_connected`]).
    BusReconnect,
    /// Something for the log (never holds a secret).
    Log(String),
}

/// The hub and the gateway, joined.
pub struct Switchboard {
    hub: Hub,
    gateway: Option<Gateway>,
    cluster: Option<Cluster>,
    out: VecDeque<Output>,
}

impl Switchboard {
    /// Joins `hub` and, when Asterisk is configured, `gateway` (whose first outputs, such as
    /// the ARI connect, are ready to drain at once).
    pub fn new(hub: Hub, gateway: Option<Gateway>, now: Instant) -> Switchboard {
        let mut board = Switchboard {
            hub,
            gateway,
            cluster: None,
            out: VecDeque::new(),
        };
        board.route(now);
        board
    }

    /// Joins the cluster (`redis-url`): from now on calls reach users on other instances once
    /// [`Switchboard::bus_connected`] says the bus is up.
    pub fn join_cluster(&mut self, cluster: Cluster, now: Instant) {
        self.cluster = Some(cluster);
        self.route(now);
    }

    // ---- getters ----

    /// The hub.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The gateway, when Asterisk is configured.
    pub fn gateway(&self) -> Option<&Gateway> {
        self.gateway.as_ref()
    }

    /// The cluster, when `redis-url` is configured.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
    }

    // ---- browser sessions ----

    /// Opens a session for an authenticated user.
    pub fn open_session(&mut self, user: UserId, now: Instant) -> Result<SessionId, OpenError> {
        let result = self.hub.open_session(user.clone(), now);
        if let (Ok(session), Some(cluster)) = (result, &mut self.cluster) {
            cluster.session_opened(session, user, now);
        }
        self.route(now);
        result
    }

    /// Closes a session: its calls end for the other parties, the PBX among them.
    pub fn close_session(&mut self, session: SessionId, now: Instant) {
        self.hub.close_session(session, now);
        if let Some(cluster) = &mut self.cluster {
            cluster.session_closed(session, now);
        }
        self.route(now);
    }

    /// A request from an open session.
    pub fn handle_message(
        &mut self,
        session: SessionId,
        id: Option<RequestId>,
        message: ClientMessage,
        now: Instant,
    ) {
        let owner = self
            .cluster
            .as_ref()
            .and_then(|cluster| cluster.owner(session, &message));
        match (owner, &mut self.cluster) {
            (Some(owner), Some(cluster)) => cluster.forward(owner, session, id, message, now),
            _ => self.hub.handle_message(session, id, message, now),
        }
        self.route(now);
    }

    // ---- the cluster bus ----

    /// The bus (Redis) is up, again or for the first time.
    pub fn bus_connected(&mut self, now: Instant) {
        if let Some(cluster) = &mut self.cluster {
            cluster.connected(now);
            self.route(now);
        }
    }

    /// The bus is lost: calls with other instances end, calls within this one go on.
    pub fn bus_disconnected(&mut self, now: Instant) {
        if let Some(cluster) = &mut self.cluster {
            cluster.disconnected(now);
            self.route(now);
        }
    }

    /// A message from the bus.
    pub fn handle_bus(&mut self, payload: &[u8], now: Instant) -> Result<(), WireError> {
        let Some(cluster) = &mut self.cluster else {
            return Ok(());
        };
        let result = cluster.handle_bus(payload, now);
        self.route(now);
        result
    }

    // ---- Asterisk's transports ----

    /// The SIP WebSocket is open.
    pub fn sip_connected(&mut self, now: Instant) {
        self.with_gateway(now, |gateway| gateway.sip_connected(now));
    }

    /// The SIP WebSocket closed (or could not be opened).
    pub fn sip_disconnected(&mut self, now: Instant) {
        self.with_gateway(now, |gateway| gateway.sip_disconnected(now));
    }

    /// A text frame from the SIP WebSocket.
    pub fn handle_sip(&mut self, frame: &[u8], now: Instant) {
        self.with_gateway(now, |gateway| gateway.handle_sip(frame, now));
    }

    /// The ARI events WebSocket is open.
    pub fn ari_connected(&mut self, now: Instant) {
        self.with_gateway(now, |gateway| gateway.ari_connected(now));
    }

    /// The ARI events WebSocket closed, or could not be opened.
    pub fn ari_connection_lost(&mut self, now: Instant) {
        self.with_gateway(now, |gateway| gateway.ari_connection_lost(now));
    }

    /// A text frame of the ARI events WebSocket; its type as
    /// [`Gateway::handle_ari_event`] names it (`None` without a gateway).
    pub fn handle_ari_event(&mut self, text: &str, now: Instant) -> Option<&'static str> {
        let mut name = None;
        self.with_gateway(now, |gateway| {
            name = Some(gateway.handle_ari_event(text, now))
        });
        name
    }

    /// The response to an [`Output::AriRequest`] (status 0 when there was none).
    pub fn handle_ari_response(&mut self, id: AriRequestId, status: u16, body: &str, now: Instant) {
        self.with_gateway(now, |gateway| {
            gateway.handle_ari_response(id, status, body, now)
        });
    }

    /// icegate-signal is stopping: the gateway ends its calls with Asterisk and unregisters
    /// (see [`Gateway::shutdown`]); the hub hears that the PBX is gone. Drive on until
    /// [`Gateway::is_quiet`].
    pub fn shutdown(&mut self, now: Instant) {
        self.with_gateway(now, |gateway| gateway.shutdown(now));
    }

    /// icegate-signal is stopping and its sessions have closed: the cluster says goodbye
    /// ([`Cluster::leave`]) so the other instances drop what is left of this one at once.
    pub fn leave_cluster(&mut self, now: Instant) {
        if let Some(cluster) = &mut self.cluster {
            cluster.leave(now);
            self.route(now);
        }
    }

    // ---- time ----

    /// The hub's ring timeouts and the gateway's timers (SIP transactions and registration
    /// retries, ARI reconnects and requests, candidate gathering) that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.hub.poll_timeout().is_some_and(|due| due <= now) {
            self.hub.handle_timeout(now);
        }
        if let Some(gateway) = &mut self.gateway {
            if gateway.poll_timeout().is_some_and(|due| due <= now) {
                gateway.handle_timeout(now);
            }
        }
        if let Some(cluster) = &mut self.cluster {
            if cluster.poll_timeout().is_some_and(|due| due <= now) {
                cluster.handle_timeout(now);
            }
        }
        self.route(now);
    }

    /// When [`Switchboard::handle_timeout`] is due: the earliest of the hub's, the gateway's
    /// and the cluster's timers.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let gateway = self.gateway.as_ref().and_then(Gateway::poll_timeout);
        let cluster = self.cluster.as_ref().and_then(Cluster::poll_timeout);
        [self.hub.poll_timeout(), gateway, cluster]
            .into_iter()
            .flatten()
            .min()
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    // ---- plumbing ----

    fn with_gateway(&mut self, now: Instant, input: impl FnOnce(&mut Gateway)) {
        if let Some(gateway) = &mut self.gateway {
            input(gateway);
            self.route(now);
        }
    }

    /// Moves outputs until every core is drained: the hub's PBX outputs into the gateway,
    /// the gateway's messages for the hub into the hub, the hub's messages for remote
    /// sessions into the cluster and the cluster's for the hub into the hub, everything else
    /// out.
    fn route(&mut self, now: Instant) {
        let Switchboard {
            hub,
            gateway,
            cluster,
            out,
        } = self;
        loop {
            let mut progressed = false;
            while let Some(output) = hub.poll_output() {
                progressed = true;
                match output {
                    HubOutput::Send {
                        to: Endpoint::Session(session),
                        message,
                    } => out.push_back(Output::Session { session, message }),
                    HubOutput::Event(event) => out.push_back(Output::Call(event)),
                    HubOutput::Membership {
                        session,
                        room,
                        joined,
                    } => {
                        if let Some(cluster) = cluster.as_mut() {
                            cluster.room_changed(session, room, joined, now);
                        }
                    }
                    HubOutput::Send {
                        to: Endpoint::Remote(to),
                        message,
                    } => {
                        // Without a cluster the hub knows no remote session.
                        if let Some(cluster) = cluster.as_mut() {
                            cluster.send(to, message, now);
                        }
                    }
                    // Without a gateway the hub has no PBX and never addresses it.
                    output @ (HubOutput::Send {
                        to: Endpoint::Pbx, ..
                    }
                    | HubOutput::PbxCall { .. }
                    | HubOutput::PbxRequest { .. }) => {
                        if let Some(gateway) = gateway.as_mut() {
                            gateway.handle_hub(output, now);
                        }
                    }
                }
            }
            if let Some(gateway) = gateway.as_mut() {
                while let Some(output) = gateway.poll_output() {
                    progressed = true;
                    match output {
                        GatewayOutput::Hub(message) => to_hub(hub, gateway, message, now),
                        GatewayOutput::Sip(frame) => out.push_back(Output::Sip(frame)),
                        GatewayOutput::AriConnect(path) => out.push_back(Output::AriConnect(path)),
                        GatewayOutput::AriRequest {
                            id,
                            method,
                            path,
                            body,
                        } => out.push_back(Output::AriRequest {
                            id,
                            method,
                            path,
                            body,
                        }),
                        GatewayOutput::Result(result) => out.push_back(Output::PbxResult(result)),
                        GatewayOutput::Log(text) => out.push_back(Output::Log(text)),
                    }
                }
            }
            if let Some(cluster) = cluster.as_mut() {
                while let Some(output) = cluster.poll_output() {
                    progressed = true;
                    match output {
                        ClusterOutput::Publish { channel, payload } => {
                            out.push_back(Output::Bus { channel, payload })
                        }
                        ClusterOutput::Session { session, message } => {
                            out.push_back(Output::Session { session, message })
                        }
                        ClusterOutput::Hub(message) => cluster_to_hub(hub, message, now),
                        ClusterOutput::Reconnect => out.push_back(Output::BusReconnect),
                        ClusterOutput::Log(text) => {
                            out.push_back(Output::Log(format!("cluster: {text}")))
                        }
                    }
                }
            }
            if !progressed {
                return;
            }
        }
    }
}

/// Feeds what the cluster says to the hub.
fn cluster_to_hub(hub: &mut Hub, message: ClusterToHub, now: Instant) {
    match message {
        ClusterToHub::Reachable(reachable) => hub.set_cluster_reachable(reachable),
        ClusterToHub::RemoteOpened { session, user } => hub.open_remote_session(session, user),
        ClusterToHub::RemoteClosed(session) => {
            hub.close_remote_session(session, HangupReason::Disconnected)
        }
        ClusterToHub::RemoteRoom {
            session,
            room,
            joined: true,
        } => hub.join_remote_room(session, room),
        ClusterToHub::RemoteRoom {
            session,
            room,
            joined: false,
        } => hub.leave_remote_room(session, &room),
        ClusterToHub::InstanceLost(instance) => {
            hub.close_instance(instance, HangupReason::Unavailable)
        }
        ClusterToHub::Request { from, id, message } => {
            hub.handle_remote_message(from, id, message, now)
        }
    }
}

/// Feeds what the gateway says to the hub; an offer's result goes straight back.
fn to_hub(hub: &mut Hub, gateway: &mut Gateway, message: ToHub, now: Instant) {
    match message {
        ToHub::Event(event) => {
            // A refusal means the call is already gone in the hub; nothing to undo.
            let _ = hub.handle_pbx(event, now);
        }
        ToHub::Available(available) => hub.set_pbx_available(available, now),
        ToHub::Paused => hub.pause_pbx(now),
        ToHub::Offer {
            token,
            from,
            to,
            sdp,
        } => {
            let result = hub
                .handle_pbx(PbxEvent::Call { from, to, sdp }, now)
                .and_then(|call| call.ok_or((ErrorCode::UnknownCall, "")))
                .map_err(|(code, _)| code);
            gateway.offer_result(token, result, now);
        }
    }
}

#[cfg(test)]
mod tests;
