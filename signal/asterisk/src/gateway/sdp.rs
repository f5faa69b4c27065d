//! Puts trickled ICE candidates into an SDP, for a peer that does not trickle (Asterisk over
//! SIP): each `a=candidate:` goes at the end of the m-section it names (by `sdpMid`, else by
//! `sdpMLineIndex`), and every m-section ends with `a=end-of-candidates` (RFC 8840 §4.1).
//!
//! A browser that trickles sends its SDP before gathering, with the placeholder `c=IN IP4
//! 0.0.0.0` and port 9. A peer that does not trickle reads that as the address of the media,
//! and Asterisk reads `0.0.0.0` as hold (it answers `a=recvonly` and raises `ChannelHold`). So
//! where candidates are written in, each m-section's `c=`, `m=` port and `a=rtcp` also name its
//! default candidate, as a non-trickling agent's SDP would (RFC 8839 §4.2.1.2, RFC 8829
//! §5.3.1).

use std::net::IpAddr;

use icegate_signal_proto::protocol::IceCandidate;

/// Whether the SDP already holds all its candidates (a non-trickling offer or answer).
pub fn is_complete(sdp: &str) -> bool {
    sdp.lines().any(|l| l.trim_end() == "a=end-of-candidates")
}

/// Whether `candidate` is the end-of-candidates marker rather than a candidate.
pub fn is_end_marker(candidate: Option<&IceCandidate>) -> bool {
    candidate.is_none_or(|c| c.candidate.trim().is_empty())
}

/// `sdp` with `candidates` added to their m-sections and `a=end-of-candidates` closing each
/// m-section. Candidates that name no m-section, or are already present, are left out.
pub fn with_candidates(sdp: &str, candidates: &[IceCandidate]) -> String {
    let eol = if sdp.contains("\r\n") { "\r\n" } else { "\n" };
    // Split into the session part and the m-sections, as lines without their endings.
    let mut sections: Vec<Vec<&str>> = vec![Vec::new()];
    for line in sdp.lines() {
        if line.is_empty() {
            continue;
        }
        if line.starts_with("m=") {
            sections.push(Vec::new());
        }
        if let Some(current) = sections.last_mut() {
            current.push(line);
        }
    }
    let media = &sections[1..];
    let mids: Vec<Option<&str>> = media
        .iter()
        .map(|lines| {
            lines
                .iter()
                .find_map(|l| l.strip_prefix("a=mid:"))
                .map(str::trim)
        })
        .collect();
    let mut added: Vec<Vec<String>> = vec![Vec::new(); media.len()];
    for candidate in candidates {
        let line = candidate.candidate.trim();
        let line = line.strip_prefix("a=").unwrap_or(line);
        if !line.starts_with("candidate:") {
            continue;
        }
        let by_mid = candidate
            .sdp_mid
            .as_deref()
            .and_then(|mid| mids.iter().position(|m| *m == Some(mid)));
        let index = by_mid.or_else(|| {
            candidate
                .sdp_m_line_index
                .map(usize::from)
                .filter(|i| *i < media.len())
        });
        let Some(index) = index else {
            continue;
        };
        let attribute = format!("a={line}");
        if media[index].contains(&attribute.as_str()) || added[index].contains(&attribute) {
            continue;
        }
        added[index].push(attribute);
    }
    let mut out = String::with_capacity(sdp.len() + 64 * candidates.len());
    for line in &sections[0] {
        out.push_str(line);
        out.push_str(eol);
    }
    for (lines, extra) in media.iter().zip(&added) {
        let all = lines
            .iter()
            .copied()
            .chain(extra.iter().map(String::as_str));
        let rtp = default_candidate(all.clone(), 1);
        // RTCP on its own component if the browser gathered one, else muxed with RTP.
        let rtcp = default_candidate(all, 2).or(rtp);
        let has_c = lines.iter().any(|l| l.starts_with("c="));
        for line in lines {
            if *line == "a=end-of-candidates" {
                continue;
            }
            match (rtp, rtcp) {
                (Some(rtp), _) if line.starts_with("m=") => {
                    out.push_str(&with_port(line, rtp.1));
                    if !has_c {
                        out.push_str(eol);
                        out.push_str(&connection(rtp.0));
                    }
                }
                (Some(rtp), _) if line.starts_with("c=") => out.push_str(&connection(rtp.0)),
                (_, Some((ip, port))) if line.starts_with("a=rtcp:") => {
                    out.push_str(&format!("a=rtcp:{port} {}", address(ip)));
                }
                _ => out.push_str(line),
            }
            out.push_str(eol);
        }
        for line in extra {
            out.push_str(line);
            out.push_str(eol);
        }
        out.push_str("a=end-of-candidates");
        out.push_str(eol);
    }
    out
}

