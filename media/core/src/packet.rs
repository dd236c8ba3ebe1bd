//! One RTP packet of a publication: the unit of forwarding.
//!
//! Every peer's `Rtc` runs in str0m's RTP mode, so media is forwarded packet
//! by packet, never depacketized and packetized again. What the fan-out
//! needs to know about a packet (whether a keyframe starts in it, its VP8
//! picture numbering) is read from the payload once, where the packet
//! arrives, and kept in the [`Packet`], so that a packet relayed to another
//! core carries it too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::format::{Codec, PayloadParams};
use str0m::media::{MediaTime, Pt};
use str0m::rtp::{SeqNo, Vp8Descriptor};

/// One RTP packet of a publication's stream (one simulcast layer of it).
#[derive(Debug, Clone)]
pub struct Packet {
    /// Extended sequence number in its layer's stream (no wrap-around).
    pub seq: SeqNo,
    /// Extended RTP time, in the codec's clock rate.
    pub time: MediaTime,
    /// The RTP marker bit (video: the last packet of a frame; audio: the
    /// start of a talk spurt).
    pub marker: bool,
    /// The payload type on the publisher's connection.
    pub pt: Pt,
    /// The codec of `pt` on the publisher's connection; a subscriber's
    /// payload type is matched against it.
    pub params: PayloadParams,
    /// The RTP payload (no header), shared by every subscriber.
    pub payload: Arc<[u8]>,
    /// The audio level extension (-dBov), if the publisher sent one.
    pub audio_level: Option<i8>,
    /// The voice activity flag of the audio level extension.
    pub voice_activity: Option<bool>,
    /// A video keyframe starts in this packet: a subscriber may start (or
    /// switch layers) here.
    pub keyframe_start: bool,
    /// The VP8 payload descriptor, for VP8 packets that have a valid one.
    pub vp8: Option<Vp8Descriptor>,
    /// When the packet arrived at the origin core.
    pub arrival: Instant,
}

/// Why a payload cannot be forwarded: its codec does not allow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// An empty payload where the codec needs at least a header.
    #[error("empty payload")]
    Empty,
    /// A VP8 payload descriptor that does not parse (RFC 7741 4.2).
    #[error("malformed VP8 payload descriptor")]
    Vp8,
    /// An H264 NAL unit type that RTP does not carry (0, 30, 31), or a
    /// truncated aggregation or fragmentation unit (RFC 6184 5.7, 5.8).
    #[error("malformed H264 payload")]
    H264,
}

impl Packet {
    /// A packet of codec `params`, its payload inspected once: keyframe start
    /// and VP8 descriptor. Refused if the payload is not one its codec allows
    /// (a subscriber's decoder would be fed garbage).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        seq: SeqNo,
        time: MediaTime,
        marker: bool,
        pt: Pt,
        params: PayloadParams,
        payload: Arc<[u8]>,
        arrival: Instant,
    ) -> Result<Packet, PayloadError> {
        let codec = params.spec().codec;
        let (keyframe_start, vp8) = match codec {
            Codec::Vp8 => {
                let d = Vp8Descriptor::parse(&payload).map_err(|_| PayloadError::Vp8)?;
                (
                    vp8_keyframe_start(&payload).ok_or(PayloadError::Vp8)?,
                    Some(d),
                )
            }
            Codec::H264 => (h264_keyframe_start(&payload)?, None),
            _ if codec.is_video() && payload.is_empty() => return Err(PayloadError::Empty),
            _ => (false, None),
        };
        Ok(Packet {
            seq,
            time,
            marker,
            pt,
            params,
            payload,
            audio_level: None,
            voice_activity: None,
            keyframe_start,
            vp8,
            arrival,
        })
    }

    /// With the audio level extension's values.
    pub fn with_audio_level(mut self, level: Option<i8>, voice_activity: Option<bool>) -> Self {
        self.audio_level = level;
        self.voice_activity = voice_activity;
        self
    }

    /// The VP8 picture id (7 or 15 bits), when the descriptor has one.
    pub fn picture_id(&self) -> Option<u16> {
        self.vp8.and_then(|d| d.picture_id())
    }

    /// The VP8 TL0PICIDX, when the descriptor has one.
    pub fn tl0_pic_idx(&self) -> Option<u8> {
        self.vp8.and_then(|d| d.tl0_pic_idx())
    }

    /// Whether it is video (paced, NACKed, switched at keyframes).
    pub fn is_video(&self) -> bool {
        self.params.spec().codec.is_video()
    }
}

