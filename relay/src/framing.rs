//! Finding message boundaries in a TCP or TLS byte stream (RFC 8656 §12.5, RFC 8489 §6.2.2).
//!
//! A stream carries STUN messages and ChannelData frames back to back. STUN messages say their
//! length in the header; ChannelData frames say theirs and are padded to a multiple of 4 bytes
//! over streams. The first two bits tell the two apart: `00` is STUN, `01` is ChannelData.

/// The STUN header size.
const STUN_HEADER: usize = 20;
/// The ChannelData header size.
const CHANNEL_HEADER: usize = 4;

/// What the start of a stream buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// Not enough bytes yet to know.
    Incomplete,
    /// A frame of `len` bytes, followed by `padding` bytes to skip.
    Complete {
        /// The frame's length, as handed to the core.
        len: usize,
        /// Padding after it on the stream.
        padding: usize,
    },
    /// Neither STUN nor ChannelData: the stream cannot be resynchronised.
    Invalid,
}

impl Frame {
    /// Bytes the frame occupies on the stream, padding included.
    pub fn stream_len(self) -> Option<usize> {
        match self {
            Frame::Complete { len, padding } => Some(len + padding),
            _ => None,
        }
    }
}

/// The largest frame a stream can carry: a STUN header plus a 16-bit length.
pub const MAX_FRAME: usize = STUN_HEADER + u16::MAX as usize + 3;

/// Classifies the bytes at the start of `buf`. A frame counts as complete only when its
/// padding has arrived too, so the caller can always skip `len + padding`.
pub fn next_frame(buf: &[u8]) -> Frame {
    let Some(&first) = buf.first() else {
        return Frame::Incomplete;
    };
    let (header, padding_unit) = match first & 0xC0 {
        0x00 => (STUN_HEADER, false),
        0x40 => (CHANNEL_HEADER, true),
        _ => return Frame::Invalid,
    };
    if buf.len() < 4 {
        return Frame::Incomplete;
    }
    let body = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    let len = header + body;
    // STUN bodies are multiples of 4 already; only ChannelData is padded on streams.
    let padding = if padding_unit { (4 - len % 4) % 4 } else { 0 };
    if buf.len() < len + padding {
        return Frame::Incomplete;
    }
    Frame::Complete { len, padding }
}

/// How many more bytes the frame at the start of `buf` needs to be complete (at least one
/// while its length is not known yet); 0 when it is complete, or invalid.
pub fn bytes_wanted(buf: &[u8]) -> usize {
    match next_frame(buf) {
        Frame::Complete { .. } | Frame::Invalid => 0,
        Frame::Incomplete if buf.len() < 4 => 4 - buf.len(),
        Frame::Incomplete => {
            let body = u16::from_be_bytes([buf[2], buf[3]]) as usize;
            let (header, padded) = if buf[0] & 0xC0 == 0 {
                (STUN_HEADER, false)
            } else {
                (CHANNEL_HEADER, true)
            };
            let len = header + body;
            let padding = if padded { (4 - len % 4) % 4 } else { 0 };
            (len + padding).saturating_sub(buf.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stun_frames_use_the_header_length() {
        let mut msg = vec![0x00, 0x01, 0x00, 0x08];
        msg.extend_from_slice(&[0u8; 16]);
        assert_eq!(next_frame(&msg), Frame::Incomplete);
        msg.extend_from_slice(&[0u8; 8]);
        assert_eq!(
            next_frame(&msg),
            Frame::Complete {
                len: 28,
                padding: 0
            }
        );
        msg.extend_from_slice(&[0x00, 0x01]);
        assert_eq!(
            next_frame(&msg),
            Frame::Complete {
                len: 28,
                padding: 0
            }
        );
    }

    #[test]
    fn channel_data_waits_for_its_padding() {
        let frame = [0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5];
        assert_eq!(next_frame(&frame), Frame::Incomplete);
        let mut padded = frame.to_vec();
        padded.extend_from_slice(&[0, 0, 0]);
        assert_eq!(next_frame(&padded), Frame::Complete { len: 9, padding: 3 });
        assert_eq!(next_frame(&padded).stream_len(), Some(12));
    }

    #[test]
    fn other_leading_bits_are_invalid_and_short_input_incomplete() {
        assert_eq!(next_frame(&[0x80, 0, 0, 0]), Frame::Invalid);
        assert_eq!(next_frame(&[0xC0]), Frame::Invalid);
        assert_eq!(next_frame(&[]), Frame::Incomplete);
        assert_eq!(next_frame(&[0x40, 0x00]), Frame::Incomplete);
    }

    #[test]
    fn bytes_wanted_is_what_completes_the_frame() {
        assert_eq!(bytes_wanted(&[]), 4);
        assert_eq!(bytes_wanted(&[0x00, 0x01]), 2);
        // A STUN header announcing 8 bytes of body: 28 in all.
        assert_eq!(bytes_wanted(&[0x00, 0x01, 0x00, 0x08]), 24);
        // ChannelData of 5 bytes: 9, padded to 12.
        assert_eq!(bytes_wanted(&[0x40, 0x00, 0x00, 0x05, 1]), 7);
        assert_eq!(
            bytes_wanted(&[0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0]),
            0
        );
        assert_eq!(bytes_wanted(&[0x80, 0, 0, 0]), 0);
    }

    #[test]
    fn the_largest_frames_fit_max_frame() {
        let stun = [0x00, 0x01, 0xFF, 0xFF];
        let mut buf = stun.to_vec();
        buf.resize(MAX_FRAME, 0);
        assert!(next_frame(&buf).stream_len().unwrap() <= MAX_FRAME);
        let mut cd = vec![0x40, 0x00, 0xFF, 0xFF];
        cd.resize(MAX_FRAME, 0);
        assert!(next_frame(&cd).stream_len().unwrap() <= MAX_FRAME);
    }
}
