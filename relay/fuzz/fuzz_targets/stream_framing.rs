//! Feeds fuzzer bytes to the TCP/TLS stream framing (`relay/src/framing.rs`) in arbitrary
//! read sizes, reassembling frames the way `serve_stream` in `relay/src/worker.rs` does: one
//! buffer of `MAX_FRAME + 4` bytes, reads appended at `filled`, complete frames taken from
//! `start`, the remainder moved to the front after each read.
//!
//! Input layout: byte 0 = `k` (low nibble: how many split bytes follow) and a scale (high
//! nibble); the next `k` bytes give the read sizes, cycled (`1 + byte * (1 + scale)`); the rest
//! is the stream. TLS hands the framer the same decrypted byte stream, so this covers both.
//!
//! Beyond "no panic", it checks that:
//! - every complete frame is well formed: a STUN frame (`00` leading bits) is the 20-byte
//!   header plus the header's length, unpadded; a ChannelData frame (`01`) is the 4-byte header
//!   plus its length, padded to a multiple of 4 on the stream (RFC 8656 §12.5);
//! - a frame and its padding lie inside the bytes received, and fit `MAX_FRAME`;
//! - the buffer never fills up while the framer waits for more (a full buffer would read 0
//!   bytes, which the worker takes for end of stream);
//! - `Invalid` is answered for the `10` and `11` leading bits only;
//! - the frames found do not depend on how the stream was split: they equal those an
//!   independent parser finds in the whole stream at once, and the stream ends in the same
//!   state (waiting at the same offset, or invalid at the same offset).
#![no_main]

use libfuzzer_sys::fuzz_target;

// The framing module is plain Rust with no dependencies; it lives in the binary crate, so it
// is compiled in here from its source rather than through a library target.
#[allow(dead_code)]
#[path = "../../src/framing.rs"]
mod framing;

use framing::{next_frame, Frame, MAX_FRAME};

/// A frame found on the stream: where it starts, its length and its padding.
#[derive(Debug, PartialEq, Eq)]
struct Found {
    offset: usize,
    len: usize,
    padding: usize,
}

/// How the stream ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Waiting for more bytes of the frame starting at this offset (or for nothing, at the end).
    Waiting(usize),
    /// Unframeable bytes at this offset: the worker closes the connection.
    Invalid(usize),
}

/// The frames in `stream` read in one piece, by a parser written from the RFCs, independent
/// of `framing.rs`.
fn reference(stream: &[u8]) -> (Vec<Found>, End) {
    let mut frames = Vec::new();
    let mut offset = 0;
    loop {
        let rest = &stream[offset..];
        if rest.is_empty() {
            return (frames, End::Waiting(offset));
        }
        let channel_data = match rest[0] >> 6 {
            0b00 => false,
            0b01 => true,
            _ => return (frames, End::Invalid(offset)),
        };
        if rest.len() < 4 {
            return (frames, End::Waiting(offset));
        }
        let body = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let (len, padding) = if channel_data {
            let len = 4 + body;
            (len, len.next_multiple_of(4) - len)
        } else {
            (20 + body, 0)
        };
        if rest.len() < len + padding {
            return (frames, End::Waiting(offset));
        }
        frames.push(Found {
            offset,
            len,
            padding,
        });
        offset += len + padding;
    }
}

/// Checks one complete frame at the start of `buf`.
fn check_frame(buf: &[u8], len: usize, padding: usize) {
    assert!(len + padding <= buf.len(), "frame past the bytes received");
    assert!(len + padding <= MAX_FRAME, "frame larger than MAX_FRAME");
    let body = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    match buf[0] >> 6 {
        0b00 => {
            assert_eq!(len, 20 + body, "STUN length is the header's");
            assert_eq!(padding, 0, "STUN is not padded");
        }
        0b01 => {
            assert_eq!(len, 4 + body, "ChannelData length is the header's");
            assert!(padding < 4, "at most 3 bytes of padding");
            assert_eq!((len + padding) % 4, 0, "ChannelData padded to 4 on streams");
        }
        _ => panic!("a frame with leading bits {:02b}", buf[0] >> 6),
    }
}

/// Reads `stream` in pieces of `sizes` (cycled) the way the worker does.
fn reassemble(stream: &[u8], sizes: &[usize]) -> (Vec<Found>, End) {
    let mut buf = vec![0u8; MAX_FRAME + 4];
    let mut filled = 0;
    // Offset in the stream of buf[0].
    let mut base = 0;
    let mut frames = Vec::new();
    let mut sent = 0;
    let mut sizes = sizes.iter().copied().cycle();
    while sent < stream.len() {
        // A read fills at most what is free, like `reader.read(&mut buf[filled..])`.
        let free = buf.len() - filled;
        assert!(free > 0, "buffer full while waiting for a frame");
        let want = sizes.next().unwrap_or(usize::MAX);
        let n = want.min(free).min(stream.len() - sent);
        buf[filled..filled + n].copy_from_slice(&stream[sent..sent + n]);
        sent += n;
        filled += n;
        let mut start = 0;
        loop {
            match next_frame(&buf[start..filled]) {
                Frame::Incomplete => break,
                Frame::Invalid => {
                    assert!(buf[start] >= 0x80, "Invalid for STUN or ChannelData");
                    return (frames, End::Invalid(base + start));
                }
                frame @ Frame::Complete { len, padding } => {
                    assert_eq!(frame.stream_len(), Some(len + padding));
                    check_frame(&buf[start..filled], len, padding);
                    frames.push(Found {
                        offset: base + start,
                        len,
                        padding,
                    });
                    start += len + padding;
                }
            }
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        base += start;
    }
    assert_eq!(next_frame(&[]), Frame::Incomplete);
    (frames, End::Waiting(base))
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(head & 0x0F).min(rest.len());
    let scale = 1 + usize::from(head >> 4);
    let (splits, stream) = rest.split_at(count);
    let sizes: Vec<usize> = splits.iter().map(|&b| 1 + usize::from(b) * scale).collect();

    let expected = reference(stream);
    assert_eq!(reassemble(stream, &sizes), expected, "split reads");
    // The whole stream in one read finds the same frames.
    assert_eq!(reassemble(stream, &[]), expected, "one read");
});
