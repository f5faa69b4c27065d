//! `MediaMode::Echo`: a real WebRTC endpoint (webrtc-rs) behind the stand-in's SDP, which
//! answers like Asterisk's Echo() and sends every RTP packet it receives back. Its only
//! candidates are relayed through the configured TURN server (iceTransportPolicy relay),
//! like the recorded Asterisk with `turnaddr` and all host addresses denied; so audio goes
//! caller → TURN → stand-in → TURN → caller. Built with the `media-echo` feature.

use super::state::TurnServer;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::{MediaEngine, MIME_TYPE_PCMU};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::APIBuilder;
use webrtc::ice_transport::ice_gathering_state::RTCIceGatheringState;
use webrtc::ice_transport::ice_server::RTCIceServer;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::policy::ice_transport_policy::RTCIceTransportPolicy;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpCodecParameters, RTPCodecType,
};
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::{TrackLocal, TrackLocalWriter};

fn pcmu() -> RTCRtpCodecCapability {
    RTCRtpCodecCapability {
        mime_type: MIME_TYPE_PCMU.to_owned(),
        clock_rate: 8000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![],
    }
}

/// A peer connection that only speaks PCMU (what Asterisk picks from a browser's offer
/// with `allow=ulaw,alaw,opus`) and only uses relayed candidates.
pub async fn peer_connection(turn: &TurnServer) -> Result<Arc<RTCPeerConnection>, String> {
    let e = |e: webrtc::Error| e.to_string();
    let mut media = MediaEngine::default();
    media
        .register_codec(
            RTCRtpCodecParameters {
                capability: pcmu(),
                payload_type: 0,
                ..Default::default()
            },
            RTPCodecType::Audio,
        )
        .map_err(e)?;
    let registry = register_default_interceptors(Registry::new(), &mut media).map_err(e)?;
    let mut settings = SettingEngine::default();
    // The TURN server and its relayed addresses are on loopback in tests.
    settings.set_include_loopback_candidate(true);
    let api = APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .build();
    let config = RTCConfiguration {
        ice_servers: vec![RTCIceServer {
            urls: vec![turn.url.clone()],
            username: turn.username.clone(),
            credential: turn.password.clone(),
        }],
        ice_transport_policy: RTCIceTransportPolicy::Relay,
        ..Default::default()
    };
    Ok(Arc::new(api.new_peer_connection(config).await.map_err(e)?))
}

/// Waits (bounded) until ICE gathering is complete and returns the local SDP, which then
/// holds every candidate: Asterisk does not trickle, and neither does the stand-in.
pub async fn complete_local_sdp(
    pc: &RTCPeerConnection,
    desc: RTCSessionDescription,
) -> Result<String, String> {
    let mut gathered = pc.gathering_complete_promise().await;
    pc.set_local_description(desc)
        .await
        .map_err(|e| e.to_string())?;
    let _ = tokio::time::timeout(Duration::from_secs(10), gathered.recv()).await;
    pc.local_description()
        .await
        .map(|d| d.sdp)
        .ok_or_else(|| "no local description".into())
}

/// One call's echoing endpoint.
pub struct EchoEndpoint {
    pc: Arc<RTCPeerConnection>,
    echoed: Arc<AtomicU64>,
}

impl std::fmt::Debug for EchoEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EchoEndpoint(echoed {})", self.echoed())
    }
}

impl EchoEndpoint {
    /// Answers `offer`; returns the endpoint and its complete SDP answer.
    pub async fn answer(offer: &str, turn: &TurnServer) -> Result<(EchoEndpoint, String), String> {
        let e = |e: webrtc::Error| e.to_string();
        let pc = peer_connection(turn).await?;
        let out = Arc::new(TrackLocalStaticRTP::new(
            pcmu(),
            "audio".into(),
            "asterisk-standin".into(),
        ));
        let sender = pc
            .add_track(Arc::clone(&out) as Arc<dyn TrackLocal + Send + Sync>)
            .await
            .map_err(e)?;
        // RTCP for the sender must be read for the interceptors (NACK, reports) to run.
        tokio::spawn(async move {
            let mut buf = vec![0u8; 1500];
            while sender.read(&mut buf).await.is_ok() {}
        });
        let echoed = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&echoed);
        pc.on_track(Box::new(move |track, _, _| {
            let (out, counter) = (Arc::clone(&out), Arc::clone(&counter));
            Box::pin(async move {
                tokio::spawn(async move {
                    while let Ok((packet, _)) = track.read_rtp().await {
                        if out.write_rtp(&packet).await.is_ok() {
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            })
        }));
        let offer = RTCSessionDescription::offer(offer.to_string()).map_err(e)?;
        pc.set_remote_description(offer).await.map_err(e)?;
        let answer = pc.create_answer(None).await.map_err(e)?;
        let sdp = complete_local_sdp(&pc, answer).await?;
        Ok((EchoEndpoint { pc, echoed }, sdp))
    }

    /// Answers a re-INVITE's new offer (hold, resume, ICE restart) on the same connection;
    /// returns the complete SDP answer.
    pub async fn reanswer(&self, offer: &str) -> Result<String, String> {
        let e = |e: webrtc::Error| e.to_string();
        let offer = RTCSessionDescription::offer(offer.to_string()).map_err(e)?;
        self.pc.set_remote_description(offer).await.map_err(e)?;
        let answer = self.pc.create_answer(None).await.map_err(e)?;
        let restart = self.pc.ice_gathering_state() != RTCIceGatheringState::Complete;
        if restart {
            return complete_local_sdp(&self.pc, answer).await;
        }
        // Nothing new to gather: the local description already lists every candidate.
        self.pc.set_local_description(answer).await.map_err(e)?;
        self.pc
            .local_description()
            .await
            .map(|d| d.sdp)
            .ok_or_else(|| "no local description".into())
    }

    /// RTP packets sent back so far.
    pub fn echoed(&self) -> u64 {
        self.echoed.load(Ordering::Relaxed)
    }

    pub async fn close(&self) {
        let _ = self.pc.close().await;
    }
}
