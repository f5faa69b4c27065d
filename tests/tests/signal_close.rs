//! WebSocket close hygiene of the icegate-signal binary (RFC 6455 §5.5.1, §7.4): a client's
//! close is answered with the same code before the server drops the connection, and frames
//! that break the protocol are closed with 1007 (text that is not UTF-8) or 1002 (anything
//! else), sent as hand-written frames over a plain TCP socket.
#![deny(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use icegate_tests::signal::{Signal, SignalConfig, RECV_TIMEOUT};

#[test]
fn a_client_close_is_answered_with_its_code_then_the_server_closes_tcp() {
    let signal = Signal::start(SignalConfig::default());

    let mut client = signal.connect("name=alice");
    client.expect("welcome");
    assert_eq!(client.close_handshake(Some(1000)), Ok(Some(1000)));
    assert!(client.server_closed_tcp(), "the server kept the connection");

    // Any code the client may send is echoed, before authentication too.
    let mut client = signal.connect("");
    assert_eq!(client.close_handshake(Some(4000)), Ok(Some(4000)));
    assert!(client.server_closed_tcp());

    // A close without a code gets one without a code (a browser reports 1005, still clean).
    let mut client = signal.connect("name=bob");
    client.expect("welcome");
    assert_eq!(client.close_handshake(None), Ok(None));
    assert!(client.server_closed_tcp());

    // Closes the client starts are not the server's: none is counted.
    let metrics = signal.metrics();
    assert_eq!(
        metrics.sum("icegate_signal_closes_total", &[]),
        0.0,
        "{}",
        metrics.raw
    );
}

/// A WebSocket client that writes frames byte by byte, for frames no library would send.
struct RawClient {
    tcp: TcpStream,
}

impl RawClient {
    /// Connects to `/ws` (no credential, so the server sends nothing before it is asked).
    fn connect(addr: SocketAddr) -> RawClient {
        let mut tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
        write!(
            tcp,
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8];
        while !head.ends_with(b"\r\n\r\n") {
            tcp.read_exact(&mut byte).expect("the upgrade response");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        RawClient { tcp }
    }

    /// Writes one frame: `first` is the FIN, RSV and opcode byte; a payload of less than
    /// 64 KiB, masked with a fixed key unless `masked` is false.
    fn send(&mut self, first: u8, masked: bool, payload: &[u8]) {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let mask_bit = if masked { 0x80 } else { 0 };
        let mut frame = vec![first];
        match u8::try_from(payload.len()) {
            Ok(len) if len < 126 => frame.push(len | mask_bit),
            _ => {
                frame.push(126 | mask_bit);
                frame.extend(u16::try_from(payload.len()).unwrap().to_be_bytes());
            }
        }
        if masked {
            frame.extend(key);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            frame.extend(payload);
        }
        self.tcp.write_all(&frame).unwrap();
    }

    /// Reads the server's frames up to its close; its code (`None` if it had none). Panics if
    /// the connection ends without one, or on a data frame.
    fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.next_frame() {
                (0x8, payload) => {
                    return (payload.len() >= 2)
                        .then(|| u16::from_be_bytes([payload[0], payload[1]]))
                }
                (0x9 | 0xa, _) => continue,
                (other, payload) => panic!("expected a close, got opcode {other:#x}: {payload:?}"),
            }
        }
    }

    /// The next frame of the server: its opcode and payload.
    fn next_frame(&mut self) -> (u8, Vec<u8>) {
        {
            let mut head = [0u8; 2];
            self.tcp
                .read_exact(&mut head)
                .expect("a close frame before the end of the connection");
            assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
            let len = match head[1] & 0x7f {
                126 => {
                    let mut ext = [0u8; 2];
                    self.tcp.read_exact(&mut ext).unwrap();
                    u16::from_be_bytes(ext) as usize
                }
                127 => {
                    let mut ext = [0u8; 8];
                    self.tcp.read_exact(&mut ext).unwrap();
                    u64::from_be_bytes(ext) as usize
                }
                short => short as usize,
            };
            let mut payload = vec![0u8; len];
            self.tcp.read_exact(&mut payload).unwrap();
            (head[0] & 0x0f, payload)
        }
    }
}

