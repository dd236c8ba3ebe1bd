//! Simulcast layer choice: which layer of each video a subscriber gets.
//!
//! Sans-IO and pure: given a subscriber's bandwidth estimate and, per video,
//! the layers' measured bitrates and the largest layer its rendered size
//! needs, it returns the layer to forward for each. Upgrades need headroom,
//! downgrades happen as soon as the budget no longer covers the current
//! choice, so the choice does not flap around the estimate.

/// Share of the estimate that may be spent when upgrading a layer; the rest
/// is headroom against flapping.
const UPGRADE_HEADROOM: f64 = 0.85;

/// What one subscribed video asks of the allocation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Demand<'a> {
    /// Measured bitrate (bits/s) of each layer, lowest layer first; 0 while a
    /// layer has not been seen.
    pub bitrates: &'a [u64],
    /// The highest layer worth sending for the rendered size, or `None` when
    /// the subscriber does not want this video at all (hidden or muted).
    pub max_layer: Option<usize>,
    /// The layer forwarded now.
    pub current: Option<usize>,
}

/// Picks a layer for every demand within `budget` bits/s.
///
/// Every wanted video first gets its lowest active layer (a video is never
/// dropped for bandwidth while its lowest layer fits), then layers are raised
/// one step at a time, round robin, while the budget allows.
pub(crate) fn allocate(budget: u64, demands: &[Demand<'_>]) -> Vec<Option<usize>> {
    let mut choice: Vec<Option<usize>> = vec![None; demands.len()];
    let mut spent: u64 = 0;
    let cost = |d: &Demand<'_>, layer: usize| d.bitrates.get(layer).copied().unwrap_or(0);
    let active = |d: &Demand<'_>, layer: usize| layer == 0 || cost(d, layer) > 0;

    for (i, d) in demands.iter().enumerate() {
        if d.max_layer.is_none() || d.bitrates.is_empty() {
            continue;
        }
        // The lowest layer always: a stalled picture is worse than a soft one.
        choice[i] = Some(0);
        spent += cost(d, 0);
    }
    loop {
        let mut raised = false;
        for (i, d) in demands.iter().enumerate() {
            let (Some(c), Some(max)) = (choice[i], d.max_layer) else {
                continue;
            };
            let next = c + 1;
            if next > max || next >= d.bitrates.len() || !active(d, next) {
                continue;
            }
            let extra = cost(d, next).saturating_sub(cost(d, c));
            // Keeping what is forwarded now needs no headroom; going above it does.
            let limit = if d.current.is_some_and(|cur| next <= cur) {
                budget as f64
            } else {
                budget as f64 * UPGRADE_HEADROOM
            };
            if (spent + extra) as f64 <= limit {
                choice[i] = Some(next);
                spent += extra;
                raised = true;
            }
        }
        if !raised {
            return choice;
        }
    }
}

/// The highest layer worth sending for a video rendered `width` x `height`,
/// with layers at full, half and quarter resolution of `full_width`.
pub(crate) fn layer_for_size(width: u32, height: u32, full_width: u32, layers: usize) -> usize {
    if layers == 0 {
        return 0;
    }
    let top = layers - 1;
    let want = width.max(height * 16 / 9);
    // Layer i has full_width / 2^(top - i) pixels across.
    (0..=top)
        .find(|&i| full_width >> (top - i) >= want)
        .unwrap_or(top)
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: [u64; 3] = [150_000, 500_000, 1_500_000];

    fn d(max: Option<usize>, current: Option<usize>) -> Demand<'static> {
        Demand {
            bitrates: &L,
            max_layer: max,
            current,
        }
    }

    #[test]
    fn plenty_of_bandwidth_gives_the_top_layer() {
        assert_eq!(allocate(5_000_000, &[d(Some(2), None)]), vec![Some(2)]);
    }

    #[test]
    fn a_capped_link_gets_the_low_layer() {
        // 300 kbit/s: only the 150 kbit/s layer fits.
        assert_eq!(allocate(300_000, &[d(Some(2), Some(2))]), vec![Some(0)]);
        // Even below its cost the lowest layer stays: no stall.
        assert_eq!(allocate(50_000, &[d(Some(2), None)]), vec![Some(0)]);
    }

    #[test]
    fn the_rendered_size_caps_the_layer() {
        assert_eq!(allocate(10_000_000, &[d(Some(1), None)]), vec![Some(1)]);
        assert_eq!(allocate(10_000_000, &[d(None, Some(2))]), vec![None]);
    }

    #[test]
    fn budget_is_shared_round_robin() {
        // 1.4 Mbit/s (1.19 usable for upgrades) for three videos: all get
        // low (450k), then mid for two (1.15M); a third mid would need 1.5M.
        let got = allocate(
            1_400_000,
            &[d(Some(2), None), d(Some(2), None), d(Some(2), None)],
        );
        assert_eq!(got, vec![Some(1), Some(1), Some(0)]);
    }

    #[test]
    fn upgrades_need_headroom_but_keeping_does_not() {
        // 650 kbit/s covers low+mid exactly (500k): keeping mid is fine...
        assert_eq!(allocate(520_000, &[d(Some(2), Some(1))]), vec![Some(1)]);
        // ...but upgrading to it needs 15% more.
        assert_eq!(allocate(520_000, &[d(Some(2), Some(0))]), vec![Some(0)]);
        assert_eq!(allocate(600_000, &[d(Some(2), Some(0))]), vec![Some(1)]);
    }

    #[test]
    fn layers_not_seen_yet_are_skipped() {
        let rates = [150_000, 0, 0];
        let dm = Demand {
            bitrates: &rates,
            max_layer: Some(2),
            current: None,
        };
        assert_eq!(allocate(10_000_000, &[dm]), vec![Some(0)]);
    }

    #[test]
    fn sizes_map_to_layers() {
        assert_eq!(layer_for_size(1280, 720, 1280, 3), 2);
        assert_eq!(layer_for_size(640, 360, 1280, 3), 1);
        assert_eq!(layer_for_size(320, 180, 1280, 3), 0);
        assert_eq!(layer_for_size(100, 100, 1280, 3), 0);
        assert_eq!(layer_for_size(4000, 2000, 1280, 3), 2);
        assert_eq!(layer_for_size(640, 360, 1280, 1), 0);
    }
}