/// The default candidate of `component` among the `a=candidate:` lines: the one of highest
/// priority (JSEP's choice; a relay-only browser gathers relay candidates only). Candidates
/// without an IP address (mDNS `.local` names) cannot be a `c=` address and are passed over.
fn default_candidate<'a>(
    lines: impl Iterator<Item = &'a str>,
    component: u32,
) -> Option<(IpAddr, u16)> {
    lines
        .filter_map(|l| l.strip_prefix("a=candidate:"))
        .filter_map(|c| {
            // foundation component transport priority address port typ type ...
            let fields: Vec<&str> = c.split_whitespace().collect();
            let (Some(comp), Some(priority), Some(ip), Some(port)) =
                (fields.get(1), fields.get(3), fields.get(4), fields.get(5))
            else {
                return None;
            };
            if comp.parse::<u32>().ok()? != component {
                return None;
            }
            let priority: u32 = priority.parse().ok()?;
            let ip: IpAddr = ip.parse().ok()?;
            let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
            Some((priority, ip, port))
        })
        .max_by_key(|(priority, ..)| *priority)
        .map(|(_, ip, port)| (ip, port))
}

/// `nettype addrtype address` of an `c=` line or `a=rtcp`.
fn address(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("IN IP4 {v4}"),
        IpAddr::V6(v6) => format!("IN IP6 {v6}"),
    }
}

fn connection(ip: IpAddr) -> String {
    format!("c={}", address(ip))
}

/// An `m=` line with its port (`m=<media> <port>[/<count>] <proto> <fmt>...`) replaced.
fn with_port(line: &str, port: u16) -> String {
    let mut fields: Vec<String> = line.split(' ').map(str::to_owned).collect();
    if let Some(field) = fields.get_mut(1) {
        let count = field
            .find('/')
            .map(|i| field[i..].to_owned())
            .unwrap_or_default();
        *field = format!("{port}{count}");
    }
    fields.join(" ")
}

/// The ICE username fragment of the first m-section (or the session) that names one.
pub fn ice_ufrag(sdp: &str) -> Option<&str> {
    sdp.lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .map(str::trim)
}

