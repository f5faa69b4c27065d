use super::*;
use crate::ice::IceServer;
use serde_json::json;

fn parse_value(value: Value) -> Result<Request, ParseError> {
    parse(&value.to_string())
}

#[test]
fn extensions_digits_and_media_are_validated() {
    assert!(Extension::new("600").is_ok() && Extension::new("*97#").is_ok());
    for bad in ["", "6 0", "600;x", "600@host", &"9".repeat(33)] {
        assert!(Extension::new(bad).is_err(), "{bad:?}");
    }
    assert!(Digits::new("0123456789*#ABCD").is_ok());
    for bad in ["", "E", "1 2", &"1".repeat(33)] {
        assert!(Digits::new(bad).is_err(), "{bad:?}");
    }
    assert!(Media::new("tone:ring;tonezone=us").is_ok());
    for bad in [
        "file:/etc/passwd",
        "sound:../../etc/passwd",
        "sound:a b",
        "recording:x",
    ] {
        assert!(Media::new(bad).is_err(), "{bad:?}");
    }
    // A bad value in a message is a typed error for that request, not a dropped connection.
    let error = parse(r#"{"v":1,"type":"dtmf","id":4,"call":"00000000000000ff","digits":"x"}"#)
        .unwrap_err();
    assert_eq!(
        (error.id, error.code),
        (Some(RequestId::Number(4)), ErrorCode::BadMessage)
    );
}

#[test]
fn parses_every_client_message() {
    let call = "00000000000000ff";
    let cases = [
        (
            json!({"v":1,"type":"hello","id":1,"token":"t"}),
            ClientMessage::Hello {
                token: Some("t".into()),
                name: None,
            },
        ),
        (
            json!({"v":1,"type":"call","id":"a","to":{"user":"bob"},"sdp":"v=0"}),
            ClientMessage::Call {
                to: Target::User(UserId::new("bob").unwrap()),
                sdp: "v=0".into(),
            },
        ),
        (
            json!({"v":1,"type":"call","to":{"room":"lobby"},"sdp":"v=0"}),
            ClientMessage::Call {
                to: Target::Room(RoomId::new("lobby").unwrap()),
                sdp: "v=0".into(),
            },
        ),
        (
            json!({"v":1,"type":"ringing","call":call}),
            ClientMessage::Ringing { call: CallId(255) },
        ),
        (
            json!({"v":1,"type":"answer","call":call,"sdp":"v=0"}),
            ClientMessage::Answer {
                call: CallId(255),
                sdp: "v=0".into(),
            },
        ),
        (
            json!({"v":1,"type":"candidate","call":call,"candidate":{
                "candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host","sdpMid":"0",
                "sdpMLineIndex":0,"usernameFragment":"abcd"}}),
            ClientMessage::Candidate {
                call: CallId(255),
                candidate: Some(IceCandidate {
                    candidate: "candidate:1 1 udp 1 127.0.0.1 9 typ host".into(),
                    sdp_mid: Some("0".into()),
                    sdp_m_line_index: Some(0),
                    username_fragment: Some("abcd".into()),
                }),
            },
        ),
        (
            json!({"v":1,"type":"candidate","call":call,"candidate":null}),
            ClientMessage::Candidate {
                call: CallId(255),
                candidate: None,
            },
        ),
        (
            json!({"v":1,"type":"hangup","call":call,"reason":"busy"}),
            ClientMessage::Hangup {
                call: CallId(255),
                reason: HangupReason::Busy,
            },
        ),
        (
            json!({"v":1,"type":"hangup","call":call}),
            ClientMessage::Hangup {
                call: CallId(255),
                reason: HangupReason::Normal,
            },
        ),
        (
            json!({"v":1,"type":"join","room":"lobby"}),
            ClientMessage::Join {
                room: RoomId::new("lobby").unwrap(),
            },
        ),
        (
            json!({"v":1,"type":"leave","room":"lobby"}),
            ClientMessage::Leave {
                room: RoomId::new("lobby").unwrap(),
            },
        ),
        (
            json!({"v":1,"type":"call","to":{"extension":"*97#"},"sdp":"o"}),
            ClientMessage::Call {
                to: Target::Extension(Extension::new("*97#").unwrap()),
                sdp: "o".into(),
            },
        ),
        (
            json!({"v":1,"type":"dtmf","call":call,"digits":"12#"}),
            ClientMessage::Dtmf {
                call: CallId(0xff),
                digits: Digits::new("12#").unwrap(),
            },
        ),
        (
            json!({"v":1,"type":"transfer","call":call,"to":"700"}),
            ClientMessage::Transfer {
                call: CallId(0xff),
                to: Extension::new("700").unwrap(),
            },
        ),
        (
            json!({"v":1,"type":"play","call":call,"media":"sound:tt-monkeys"}),
            ClientMessage::Play {
                call: CallId(0xff),
                media: Media::new("sound:tt-monkeys").unwrap(),
            },
        ),
        (
            json!({"v":1,"type":"offer","call":call,"sdp":"v=0"}),
            ClientMessage::Offer {
                call: CallId(0xff),
                sdp: "v=0".into(),
            },
        ),
        (
            json!({"v":1,"type":"refresh-ice"}),
            ClientMessage::RefreshIce,
        ),
        (
            json!({"v":1,"type":"ping","extra":"ignored"}),
            ClientMessage::Ping,
        ),
    ];
    let mut kinds: Vec<&str> = Vec::new();
    for (input, expected) in cases {
        let request = parse_value(input.clone()).unwrap_or_else(|e| panic!("{input}: {e:?}"));
        assert_eq!(request.message, expected, "{input}");
        kinds.push(request.message.kind());
    }
    kinds.sort_unstable();
    kinds.dedup();
    assert_eq!(kinds.len(), CLIENT_KINDS.len(), "every kind is covered");
}

#[test]
fn ids_are_read_even_when_the_message_is_bad() {
    let error = parse(r#"{"v":1,"type":"call","id":"x7"}"#).unwrap_err();
    assert_eq!(error.code, ErrorCode::BadMessage);
    assert_eq!(error.id, Some(RequestId::Text("x7".into())));
    let error = parse(r#"{"v":2,"type":"ping","id":9}"#).unwrap_err();
    assert_eq!(
        (error.code, error.id),
        (ErrorCode::UnsupportedVersion, Some(RequestId::Number(9)))
    );
}

#[test]
fn refuses_what_is_not_a_message() {
    let code = |text: &str| parse(text).unwrap_err().code;
    assert_eq!(code("not json"), ErrorCode::BadJson);
    assert_eq!(code("[1,2]"), ErrorCode::BadJson);
    assert_eq!(code(r#"{"type":"ping"}"#), ErrorCode::UnsupportedVersion);
    assert_eq!(
        code(r#"{"v":"1","type":"ping"}"#),
        ErrorCode::UnsupportedVersion
    );
    assert_eq!(code(r#"{"v":1}"#), ErrorCode::BadMessage);
    assert_eq!(code(r#"{"v":1,"type":"dance"}"#), ErrorCode::UnknownType);
    assert_eq!(
        code(r#"{"v":1,"type":"ping","id":{"a":1}}"#),
        ErrorCode::BadMessage
    );
    let long_id = "x".repeat(MAX_ID_LEN + 1);
    assert_eq!(
        code(&json!({"v":1,"type":"ping","id":long_id}).to_string()),
        ErrorCode::BadMessage
    );
    assert_eq!(
        code(r#"{"v":1,"type":"ringing","call":"12"}"#),
        ErrorCode::BadMessage
    );
    assert_eq!(
        code(r#"{"v":1,"type":"join","room":"no spaces"}"#),
        ErrorCode::BadMessage
    );
    assert_eq!(
        code(r#"{"v":1,"type":"hangup","call":"00000000000000ff","reason":"bored"}"#),
        ErrorCode::BadMessage
    );
}

#[test]
fn names_are_restricted() {
    assert!(UserId::new("alice.b+test@example-1_x").is_ok());
    for bad in ["", "a:b", "a b", "é", "<script>"] {
        assert_eq!(UserId::new(bad), Err(InvalidName), "{bad:?}");
    }
    assert!(UserId::new("x".repeat(MAX_NAME_LEN)).is_ok());
    assert!(UserId::new("x".repeat(MAX_NAME_LEN + 1)).is_err());
}

#[test]
fn server_messages_carry_the_version_and_camel_case_ice_servers() {
    let ice = IceServers {
        ice_servers: vec![IceServer {
            urls: vec!["turn:127.0.0.1:3478?transport=udp".into()],
            username: Some("1060:alice".into()),
            credential: Some("pw".into()),
        }],
        ttl: 60,
    };
    let welcome = ServerMessage::Welcome {
        id: Some(RequestId::Number(1)),
        session: SessionId(1),
        user: UserId::new("alice").unwrap(),
        ice,
    };
    let value: Value = serde_json::from_str(&welcome.encode()).unwrap();
    assert_eq!(
        value,
        json!({"v":1,"type":"welcome","id":1,"session":"0000000000000001","user":"alice",
               "iceServers":[{"urls":["turn:127.0.0.1:3478?transport=udp"],
                              "username":"1060:alice","credential":"pw"}],"ttl":60})
    );
    let end = ServerMessage::Candidate {
        call: CallId(2),
        candidate: None,
    };
    assert_eq!(
        serde_json::from_str::<Value>(&end.encode()).unwrap(),
        json!({"v":1,"type":"candidate","call":"0000000000000002","candidate":null})
    );
    let error = ServerMessage::error(None, ErrorCode::SdpTooLarge, "too big");
    assert_eq!(
        serde_json::from_str::<Value>(&error.encode()).unwrap(),
        json!({"v":1,"type":"error","code":"sdp_too_large","message":"too big"})
    );
}

#[test]
fn error_code_names_match_serde() {
    for code in [
        ErrorCode::BadJson,
        ErrorCode::UnsupportedVersion,
        ErrorCode::TooManySessions,
        ErrorCode::UnknownCall,
        ErrorCode::Glare,
        ErrorCode::OriginNotAllowed,
    ] {
        assert_eq!(
            serde_json::to_value(code).unwrap(),
            Value::String(code.as_str().into())
        );
    }
    for reason in HangupReason::ALL {
        assert_eq!(
            serde_json::to_value(reason).unwrap(),
            Value::String(reason.as_str().into())
        );
    }
}
