//! The bytes of a [`RelayMessage`]: sans-IO encode and decode.
//!
//! Every frame starts with a type byte. Control (`1`) is the message as
//! JSON (small, rare, easy to extend and to read in a capture). Media (`2`)
//! is a fixed 32-byte header and the RTP payload:
//!
//! ```text
//!  0      type = 2
//!  1      flags: 0x01 marker, 0x04 has layer, 0x08 has audio level,
//!         0x10 voice activity, 0x20 has voice activity
//!  2      layer index (0 when none)
//!  3      payload type
//!  4      audio level (-dBov, as i8)
//!  5      reserved (0)
//!  6..8   publication epoch (u16, big endian)
//!  8..16  track id (u64)
//! 16..24  extended RTP sequence number (u64)
//! 24..32  extended RTP time (u64)
//! 32..    payload
//! ```
//!
//! Decoding never panics: a malformed frame is a [`WireError`], which the
//! shell counts (`Sfu::note_relay_malformed`) and drops.

use std::sync::Arc;

use super::{
    Control, MAX_CODECS_PER_TRACK, MAX_LAYERS, MAX_NACKS_PER_MESSAGE, MAX_PARTICIPANTS_PER_LINK,
    MAX_TRACKS_PER_LINK, RelayMessage, RelayPacket,
};
use crate::id::TrackId;

const CONTROL: u8 = 1;
const MEDIA: u8 = 2;

/// The media header's length.
pub const MEDIA_HEADER: usize = 32;

/// The largest control frame accepted (a data message's payload included).
pub const MAX_CONTROL_FRAME: usize = 256 * 1024;

const F_MARKER: u8 = 0x01;
const F_LAYER: u8 = 0x04;
const F_LEVEL: u8 = 0x08;
const F_VAD: u8 = 0x10;
const F_HAS_VAD: u8 = 0x20;

/// Why bytes from a link are not a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Nothing, or fewer bytes than the header needs.
    #[error("truncated frame ({0} bytes)")]
    Truncated(usize),
    /// The type byte is not one this version knows.
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// A control frame larger than [`MAX_CONTROL_FRAME`].
    #[error("control frame too large ({0} bytes)")]
    TooLarge(usize),
    /// The control message is not valid JSON of a known message.
    #[error("bad control message: {0}")]
    Control(String),
    /// A field is out of its range (a layer, a list too long).
    #[error("field out of range: {0}")]
    Range(&'static str),
}

/// Appends the bytes of `msg` to `out` (cleared first).
pub fn encode(msg: &RelayMessage, out: &mut Vec<u8>) {
    out.clear();
    match msg {
        RelayMessage::Control(c) => {
            out.push(CONTROL);
            // Serializing these types cannot fail (no maps with non-string
            // keys, no custom errors); an empty body would decode as an error.
            if let Err(e) = serde_json::to_writer(&mut *out, c) {
                tracing::error!(error = %e, "relay control message not encodable");
            }
        }
        RelayMessage::Media(p) => encode_media(p, out),
    }
}

fn encode_media(p: &RelayPacket, out: &mut Vec<u8>) {
    let mut flags = 0;
    for (on, f) in [
        (p.marker, F_MARKER),
        (p.layer.is_some(), F_LAYER),
        (p.audio_level.is_some(), F_LEVEL),
        (p.voice_activity == Some(true), F_VAD),
        (p.voice_activity.is_some(), F_HAS_VAD),
    ] {
        if on {
            flags |= f;
        }
    }
    out.reserve(MEDIA_HEADER + p.payload.len());
    out.extend_from_slice(&[
        MEDIA,
        flags,
        p.layer.unwrap_or(0),
        p.pt,
        p.audio_level.unwrap_or(0) as u8,
        0,
    ]);
    out.extend_from_slice(&p.epoch.to_be_bytes());
    out.extend_from_slice(&p.track.0.to_be_bytes());
    out.extend_from_slice(&p.seq.to_be_bytes());
    out.extend_from_slice(&p.time.to_be_bytes());
    out.extend_from_slice(&p.payload);
}

