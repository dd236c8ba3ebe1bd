//! LiveKit's names for vela's things (issue 20), as LiveKit's SDKs expect
//! them: participant and track sids `PA_<n>` and `TR_<n>` for vela's ids
//! `PA<n>` and `TR<n>`, and a room sid, `RM_<name>`.

/// Participants' sids start with this.
pub const PARTICIPANT: &str = "PA";
/// Tracks' sids start with this.
pub const TRACK: &str = "TR";

/// vela's id (`PA3`, `TR5`) as a LiveKit sid (`PA_3`, `TR_5`); `prefix`
/// is [`PARTICIPANT`] or [`TRACK`].
pub fn sid(id: &str, prefix: &str) -> String {
    match id.strip_prefix(prefix) {
        Some(rest) if !rest.starts_with('_') => format!("{prefix}_{rest}"),
        _ => id.to_owned(),
    }
}

/// A LiveKit sid (`TR_5`), or vela's id (`TR5`), as vela's id.
pub fn vela_id(sid: &str, prefix: &str) -> String {
    match sid
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
    {
        Some(n) => format!("{prefix}{n}"),
        None => sid.to_owned(),
    }
}

/// A room's sid: vela names rooms only, so the sid follows the name (a room
/// closed and opened again has the same one, unlike in LiveKit).
pub fn room_sid(name: &str) -> String {
    format!("RM_{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sids_go_both_ways() {
        assert_eq!(sid("PA3", PARTICIPANT), "PA_3");
        assert_eq!(sid("TR12", TRACK), "TR_12");
        assert_eq!(sid("TR_12", TRACK), "TR_12");
        assert_eq!(vela_id("TR_12", TRACK), "TR12");
        assert_eq!(vela_id("TR12", TRACK), "TR12");
        assert_eq!(vela_id("nope", TRACK), "nope");
        assert_eq!(room_sid("demo"), "RM_demo");
    }
}
