//! SDP as chan_pjsip with `webrtc=yes` writes it: the answer to a browser's offer and the
//! offer of an Asterisk-originated call, shaped line by line after the recordings.
//!
//! This is the static media mode: the SDP is valid and complete (ICE credentials, DTLS
//! fingerprint, one `typ relay` candidate) but nothing listens behind it.

use super::clock;
use std::net::SocketAddr;

/// Codecs in the order of the recorded endpoint's `allow=ulaw,alaw,opus`.
const ALLOW: [&str; 3] = ["pcmu/8000", "pcma/8000", "opus/48000/2"];

/// Where the media of the stand-in claims to be.
#[derive(Debug, Clone)]
pub struct MediaParams {
    /// The relayed candidate's address (icegate-relay's allocation in a real setup).
    pub relay_candidate: SocketAddr,
}

fn fingerprint() -> String {
    (0..32)
        .map(|_| format!("{:02X}", rand::random::<u8>()))
        .collect::<Vec<_>>()
        .join(":")
}

/// One parsed `m=` section of an offer.
#[derive(Debug, Clone, Default)]
pub struct MediaSection {
    pub media: String,
    pub proto: String,
    pub formats: Vec<String>,
    pub attrs: Vec<String>,
}

impl MediaSection {
    pub fn attr(&self, name: &str) -> Option<&str> {
        let prefix = format!("{name}:");
        self.attrs
            .iter()
            .find_map(|a| a.strip_prefix(prefix.as_str()))
    }
    /// rtpmap lines as (payload type, lowercase encoding).
    pub fn rtpmaps(&self) -> Vec<(String, String)> {
        self.attrs
            .iter()
            .filter_map(|a| a.strip_prefix("rtpmap:"))
            .filter_map(|r| r.split_once(' '))
            .map(|(pt, enc)| (pt.to_string(), enc.to_ascii_lowercase()))
            .collect()
    }
}

/// Parsed SDP: session attributes and media sections.
#[derive(Debug, Clone, Default)]
pub struct Sdp {
    pub origin: String,
    pub session_attrs: Vec<String>,
    pub media: Vec<MediaSection>,
}

impl Sdp {
    pub fn parse(text: &str) -> Result<Sdp, String> {
        let mut sdp = Sdp::default();
        for line in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| format!("bad SDP line {line:?}"))?;
            match (k, sdp.media.last_mut()) {
                ("o", _) => sdp.origin = v.to_string(),
                ("m", _) => {
                    let mut p = v.split(' ');
                    let media = p.next().unwrap_or_default().to_string();
                    let _port = p.next().ok_or("m= without port")?;
                    let proto = p.next().ok_or("m= without proto")?.to_string();
                    sdp.media.push(MediaSection {
                        media,
                        proto,
                        formats: p.map(str::to_string).collect(),
                        attrs: vec![],
                    });
                }
                ("a", Some(m)) => m.attrs.push(v.to_string()),
                ("a", None) => sdp.session_attrs.push(v.to_string()),
                _ => {}
            }
        }
        if !text.starts_with("v=0") || sdp.media.is_empty() {
            return Err("not an SDP with media".into());
        }
        Ok(sdp)
    }

    fn session_attr(&self, name: &str) -> Option<&str> {
        let prefix = format!("{name}:");
        self.session_attrs
            .iter()
            .find_map(|a| a.strip_prefix(prefix.as_str()))
    }
}

fn candidate_line(relay: SocketAddr) -> String {
    format!(
        "a=candidate:R7f000001 1 UDP 16777215 {} {} typ relay raddr 127.0.0.1 rport {}",
        relay.ip(),
        relay.port(),
        20000 + rand::random::<u16>() % 1000
    )
}

/// Whether `offer` puts the call on hold as chan_pjsip reads it: a connection address of
/// `0.0.0.0` (RFC 2543 hold, which a trickling browser's placeholder `c=` also is) or a
/// `sendonly`/`inactive` audio stream. Asterisk then answers `a=recvonly` (or `inactive`) and
/// raises ARI `ChannelHold`.
pub fn held(offer: &str) -> bool {
    matches!(answer_direction(offer), "recvonly" | "inactive")
}

/// `answer` with its audio direction set as Asterisk answers `offer` (for the echo
/// endpoint's answers, which webrtc-rs writes without regard to the offer's address).
pub fn with_direction_for(answer: &str, offer: &str) -> String {
    let direction = format!("a={}", answer_direction(offer));
    answer
        .split_inclusive('\n')
        .map(|line| {
            let attr = line.trim_end();
            match attr {
                "a=sendrecv" | "a=sendonly" | "a=recvonly" | "a=inactive" => {
                    line.replacen(attr, &direction, 1)
                }
                _ => line.to_string(),
            }
        })
        .collect()
}