#[test]
fn protocol_violations_close_with_1002_and_bad_utf8_with_1007() {
    let signal = Signal::start(SignalConfig::default());
    let ping = br#"{"v":1,"type":"ping","id":1}"#;

    // The raw client itself is sound: a well-formed masked text frame is answered.
    let mut sound = RawClient::connect(signal.addr());
    sound.send(0x81, true, ping);
    let (opcode, pong) = sound.next_frame();
    assert_eq!(opcode, 0x1);
    assert!(String::from_utf8_lossy(&pong).contains(r#""type":"pong""#));
    sound.send(0x88, true, &1000u16.to_be_bytes());
    assert_eq!(sound.expect_close(), Some(1000));

    let long_ping = [b'p'; 126];
    let cases: [(&str, u8, bool, &[u8], u16); 9] = [
        (
            "a close reason that is not UTF-8",
            0x88,
            true,
            b"\x03\xe8\xff",
            1007,
        ),
        (
            "a control frame over 125 bytes",
            0x89,
            true,
            &long_ping,
            1002,
        ),
        // Answered by tungstenite itself, as a reply to the client's close: not counted.
        (
            "a close code no endpoint may send",
            0x88,
            true,
            b"\x03\xed",
            1002,
        ),
        (
            "text that is not UTF-8",
            0x81,
            true,
            b"{\"v\":1,\"type\":\"\xff\"}",
            1007,
        ),
        ("an unmasked frame", 0x81, false, ping, 1002),
        ("a reserved bit", 0xc1, true, ping, 1002),
        ("a reserved data opcode", 0x83, true, ping, 1002),
        ("a fragmented ping", 0x09, true, b"x", 1002),
        ("a continuation of nothing", 0x80, true, ping, 1002),
    ];
    for (what, first, masked, payload, code) in cases {
        let mut client = RawClient::connect(signal.addr());
        client.send(first, masked, payload);
        assert_eq!(client.expect_close(), Some(code), "{what}");
    }

    let metrics = signal.metrics();
    let closes = |code| metrics.sum("icegate_signal_closes_total", &[("code", code)]);
    assert_eq!(
        (closes("1007"), closes("1002")),
        (2.0, 6.0),
        "{}",
        metrics.raw
    );
}

#[test]
fn chromium_closes_cleanly_and_a_foreign_page_is_refused() {
    use std::time::Duration;
    let signal = Signal::start(SignalConfig::default());
    let url = format!("http://{}/", signal.addr());
    let run = icegate_tests::browser::run_script(
        "close.mjs",
        &url,
        (1, 1),
        Duration::from_secs(30),
        Duration::from_secs(40),
        &[],
        || {},
    );
    let result = &run.result;
    if result["ok"] != true {
        signal.dump_log(40);
    }
    assert_eq!(result["ok"], true, "{result}\n{}", run.stderr);
    // The browser's codes: its own 1000 and 4000 echoed; a close without a code reads 1005.
    assert_eq!(
        (
            &result["closes"]["code1000"],
            &result["closes"]["code4000"],
            &result["closes"]["noCode"]
        ),
        (&1000.into(), &4000.into(), &1005.into()),
        "{result}"
    );
    // Refused before the upgrade: the browser only sees an abnormal close.
    assert_eq!(result["foreign"]["code"], 1006, "{result}");
    assert_eq!(result["foreign"]["wasClean"], false, "{result}");
    let metrics = signal.metrics();
    assert_eq!(
        metrics.sum(
            "icegate_signal_connections_refused_total",
            &[("reason", "origin")]
        ),
        1.0,
        "{}",
        metrics.raw
    );
}