/// For a renegotiation without an ICE restart: `new` completed with the candidates of
/// `previous` (the browser does not gather again, so none will trickle). `None` when the ICE
/// credentials changed, i.e. the browser restarts ICE and its new candidates must be awaited.
pub fn carry_candidates(previous: &str, new: &str) -> Option<String> {
    let ufrag = ice_ufrag(new)?;
    if ice_ufrag(previous) != Some(ufrag) {
        return None;
    }
    // By m-line index: a renegotiation keeps the m-sections in their order (JSEP §5.2.2).
    let mut candidates = Vec::new();
    let mut index: Option<u16> = None;
    for line in previous.lines() {
        if line.starts_with("m=") {
            index = Some(index.map_or(0, |i| i.saturating_add(1)));
        } else if let Some(candidate) = line.strip_prefix("a=candidate:") {
            candidates.push(IceCandidate {
                candidate: format!("candidate:{}", candidate.trim()),
                sdp_mid: None,
                sdp_m_line_index: index,
                username_fragment: None,
            });
        }
    }
    Some(with_candidates(new, &candidates))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(line: &str, mid: Option<&str>, index: Option<u16>) -> IceCandidate {
        IceCandidate {
            candidate: line.into(),
            sdp_mid: mid.map(Into::into),
            sdp_m_line_index: index,
            username_fragment: None,
        }
    }

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\n";

    #[test]
    fn candidates_go_to_their_section_and_each_section_ends() {
        let sdp = with_candidates(
            OFFER,
            &[
                cand(
                    "candidate:1 1 udp 2122260223 10.0.0.1 5000 typ host",
                    Some("0"),
                    None,
                ),
                cand(
                    "a=candidate:2 1 udp 1 192.0.2.1 6000 typ relay raddr 0.0.0.0 rport 0",
                    None,
                    Some(1),
                ),
                cand(
                    "candidate:3 1 udp 1 192.0.2.1 6000 typ host",
                    Some("9"),
                    Some(7),
                ),
                cand("", Some("0"), Some(0)),
            ],
        );
        let audio = sdp.find("m=audio").unwrap();
        let video = sdp.find("m=video").unwrap();
        let first = sdp.find("a=candidate:1 ").unwrap();
        let second = sdp.find("a=candidate:2 ").unwrap();
        assert!(audio < first && first < video && video < second, "{sdp}");
        assert!(!sdp.contains("candidate:3"));
        assert_eq!(sdp.matches("a=end-of-candidates\r\n").count(), 2);
        assert!(sdp.ends_with("a=end-of-candidates\r\n"));
        assert!(is_complete(&sdp));
        assert!(!is_complete(OFFER));
        // Merging again changes nothing.
        assert_eq!(
            with_candidates(
                &sdp,
                &[cand(
                    "candidate:1 1 udp 2122260223 10.0.0.1 5000 typ host",
                    Some("0"),
                    None
                )]
            ),
            sdp
        );
    }

    #[test]
    fn renegotiations_without_an_ice_restart_keep_their_candidates() {
        let first = with_candidates(
            &OFFER.replace("a=mid:0\r\n", "a=mid:0\r\na=ice-ufrag:abcd\r\n"),
            &[cand(
                "candidate:1 1 udp 1 192.0.2.1 6000 typ relay",
                Some("0"),
                None,
            )],
        );
        let hold = OFFER
            .replace(
                "a=mid:0\r\n",
                "a=mid:0\r\na=ice-ufrag:abcd\r\na=sendonly\r\n",
            )
            .replace("o=- 1 2", "o=- 1 3");
        let carried = carry_candidates(&first, &hold).expect("same ufrag");
        assert!(carried.contains("a=sendonly"), "{carried}");
        let audio = carried.find("m=audio").unwrap();
        let video = carried.find("m=video").unwrap();
        let candidate = carried.find("a=candidate:1 ").unwrap();
        assert!(audio < candidate && candidate < video, "{carried}");
        assert!(is_complete(&carried));
        // An ICE restart (new ufrag) or an SDP without ICE credentials carries nothing.
        assert_eq!(
            carry_candidates(&first, &hold.replace("abcd", "wxyz")),
            None
        );
        assert_eq!(carry_candidates(&first, OFFER), None);
        assert_eq!(ice_ufrag(&first), Some("abcd"));
    }

    #[test]
    fn sections_name_their_default_candidate_instead_of_the_placeholder() {
        let offer = OFFER.replace("a=mid:0\r\n", "a=mid:0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n");
        let sdp = with_candidates(
            &offer,
            &[
                cand(
                    "candidate:1 1 udp 2122260223 abcd.local 5000 typ host",
                    Some("0"),
                    None,
                ),
                cand(
                    "candidate:2 1 udp 41885439 192.0.2.1 6000 typ relay raddr 0.0.0.0 rport 0",
                    Some("0"),
                    None,
                ),
                cand(
                    "candidate:3 1 udp 1686052607 198.51.100.7 7000 typ srflx",
                    Some("0"),
                    None,
                ),
                cand(
                    "candidate:4 2 udp 1686052606 198.51.100.7 7001 typ srflx",
                    Some("0"),
                    None,
                ),
                cand(
                    "candidate:5 1 udp 7 2001:db8::1 8000 typ relay",
                    Some("1"),
                    None,
                ),
            ],
        );
        // The mDNS host candidate has no address; srflx outranks relay.
        assert!(
            sdp.contains("m=audio 7000 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 198.51.100.7\r\n"),
            "{sdp}"
        );
        assert!(sdp.contains("a=rtcp:7001 IN IP4 198.51.100.7\r\n"), "{sdp}");
        assert!(
            sdp.contains("m=video 8000 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP6 2001:db8::1\r\n"),
            "{sdp}"
        );
        assert!(!sdp.contains("0.0.0.0\r\n"), "{sdp}");
        // Written in again, nothing changes; a section without candidates keeps its placeholder.
        assert_eq!(with_candidates(&sdp, &[]), sdp);
        assert_eq!(
            with_candidates(OFFER, &[])
                .matches("c=IN IP4 0.0.0.0")
                .count(),
            2
        );
    }

    #[test]
    fn a_relay_only_section_without_c_gets_one_and_rtcp_follows_rtp_when_muxed() {
        let offer =
            "v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 9/2 RTP/AVP 0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n";
        let sdp = with_candidates(
            offer,
            &[cand(
                "candidate:1 1 udp 5 192.0.2.1 6000 typ relay",
                None,
                Some(0),
            )],
        );
        assert!(
            sdp.contains("m=audio 6000/2 RTP/AVP 0\r\nc=IN IP4 192.0.2.1\r\n"),
            "{sdp}"
        );
        assert!(sdp.contains("a=rtcp:6000 IN IP4 192.0.2.1\r\n"), "{sdp}");
    }

    #[test]
    fn end_marker() {
        assert!(is_end_marker(None));
        assert!(is_end_marker(Some(&cand(" ", None, None))));
        assert!(!is_end_marker(Some(&cand("candidate:1", None, None))));
    }

    #[test]
    fn garbage_does_not_panic() {
        for sdp in ["", "m=", "\n\n\r\n", "v=0\nm=audio\na=mid:\n"] {
            let _ = with_candidates(sdp, &[cand("candidate:x", Some(""), Some(u16::MAX))]);
        }
    }
}
