//! SIP INFO bodies that carry DTMF. An endpoint with `dtmf_mode=info` (or Asterisk bridging a
//! call from one) sends each key pressed on the PBX side as an INFO in the dialog, with
//! `Content-Type: application/dtmf-relay` and `Signal=5` / `Duration=160` lines, as
//! res_pjsip_dtmf_info writes and reads them; some peers use `application/dtmf` with the digit
//! alone. The user agent answers 200 and reports the digit; anything else is refused with 415.

/// What an INFO request's body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Info {
    /// A DTMF digit (`0-9 * # A-D`, upper case).
    Dtmf {
        /// The digit.
        digit: char,
        /// How long it was pressed, when the body says (`Duration=`).
        duration_ms: Option<u32>,
    },
    /// No body: nothing to do (a keep-alive of sorts); answered 200.
    Empty,
}

/// Why an INFO body is not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InfoError {
    /// A body of a type other than the DTMF ones.
    #[error("unsupported INFO content type {0:?}")]
    UnsupportedType(String),
    /// A DTMF body without a digit this side knows.
    #[error("INFO without a DTMF digit")]
    NoDigit,
}

/// The content types accepted, for the `Accept` header of a 415.
pub const ACCEPT: &str = "application/dtmf-relay, application/dtmf";

/// Reads an INFO request's body of `content_type` (the header's value, if any).
pub fn parse(content_type: Option<&str>, body: &str) -> Result<Info, InfoError> {
    if body.trim().is_empty() {
        return Ok(Info::Empty);
    }
    let media = content_type
        .and_then(|t| t.split(';').next())
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let (signal, duration) = match media.as_str() {
        "application/dtmf-relay" => {
            let mut signal = None;
            let mut duration = None;
            for line in body.lines() {
                let Some((key, value)) = line.split_once('=') else {
                    continue;
                };
                let (key, value) = (key.trim(), value.trim());
                if key.eq_ignore_ascii_case("signal") {
                    signal = Some(value);
                } else if key.eq_ignore_ascii_case("duration") {
                    duration = value.parse().ok();
                }
            }
            (signal.ok_or(InfoError::NoDigit)?, duration)
        }
        "application/dtmf" => (body.trim(), None),
        _ => return Err(InfoError::UnsupportedType(media)),
    };
    Ok(Info::Dtmf {
        digit: digit(signal).ok_or(InfoError::NoDigit)?,
        duration_ms: duration,
    })
}

/// One DTMF key: the character itself, or the event codes 10 (`*`), 11 (`#`), 12–15 (`A-D`)
/// that some peers write (RFC 4733 §3.2 numbering).
fn digit(signal: &str) -> Option<char> {
    let mut chars = signal.chars();
    let (first, rest) = (chars.next()?, chars.as_str());
    if rest.is_empty() {
        let upper = first.to_ascii_uppercase();
        return (upper.is_ascii_digit() || "*#ABCD".contains(upper)).then_some(upper);
    }
    match signal {
        "10" => Some('*'),
        "11" => Some('#'),
        "12" => Some('A'),
        "13" => Some('B'),
        "14" => Some('C'),
        "15" => Some('D'),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtmf_relay_as_asterisk_writes_it() {
        assert_eq!(
            parse(
                Some("application/dtmf-relay"),
                "Signal=5\r\nDuration=160\r\n"
            ),
            Ok(Info::Dtmf {
                digit: '5',
                duration_ms: Some(160)
            })
        );
        assert_eq!(
            parse(Some("Application/DTMF-Relay; x=1"), "signal = #\n"),
            Ok(Info::Dtmf {
                digit: '#',
                duration_ms: None
            })
        );
        assert_eq!(
            parse(Some("application/dtmf-relay"), "Signal=11\r\n"),
            Ok(Info::Dtmf {
                digit: '#',
                duration_ms: None
            })
        );
        assert_eq!(
            parse(Some("application/dtmf"), "a\r\n"),
            Ok(Info::Dtmf {
                digit: 'A',
                duration_ms: None
            })
        );
    }

    #[test]
    fn other_bodies_are_refused_and_empty_is_fine() {
        assert_eq!(parse(None, ""), Ok(Info::Empty));
        assert_eq!(
            parse(Some("application/dtmf-relay"), "\r\n"),
            Ok(Info::Empty)
        );
        assert_eq!(
            parse(Some("application/media_control+xml"), "<x/>"),
            Err(InfoError::UnsupportedType(
                "application/media_control+xml".into()
            ))
        );
        assert_eq!(
            parse(None, "Signal=5"),
            Err(InfoError::UnsupportedType(String::new()))
        );
        for body in [
            "Signal=x",
            "Duration=100",
            "Signal=99",
            "Signal=",
            "Signal=55",
        ] {
            assert_eq!(
                parse(Some("application/dtmf-relay"), body),
                Err(InfoError::NoDigit),
                "{body}"
            );
        }
    }
}
