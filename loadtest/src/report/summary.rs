//! `vela-loadtest summarize`: medians and ranges over saved run reports.

use std::fmt::Write;

use super::group;

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Medians over run reports grouped by label and description: one Markdown row per
/// group, `median (min-max)` where runs differ.
pub fn summarize(files: &[std::path::PathBuf]) -> Result<String, String> {
    let mut groups: Vec<(String, Vec<serde_json::Value>)> = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", f.display()))?;
        let d = match v["label"].as_str() {
            Some(l) => format!("{l}: {}", v["description"].as_str().unwrap_or("?")),
            None => v["description"].as_str().unwrap_or("?").to_owned(),
        };
        match groups.iter_mut().find(|(k, _)| *k == d) {
            Some((_, g)) => g.push(v),
            None => groups.push((d, vec![v])),
        }
    }
    type Col = (&'static str, fn(&serde_json::Value) -> Option<f64>, usize);
    let cols: [Col; 14] = [
        ("fwd pps", |v| v["server"]["forwarded_pps"].as_f64(), 0),
        (
            "rx/fwd %",
            |v| {
                Some(
                    v["server"]["receivers_pps"].as_f64()? * 100.0
                        / v["server"]["forwarded_pps"].as_f64()?,
                )
            },
            0,
        ),
        ("CPU %", |v| v["server"]["cpu_pct"].as_f64(), 1),
        ("µs/pkt", |v| v["server"]["cpu_us_per_packet"].as_f64(), 2),
        (
            "relay µs/pkt",
            |v| v["relay"]["cpu_us_per_packet"].as_f64(),
            2,
        ),
        ("ratio", |v| v["cpu_ratio_to_relay"].as_f64(), 1),
        (
            "p50 µs",
            |v| v["server"]["latency"]["all"]["p50_us"].as_f64(),
            0,
        ),
        (
            "p99 µs",
            |v| v["server"]["latency"]["all"]["p99_us"].as_f64(),
            0,
        ),
        (
            "p99.9 µs",
            |v| v["server"]["latency"]["all"]["p999_us"].as_f64(),
            0,
        ),
        (
            "relay p50/p99 µs",
            |v| v["relay"]["latency"]["all"]["p50_us"].as_f64(),
            0,
        ),
        ("loss %", |v| v["server"]["loss"]["loss_pct"].as_f64(), 3),
        (
            "join p50 ms",
            |v| v["server"]["join"]["connected_p50_ms"].as_f64(),
            1,
        ),
        (
            "join p99 ms",
            |v| v["server"]["join"]["connected_p99_ms"].as_f64(),
            1,
        ),
        (
            "KiB/participant",
            |v| v["server"]["memory"]["per_participant_kb"].as_f64(),
            0,
        ),
    ];
    let mut o = String::new();
    let _ = writeln!(
        o,
        "| load | runs | {} | gen CPU % | valid |",
        cols.iter().map(|c| c.0).collect::<Vec<_>>().join(" | ")
    );
    let _ = writeln!(o, "|{}", " --- |".repeat(cols.len() + 4));
    for (d, runs) in &groups {
        let mut cells = Vec::new();
        for (name, f, digits) in &cols {
            let mut v: Vec<f64> = runs
                .iter()
                .filter_map(f)
                .filter(|x| x.is_finite())
                .collect();
            if v.is_empty() {
                cells.push("-".to_owned());
                continue;
            }
            let (lo, hi) = v
                .iter()
                .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
            let m = median(&mut v);
            let mut cell = if *digits == 0 {
                group(m)
            } else {
                format!("{m:.digits$}")
            };
            if *name == "relay p50/p99 µs" {
                let mut p99: Vec<f64> = runs
                    .iter()
                    .filter_map(|r| r["relay"]["latency"]["all"]["p99_us"].as_f64())
                    .collect();
                cell = format!("{} / {}", group(m), group(median(&mut p99)));
            } else if v.len() > 1 && hi > lo {
                let r = if *digits == 0 {
                    format!("{}-{}", group(lo), group(hi))
                } else {
                    format!("{lo:.digits$}-{hi:.digits$}")
                };
                cell = format!("{cell} ({r})");
            }
            cells.push(cell);
        }
        let mut gen_cpu: Vec<f64> = runs
            .iter()
            .filter_map(|r| r["generator"]["cpu_pct"].as_f64())
            .collect();
        let valid = runs.iter().filter(|r| r["valid"] == true).count();
        let _ = writeln!(
            o,
            "| {d} | {} | {} | {:.0} | {valid}/{} |",
            runs.len(),
            cells.join(" | "),
            median(&mut gen_cpu),
            runs.len()
        );
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
