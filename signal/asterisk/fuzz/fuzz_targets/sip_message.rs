//! Feeds fuzzer bytes to the SIP parser, `Message::parse` in `signal/asterisk/src/sip/message.rs`,
//! as one WebSocket frame (RFC 7118 §5.1: one message per frame).
//!
//! Beyond "no panic", for every frame it accepts it checks that:
//! - the mandatory headers it promises (`check_mandatory`) are there and readable: Call-ID,
//!   To, From, a CSeq with a number below 2**31, a topmost Via with a branch, and for a
//!   request a CSeq method equal to the request line's; a response's code is 100–699;
//! - `Content-Length` is never kept among the headers, and no header value has leading or
//!   trailing whitespace;
//! - `Message::encode` gives a frame that parses back to the same message: start line,
//!   headers (names, values, order) and body;
//! - the structured readers the UA uses on From, To, Contact, Route and Record-Route
//!   (`header::split_list`, `NameAddr::parse`) do not panic, and a parsed name-addr printed
//!   with `Display` parses back to itself.
#![no_main]

use icegate_signal_asterisk::sip::header::{split_list, NameAddr};
use icegate_signal_asterisk::sip::message::{Message, StartLine};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = Message::parse(data) else {
        return;
    };

    // What a parsed message promises.
    assert!(!message.call_id().is_empty());
    assert!(message.header("To").is_some_and(|v| !v.is_empty()));
    assert!(message.header("From").is_some_and(|v| !v.is_empty()));
    let (number, cseq_method) = message.cseq().expect("a parsed message has a CSeq");
    assert!(number < 1 << 31);
    assert!(message.top_branch().is_some_and(|b| !b.is_empty()));
    match &message.start {
        StartLine::Request { method, uri } => {
            assert_eq!(*method, cseq_method);
            assert!(uri.contains(':') && !uri.contains(' '));
        }
        StartLine::Response { code, .. } => assert!((100..=699).contains(code)),
    }
    assert!(message.header("Content-Length").is_none());
    for (name, value) in &message.headers {
        assert!(!name.is_empty());
        assert_eq!(value.trim(), value, "header {name} keeps whitespace");
    }
    let _ = message.sdp();

    // Encode, parse again: the same message.
    let wire = message.encode();
    let again = Message::parse(wire.as_bytes())
        .unwrap_or_else(|e| panic!("the encoded message does not parse ({e}):\n{wire}"));
    assert_eq!(again.start, message.start, "start line changed:\n{wire}");
    assert_eq!(again.headers, message.headers, "headers changed:\n{wire}");
    assert_eq!(again.body, message.body, "body changed:\n{wire}");

    // The structured header readers.
    for name in ["From", "To", "Contact", "Route", "Record-Route"] {
        for value in message.headers_named(name) {
            for item in split_list(value) {
                if let Some(addr) = NameAddr::parse(item) {
                    let printed = addr.to_string();
                    assert_eq!(
                        NameAddr::parse(&printed).as_ref(),
                        Some(&addr),
                        "name-addr {item:?} printed as {printed:?}"
                    );
                }
            }
        }
    }
});