/// The VP8 payload descriptor's length and whether a key frame starts in
/// the packet (RFC 7741 4.2 and 4.3): the start of partition 0 (S set,
/// PID 0) whose payload header has the P bit (inverse key frame flag)
/// clear. `None` if the descriptor is truncated.
pub(crate) fn vp8_keyframe_start(payload: &[u8]) -> Option<bool> {
    let b0 = *payload.first()?;
    let mut at = 1;
    if b0 & 0x80 != 0 {
        // X: the extension byte says which optional fields follow.
        let x = *payload.get(at)?;
        at += 1;
        if x & 0x80 != 0 {
            // I: PictureID, 15 bits when its M bit is set.
            let m = *payload.get(at)? & 0x80 != 0;
            at += if m { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            at += 1; // L: TL0PICIDX
        }
        if x & 0x30 != 0 {
            at += 1; // T or K: TID/Y/KEYIDX
        }
    }
    let header = *payload.get(at)?;
    let start_of_partition = b0 & 0x10 != 0;
    let partition = b0 & 0x07;
    Some(start_of_partition && partition == 0 && header & 0x01 == 0)
}

/// NAL unit types (RFC 6184 table 1, H.264 table 7-1).
const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_STAP_A: u8 = 24;
const NAL_FU_A: u8 = 28;

/// Whether an H264 keyframe starts in the packet: it carries an SPS or an
/// IDR slice as a single NAL unit, inside a STAP-A, or as the first
/// fragment of an FU-A (RFC 6184 5.6-5.8). A keyframe is sent as SPS and
/// PPS, then the IDR: the packet with the SPS is its start, and one with
/// only the IDR's start counts too (the SPS may have come in an earlier
/// packet of the same frame, or not at all when the decoder has it).
pub(crate) fn h264_keyframe_start(payload: &[u8]) -> Result<bool, PayloadError> {
    let key = |t: u8| t == NAL_IDR || t == NAL_SPS;
    let first = *payload.first().ok_or(PayloadError::Empty)?;
    match first & 0x1f {
        0 | 30 | 31 => Err(PayloadError::H264),
        NAL_STAP_A => {
            // Aggregated NAL units, each after its 16-bit size.
            let mut rest = &payload[1..];
            let mut found = false;
            if rest.is_empty() {
                return Err(PayloadError::H264);
            }
            while !rest.is_empty() {
                let [hi, lo, tail @ ..] = rest else {
                    return Err(PayloadError::H264);
                };
                let size = usize::from(u16::from_be_bytes([*hi, *lo]));
                if size == 0 || size > tail.len() {
                    return Err(PayloadError::H264);
                }
                found |= key(tail[0] & 0x1f);
                rest = &tail[size..];
            }
            Ok(found)
        }
        NAL_FU_A => {
            let fu = *payload.get(1).ok_or(PayloadError::H264)?;
            Ok(fu & 0x80 != 0 && key(fu & 0x1f))
        }
        t => Ok(key(t)),
    }
}

/// How long a packet missing from a video stream may take to be repaired
/// (by NACK and retransmission) before the frames after it are given up on
/// and the publisher is asked for a keyframe. str0m's frame API gave up
/// after about as long (its receive buffer's recovery deadline).
pub(crate) const REPAIR_DEADLINE: Duration = Duration::from_millis(300);

/// How many missing packets are remembered; a larger gap at once (an
/// outage) is not waited for.
const MAX_MISSING: usize = 64;

/// Watches one incoming stream's sequence numbers for gaps that are not
/// repaired in time (the signal str0m's frame API gave as `contiguous`).
#[derive(Debug, Default)]
pub(crate) struct GapWatch {
    /// The highest sequence number seen.
    highest: Option<u64>,
    /// Missing sequence numbers, oldest first, with when they went missing.
    missing: Vec<(u64, Instant)>,
}

impl GapWatch {
    /// Notes packet `seq` arriving at `now`; true when a gap is now given up
    /// on (a keyframe is needed for the pictures after it).
    pub fn observe(&mut self, seq: u64, now: Instant) -> bool {
        let mut lost = false;
        match self.highest {
            None => self.highest = Some(seq),
            Some(h) if seq > h => {
                let gap = seq - h - 1;
                if gap as usize > MAX_MISSING {
                    // Too many to wait for: lost as of now.
                    self.missing.clear();
                    lost = true;
                } else {
                    self.missing.extend((h + 1..seq).map(|s| (s, now)));
                }
                self.highest = Some(seq);
            }
            // A repair or a late packet fills its hole.
            Some(_) => self.missing.retain(|(s, _)| *s != seq),
        }
        if self.missing.len() > MAX_MISSING {
            self.missing.clear();
            lost = true;
        }
        if self
            .missing
            .first()
            .is_some_and(|(_, at)| now.saturating_duration_since(*at) >= REPAIR_DEADLINE)
        {
            // Given up: everything missing now is as good as lost.
            self.missing.clear();
            lost = true;
        }
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_keyframe_start_follows_rfc_7741() {
        // X, S, PID 0; I with a 15-bit picture id 0x1234; L with TL0PICIDX;
        // T with TID; then the VP8 payload header with P clear (key frame).
        let key = [0x90, 0xe0, 0x92, 0x34, 0x07, 0x20, 0x10, 0x02, 0x00];
        assert_eq!(vp8_keyframe_start(&key), Some(true));
        let d = Vp8Descriptor::parse(&key).expect("valid descriptor");
        assert_eq!(d.picture_id(), Some(0x1234));
        assert_eq!(d.tl0_pic_idx(), Some(0x07));
        // The same with P set: an interframe.
        let inter = [0x90, 0xe0, 0x92, 0x34, 0x07, 0x20, 0x11, 0x02, 0x00];
        assert_eq!(vp8_keyframe_start(&inter), Some(false));
        // A key frame's continuation packet (S clear) does not start it.
        let cont = [0x80, 0x80, 0x92, 0x34, 0xaa, 0xbb];
        assert_eq!(vp8_keyframe_start(&cont), Some(false));
        // Partition 1's start is no frame start either.
        let part1 = [0x11, 0x10, 0x02];
        assert_eq!(vp8_keyframe_start(&part1), Some(false));
        // Minimal descriptor, no extension (S, PID 0), then a key frame's
        // frame tag (P clear) and start code 9d 01 2a.
        let bare = [0x10, 0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a];
        assert_eq!(vp8_keyframe_start(&bare), Some(true));
        // A 7-bit picture id (M clear).
        let short = [0x90, 0x80, 0x05, 0x50];
        assert_eq!(vp8_keyframe_start(&short), Some(true));
        assert_eq!(
            Vp8Descriptor::parse(&short).expect("valid").picture_id(),
            Some(5)
        );
        // str0m's own reading of the descriptor agrees on every one of them.
        for p in [&key[..], &inter, &cont, &part1, &bare, &short] {
            let d = Vp8Descriptor::parse(p).expect("valid descriptor");
            assert_eq!(
                vp8_keyframe_start(p),
                Some(d.starts_keyframe(p)),
                "{p:02x?}"
            );
        }
        // Truncated: the extension promises a picture id that is not there.
        assert_eq!(vp8_keyframe_start(&[0x90, 0x80]), None);
        assert_eq!(vp8_keyframe_start(&[]), None);
    }

    #[test]
    fn h264_keyframe_start_follows_rfc_6184() {
        // Single NAL units: SPS (0x67), IDR (0x65), non-IDR slice (0x41), PPS (0x68).
        assert_eq!(h264_keyframe_start(&[0x67, 0x42, 0x00, 0x1f]), Ok(true));
        assert_eq!(h264_keyframe_start(&[0x65, 0x88, 0x84]), Ok(true));
        assert_eq!(h264_keyframe_start(&[0x41, 0x9a, 0x02]), Ok(false));
        assert_eq!(h264_keyframe_start(&[0x68, 0xce, 0x3c, 0x80]), Ok(false));
        // STAP-A (0x78) with SPS (4 bytes) and PPS (2 bytes): a keyframe's start.
        let stap = [
            0x78, 0x00, 0x04, 0x67, 0x42, 0x00, 0x1f, 0x00, 0x02, 0x68, 0xce,
        ];
        assert_eq!(h264_keyframe_start(&stap), Ok(true));
        // STAP-A with only a PPS and a non-IDR slice.
        let stap = [0x78, 0x00, 0x02, 0x68, 0xce, 0x00, 0x02, 0x41, 0x9a];
        assert_eq!(h264_keyframe_start(&stap), Ok(false));
        // A STAP-A whose size runs past the end is malformed.
        let bad = [0x78, 0x00, 0x09, 0x67, 0x42];
        assert_eq!(h264_keyframe_start(&bad), Err(PayloadError::H264));
        // FU-A (0x7c): first fragment of an IDR (S + type 5), a middle one, the last.
        assert_eq!(h264_keyframe_start(&[0x7c, 0x85, 0x88, 0x84]), Ok(true));
        assert_eq!(h264_keyframe_start(&[0x7c, 0x05, 0x11]), Ok(false));
        assert_eq!(h264_keyframe_start(&[0x7c, 0x45, 0x11]), Ok(false));
        // FU-A start of a non-IDR slice.
        assert_eq!(h264_keyframe_start(&[0x7c, 0x81, 0x9a]), Ok(false));
        // Types RTP does not carry, and nothing at all.
        assert_eq!(h264_keyframe_start(&[0x00]), Err(PayloadError::H264));
        assert_eq!(h264_keyframe_start(&[0x1e]), Err(PayloadError::H264));
        assert_eq!(h264_keyframe_start(&[]), Err(PayloadError::Empty));
        assert_eq!(h264_keyframe_start(&[0x7c]), Err(PayloadError::H264));
    }

    #[test]
    fn gap_watch_gives_up_on_a_hole_not_repaired_in_time() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut g = GapWatch::default();
        assert!(!g.observe(100, ms(0)));
        assert!(!g.observe(101, ms(10)));
        // 102 and 103 missing; repaired in time: no keyframe.
        assert!(!g.observe(104, ms(20)));
        assert!(!g.observe(102, ms(60)));
        assert!(!g.observe(103, ms(70)));
        assert!(!g.observe(105, ms(400)));
        // 106 missing and never repaired: given up once, at the deadline.
        assert!(!g.observe(107, ms(410)));
        assert!(!g.observe(108, ms(500)));
        assert!(g.observe(109, ms(410 + 300)));
        assert!(!g.observe(110, ms(720)));
        // Its late arrival after that changes nothing.
        assert!(!g.observe(106, ms(730)));
        // An outage longer than can be waited for is lost at once.
        assert!(g.observe(110 + MAX_MISSING as u64 + 2, ms(740)));
    }
}