/// The direction Asterisk answers `offer`'s (first) audio stream with.
fn answer_direction(offer: &str) -> &'static str {
    let mut session_c = None;
    let mut in_audio = false;
    let mut audio_c = None;
    let mut direction = "sendrecv";
    for line in offer.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("m=") {
            if in_audio {
                break; // the first audio stream is the one that counts
            }
            in_audio = m.starts_with("audio ");
        } else if let Some(c) = line.strip_prefix("c=") {
            if in_audio {
                audio_c = Some(c);
            } else if audio_c.is_none() {
                session_c = Some(c);
            }
        } else if in_audio {
            if let Some(d) = line
                .strip_prefix("a=")
                .filter(|a| ["sendrecv", "sendonly", "recvonly", "inactive"].contains(a))
            {
                direction = d;
            }
        }
    }
    let zero = audio_c
        .or(session_c)
        .is_some_and(|c| c.split(' ').nth(2) == Some("0.0.0.0"));
    match direction {
        "inactive" => "inactive",
        "recvonly" if zero => "inactive",
        "recvonly" => "sendonly",
        _ if zero => "recvonly",
        "sendonly" => "recvonly",
        _ => "sendrecv",
    }
}

/// The answer to a WebRTC offer, or why Asterisk would refuse it (→ 488).
pub fn answer(text: &str, media: &MediaParams) -> Result<String, String> {
    let offer = Sdp::parse(text)?;
    let (sess_id, version) = {
        let o: Vec<&str> = offer.origin.split(' ').collect();
        let v: u64 = o.get(2).and_then(|v| v.parse().ok()).unwrap_or(0);
        (o.get(1).copied().unwrap_or("0").to_string(), v + 2)
    };
    let direction = answer_direction(text);
    let mids: Vec<&str> = offer
        .media
        .iter()
        .filter(|m| m.media == "audio")
        .filter_map(|m| m.attr("mid"))
        .collect();
    let mut out = vec![
        "v=0".to_string(),
        format!("o=- {sess_id} {version} IN IP4 127.0.0.1"),
        "s=Asterisk".into(),
        "c=IN IP4 127.0.0.1".into(),
        "t=0 0".into(),
        "a=msid-semantic:WMS *".into(),
    ];
    if !mids.is_empty() {
        out.push(format!("a=group:BUNDLE {}", mids.join(" ")));
    }
    let mut audio = false;
    for m in &offer.media {
        if m.media != "audio" {
            // Asterisk declines streams it has no codec for with port 0.
            out.push(format!(
                "m={} 0 {} {}",
                m.media,
                m.proto,
                m.formats.first().map(String::as_str).unwrap_or("0")
            ));
            out.extend(m.attr("mid").map(|mid| format!("a=mid:{mid}")));
            continue;
        }
        let ufrag = m.attr("ice-ufrag").or(offer.session_attr("ice-ufrag"));
        let fp = m.attr("fingerprint").or(offer.session_attr("fingerprint"));
        if ufrag.is_none() || fp.is_none() || !m.proto.contains("SAVPF") {
            return Err("webrtc=yes needs ICE credentials, a DTLS fingerprint and SAVPF".into());
        }
        let maps = m.rtpmaps();
        let chosen: Vec<(String, String)> = ALLOW
            .iter()
            .filter_map(|c| maps.iter().find(|(_, e)| e == c).cloned())
            .collect();
        if chosen.is_empty() {
            return Err("no codec in common with allow=ulaw,alaw,opus".into());
        }
        let events: Vec<(String, String)> = maps
            .iter()
            .filter(|(_, e)| e.starts_with("telephone-event/"))
            .cloned()
            .collect();
        // Recorded order: telephone-event/8000 after the codecs, the others at the end.
        let (ev8k, ev_other): (Vec<_>, Vec<_>) = events
            .into_iter()
            .partition(|(_, e)| e == "telephone-event/8000");
        let pts: Vec<&str> = chosen
            .iter()
            .chain(&ev8k)
            .chain(&ev_other)
            .map(|(pt, _)| pt.as_str())
            .collect();
        out.push(format!(
            "m=audio {} UDP/TLS/RTP/SAVPF {}",
            20000 + rand::random::<u16>() % 1000,
            pts.join(" ")
        ));
        out.push("a=connection:new".into());
        out.push("a=setup:active".into());
        out.push(format!("a=fingerprint:SHA-256 {}", fingerprint()));
        out.push(format!("a=ice-ufrag:{}", clock::hex(32)));
        out.push(format!("a=ice-pwd:{}", clock::hex(32)));
        out.push(candidate_line(media.relay_candidate));
        let rtpmap = |out: &mut Vec<String>, (pt, enc): &(String, String)| {
            let name = match enc.as_str() {
                "pcmu/8000" => "PCMU/8000".to_string(),
                "pcma/8000" => "PCMA/8000".to_string(),
                other => other.to_string(),
            };
            out.push(format!("a=rtpmap:{pt} {name}"));
            if enc.starts_with("telephone-event/") {
                out.push(format!("a=fmtp:{pt} 0-16"));
            }
        };
        for c in chosen.iter().chain(&ev8k) {
            rtpmap(&mut out, c);
        }
        out.push("a=ptime:20".into());
        out.push("a=maxptime:60".into());
        out.push(format!("a={direction}"));
        out.push("a=rtcp-mux".into());
        out.push(format!(
            "a=ssrc:{} cname:{}",
            rand::random::<u32>(),
            clock::uuid()
        ));
        out.push(format!("a=msid:{} {}", clock::uuid(), clock::uuid()));
        out.push("a=rtcp-fb:* transport-cc".into());
        out.extend(m.attr("mid").map(|mid| format!("a=mid:{mid}")));
        for c in &ev_other {
            rtpmap(&mut out, c);
        }
        audio = true;
    }
    if !audio {
        return Err("no audio stream".into());
    }
    Ok(out.join("\r\n") + "\r\n")
}

