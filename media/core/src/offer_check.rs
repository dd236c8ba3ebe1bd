//! What a client's offer must not say before str0m negotiates it: a
//! payload type mapped to two codecs, or in audio and in video sections
//! at once, makes str0m's codec matching claim it twice and panic (found
//! by fuzzing). The wall around each peer's `Rtc` would contain the panic,
//! but such an offer deserves a clear refusal, not a failed connection.

use std::collections::HashMap;

/// Checks the offer's text (as str0m serializes it); the reason if refused.
pub(crate) fn check(sdp: &str) -> Result<(), String> {
    // Payload type -> (section kind, its rtpmap).
    let mut seen: HashMap<&str, (&str, &str)> = HashMap::new();
    let mut kind = "";
    for line in sdp.lines() {
        let line = line.trim_end();
        if let Some(m) = line.strip_prefix("m=") {
            kind = m.split(' ').next().unwrap_or("");
            continue;
        }
        let Some(map) = line.strip_prefix("a=rtpmap:") else {
            continue;
        };
        let Some((pt, encoding)) = map.split_once(' ') else {
            continue;
        };
        match seen.get(pt) {
            Some((k, e)) if *k != kind || !e.eq_ignore_ascii_case(encoding) => {
                return Err(format!(
                    "payload type {pt} is mapped twice: {e} ({k}) and {encoding} ({kind})"
                ));
            }
            Some(_) => {}
            None => {
                seen.insert(pt, (kind, encoding));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    const TWO_VIDEO_SECTIONS: &str = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n";

    #[test]
    fn a_browsers_offer_passes() {
        // Several video sections reuse their payload types, as browsers do.
        assert_eq!(check(TWO_VIDEO_SECTIONS), Ok(()));
    }

    #[test]
    fn a_payload_type_in_audio_and_video_or_of_two_codecs_is_refused() {
        let cross = TWO_VIDEO_SECTIONS.replace(
            "a=rtpmap:111 opus/48000/2\r\n",
            "a=rtpmap:111 opus/48000/2\r\na=rtpmap:96 VP8/90000\r\n",
        );
        let e = check(&cross).unwrap_err();
        assert!(e.contains("payload type 96"), "{e}");
        let two_codecs = TWO_VIDEO_SECTIONS.replacen(
            "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000",
            "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 H264/90000",
            1,
        );
        assert!(check(&two_codecs).is_err());
    }
}