/// The message in `bytes`.
pub fn decode(bytes: &[u8]) -> Result<RelayMessage, WireError> {
    match bytes.first() {
        None => Err(WireError::Truncated(0)),
        Some(&CONTROL) => decode_control(&bytes[1..]).map(RelayMessage::Control),
        Some(&MEDIA) => decode_media(bytes).map(RelayMessage::Media),
        Some(t) => Err(WireError::UnknownType(*t)),
    }
}

fn decode_control(body: &[u8]) -> Result<Control, WireError> {
    if body.len() > MAX_CONTROL_FRAME {
        return Err(WireError::TooLarge(body.len()));
    }
    let c: Control = serde_json::from_slice(body).map_err(|e| WireError::Control(e.to_string()))?;
    // Bounds that keep one message from costing more than its size says.
    match &c {
        Control::Nack { seqs, layer, .. } => {
            if seqs.len() > MAX_NACKS_PER_MESSAGE {
                return Err(WireError::Range("nack list"));
            }
            if usize::from(*layer) >= MAX_LAYERS {
                return Err(WireError::Range("layer"));
            }
        }
        Control::TrackPublished { track, .. } => {
            if track.rids.len() > MAX_LAYERS {
                return Err(WireError::Range("rids"));
            }
            if track.codecs.len() > MAX_CODECS_PER_TRACK {
                return Err(WireError::Range("codecs"));
            }
        }
        Control::LayerBitrates { bitrates, .. } if bitrates.len() > MAX_LAYERS => {
            return Err(WireError::Range("bitrates"));
        }
        Control::Speakers { levels, .. } if levels.len() > MAX_PARTICIPANTS_PER_LINK => {
            return Err(WireError::Range("speakers"));
        }
        Control::RoomLinked {
            participants,
            tracks,
            ..
        } if participants.len() > MAX_PARTICIPANTS_PER_LINK
            || tracks.len() > MAX_TRACKS_PER_LINK =>
        {
            return Err(WireError::Range("room state"));
        }
        _ => {}
    }
    Ok(c)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

fn decode_media(b: &[u8]) -> Result<RelayPacket, WireError> {
    if b.len() < MEDIA_HEADER {
        return Err(WireError::Truncated(b.len()));
    }
    let flags = b[1];
    let layer = (flags & F_LAYER != 0).then_some(b[2]);
    if layer.is_some_and(|l| usize::from(l) >= MAX_LAYERS) {
        return Err(WireError::Range("layer"));
    }
    Ok(RelayPacket {
        track: TrackId(u64_at(b, 8)),
        layer,
        seq: u64_at(b, 16),
        time: u64_at(b, 24),
        pt: b[3],
        marker: flags & F_MARKER != 0,
        audio_level: (flags & F_LEVEL != 0).then_some(b[4] as i8),
        voice_activity: (flags & F_HAS_VAD != 0).then_some(flags & F_VAD != 0),
        epoch: u16::from_be_bytes([b[6], b[7]]),
        payload: Arc::from(&b[MEDIA_HEADER..]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{ParticipantId, RoomId};
    use crate::relay::RelayTrack;
    use crate::signal::{ParticipantInfo, Permissions, TrackInfo, TrackKind};

    fn packet() -> RelayPacket {
        RelayPacket {
            track: TrackId(0x0102_0304_0506_0708),
            layer: Some(2),
            seq: 77,
            time: 1 << 33,
            pt: 96,
            marker: true,
            audio_level: Some(-30),
            voice_activity: Some(true),
            epoch: 0xabcd,
            payload: Arc::from(&b"payload"[..]),
        }
    }

    fn controls() -> Vec<Control> {
        let room = RoomId::new("r1").expect("room");
        let params = str0m::format::PayloadParams::new(
            96.into(),
            Some(97.into()),
            str0m::format::CodecSpec {
                codec: str0m::format::Codec::Vp8,
                clock_rate: str0m::media::Frequency::NINETY_KHZ,
                channels: None,
                format: Default::default(),
            },
        );
        vec![
            Control::RoomLinked {
                room: room.clone(),
                answer: false,
                participants: vec![ParticipantId(5)],
                tracks: vec![TrackId(9)],
                options: Some(crate::relay::RelayRoomOptions {
                    max_participants: 3,
                    metadata: "m".into(),
                }),
            },
            Control::ParticipantJoined {
                room: room.clone(),
                info: ParticipantInfo {
                    id: ParticipantId(5),
                    identity: "alice".into(),
                    name: "Alice".into(),
                    account: None,
                    device: Some("d1".into()),
                    tracks: vec![TrackInfo {
                        id: TrackId(9),
                        kind: TrackKind::Video,
                        muted: false,
                        source: crate::signal::TrackSource::Screen,
                    }],
                    permissions: Permissions::default(),
                },
            },
            Control::TrackPublished {
                room: room.clone(),
                participant: ParticipantId(5),
                track: RelayTrack {
                    id: TrackId(9),
                    kind: TrackKind::Video,
                    muted: true,
                    source: Some(crate::signal::TrackSource::Screen),
                    rids: vec!["q".into(), "h".into()],
                    codecs: vec![params],
                },
            },
            Control::Nack {
                track: TrackId(9),
                layer: 1,
                seqs: vec![1, 2, 3],
            },
            Control::Data {
                room,
                from: None,
                topic: Some("chat".into()),
                payload: vec![0, 1, 255],
                destinations: vec![],
            },
        ]
    }

    #[test]
    fn media_round_trips() {
        let mut out = Vec::new();
        for p in [
            packet(),
            RelayPacket {
                layer: None,
                audio_level: None,
                marker: false,
                voice_activity: None,
                ..packet()
            },
        ] {
            encode(&RelayMessage::Media(p.clone()), &mut out);
            assert_eq!(out.len(), MEDIA_HEADER + p.payload.len());
            match decode(&out) {
                Ok(RelayMessage::Media(back)) => assert_eq!(back, p),
                other => panic!("not media back: {other:?}"),
            }
        }
    }

    #[test]
    fn control_round_trips() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for c in controls() {
            encode(&RelayMessage::Control(c), &mut a);
            let back = decode(&a).expect("decodes");
            assert!(matches!(back, RelayMessage::Control(_)));
            encode(&back, &mut b);
            assert_eq!(a, b, "{}", String::from_utf8_lossy(&a));
        }
    }

    #[test]
    fn out_of_range_fields_are_refused() {
        let mut out = Vec::new();
        encode(&RelayMessage::Media(packet()), &mut out);
        out[2] = MAX_LAYERS as u8;
        assert!(matches!(decode(&out), Err(WireError::Range(_))));
        let nack = Control::Nack {
            track: TrackId(1),
            layer: 0,
            seqs: (0..MAX_NACKS_PER_MESSAGE as u64 + 1).collect(),
        };
        encode(&RelayMessage::Control(nack), &mut out);
        assert!(matches!(decode(&out), Err(WireError::Range(_))));
        // A room name that is no room name.
        let bad = br#"{"t":"room_linked","room":"a b"}"#;
        let mut frame = vec![CONTROL];
        frame.extend_from_slice(bad);
        assert!(matches!(decode(&frame), Err(WireError::Control(_))));
    }

    /// Random and truncated bytes: errors, never a panic (fuzz-ish, seeded).
    #[test]
    fn garbage_never_panics() {
        let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            rng ^= rng >> 12;
            rng ^= rng << 25;
            rng ^= rng >> 27;
            rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let mut valid = Vec::new();
        for c in controls() {
            let mut out = Vec::new();
            encode(&RelayMessage::Control(c), &mut out);
            valid.push(out);
        }
        let mut out = Vec::new();
        encode(&RelayMessage::Media(packet()), &mut out);
        valid.push(out);
        let mut decoded = 0u32;
        for v in &valid {
            // Every truncation.
            for n in 0..v.len() {
                let _ = decode(&v[..n]);
            }
            // Random byte flips.
            for _ in 0..2000 {
                let mut m = v.clone();
                let flips = 1 + next() % 4;
                for _ in 0..flips {
                    let i = (next() % m.len() as u64) as usize;
                    m[i] = next() as u8;
                }
                if decode(&m).is_ok() {
                    decoded += 1;
                }
            }
        }
        // Pure noise of every length up to 300.
        for len in 0..300 {
            let noise: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = decode(&noise);
        }
        // Some flips still decode (a payload byte); most of a JSON's do not.
        assert!(decoded > 0);
    }
}