/// `sdp` with its `o=` version one higher: the same session, changed (RFC 3264 §8), as
/// Asterisk's re-INVITEs carry it.
pub fn next_version(sdp: &str) -> String {
    sdp.split_inclusive('\n')
        .map(|line| {
            let Some(origin) = line.strip_prefix("o=") else {
                return line.to_string();
            };
            let mut fields: Vec<String> = origin.split(' ').map(str::to_string).collect();
            if let Some(version) = fields.get_mut(2) {
                if let Ok(n) = version.parse::<u64>() {
                    *version = (n + 1).to_string();
                }
            }
            format!("o={}", fields.join(" "))
        })
        .collect()
}

/// The offer Asterisk sends when ARI originates to PJSIP/icegate (recorded shape).
pub fn offer(media: &MediaParams) -> String {
    let id = rand::random::<u32>() / 2;
    [
        "v=0".to_string(),
        format!("o=- {id} {id} IN IP4 127.0.0.1"),
        "s=Asterisk".into(),
        "c=IN IP4 127.0.0.1".into(),
        "t=0 0".into(),
        "a=msid-semantic:WMS *".into(),
        "a=group:BUNDLE audio-0".into(),
        format!(
            "m=audio {} UDP/TLS/RTP/SAVPF 0 8 107 101 102",
            20000 + rand::random::<u16>() % 1000
        ),
        "a=connection:new".into(),
        "a=setup:actpass".into(),
        format!("a=fingerprint:SHA-256 {}", fingerprint()),
        format!("a=ice-ufrag:{}", clock::hex(32)),
        format!("a=ice-pwd:{}", clock::hex(32)),
        candidate_line(media.relay_candidate),
        "a=rtpmap:0 PCMU/8000".into(),
        "a=rtpmap:8 PCMA/8000".into(),
        "a=rtpmap:107 opus/48000/2".into(),
        "a=rtpmap:101 telephone-event/8000".into(),
        "a=fmtp:101 0-16".into(),
        "a=rtpmap:102 telephone-event/48000".into(),
        "a=fmtp:102 0-16".into(),
        "a=ptime:20".into(),
        "a=maxptime:60".into(),
        "a=sendrecv".into(),
        "a=rtcp-mux".into(),
        format!("a=ssrc:{} cname:{}", rand::random::<u32>(), clock::uuid()),
        format!("a=msid:{} {}", clock::uuid(), clock::uuid()),
        "a=rtcp-fb:* transport-cc".into(),
        "a=mid:audio-0".into(),
    ]
    .join("\r\n")
        + "\r\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 5830277167772464265 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\nm=audio 45183 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\nc=IN IP4 127.0.0.1\r\na=candidate:1 1 udp 58597375 127.0.0.1 45183 typ relay raddr 0.0.0.0 rport 0\r\na=ice-ufrag:1wGl\r\na=ice-pwd:DgfCEQF/RXPUYAL/MuW3YC2i\r\na=fingerprint:sha-256 04:AA\r\na=setup:actpass\r\na=mid:0\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:63 red/48000/2\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:13 CN/8000\r\na=rtpmap:110 telephone-event/48000\r\na=rtpmap:126 telephone-event/8000\r\n";

    fn params() -> MediaParams {
        MediaParams {
            relay_candidate: "127.0.0.1:45381".parse().unwrap(),
        }
    }

    #[test]
    fn answer_mirrors_the_recorded_answer() {
        let a = answer(OFFER, &params()).unwrap();
        let sdp = Sdp::parse(&a).unwrap();
        assert_eq!(
            sdp.origin.split(' ').nth(2),
            Some("4"),
            "version + 2 as recorded"
        );
        let m = &sdp.media[0];
        assert_eq!(m.formats, ["0", "8", "111", "126", "110"]);
        assert_eq!(m.attr("setup"), Some("active"));
        assert_eq!(m.attr("mid"), Some("0"));
        assert!(m
            .attr("candidate")
            .unwrap()
            .contains("127.0.0.1 45381 typ relay"));
    }

    #[test]
    fn refuses_offers_asterisk_refuses() {
        assert!(answer(
            &OFFER.replace("a=fingerprint:sha-256 04:AA\r\n", ""),
            &params()
        )
        .is_err());
        let no_codec = OFFER
            .replace("a=rtpmap:0 PCMU/8000\r\n", "")
            .replace("a=rtpmap:8 PCMA/8000\r\n", "")
            .replace("a=rtpmap:111 opus/48000/2\r\n", "");
        assert!(answer(&no_codec, &params()).is_err());
    }
}
