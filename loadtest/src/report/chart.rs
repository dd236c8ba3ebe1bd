//! SVG charts: a run's seconds or a sweep's steps, CPU and latency against
//! forwarded packets per second, drawn without a plotting library.

use std::fmt::Write;

use super::{RunReport, Sample, SweepReport};

impl RunReport {
    /// A chart of this run's seconds: CPU and latency against forwarded pps.
    pub fn chart(&self) -> String {
        let pts = |f: &dyn Fn(&Sample) -> f64| -> Vec<(f64, f64)> {
            self.samples
                .iter()
                .filter(|s| s.forwarded_pps > 0.0)
                .map(|s| (s.forwarded_pps, f(s)))
                .collect()
        };
        let panels = [
            Panel {
                title: "server CPU (% of one core) per second".into(),
                series: vec![Series {
                    name: "vela".into(),
                    color: "#d62728",
                    points: pts(&|s| s.cpu_pct),
                }],
            },
            Panel {
                title: "latency per second (ms)".into(),
                series: vec![
                    Series {
                        name: "p50".into(),
                        color: "#1f77b4",
                        points: pts(&|s| s.p50_us as f64 / 1000.0),
                    },
                    Series {
                        name: "p99".into(),
                        color: "#ff7f0e",
                        points: pts(&|s| s.p99_us as f64 / 1000.0),
                    },
                ],
            },
        ];
        svg_chart(
            &self.description,
            "forwarded packets/s (each second of ramp and measurement)",
            &panels,
        )
    }
}

impl SweepReport {
    /// CPU (server and relay) and latency against forwarded pps, one point per step.
    pub fn chart(&self) -> String {
        let steps = &self.steps;
        let pick = |f: &dyn Fn(&RunReport) -> Option<f64>| -> Vec<(f64, f64)> {
            steps
                .iter()
                .filter_map(|s| Some((s.report.server.forwarded_pps, f(&s.report)?)))
                .collect()
        };
        let panels = [
            Panel {
                title: "CPU (% of one core)".into(),
                series: vec![
                    Series {
                        name: "vela SFU".into(),
                        color: "#d62728",
                        points: pick(&|r| r.server.cpu_pct),
                    },
                    Series {
                        name: "raw relay".into(),
                        color: "#7f7f7f",
                        points: pick(&|r| r.relay.as_ref()?.cpu_pct),
                    },
                ],
            },
            Panel {
                title: "CPU µs per forwarded packet".into(),
                series: vec![
                    Series {
                        name: "vela SFU".into(),
                        color: "#d62728",
                        points: pick(&|r| r.server.cpu_us_per_packet),
                    },
                    Series {
                        name: "raw relay".into(),
                        color: "#7f7f7f",
                        points: pick(&|r| r.relay.as_ref()?.cpu_us_per_packet),
                    },
                ],
            },
            Panel {
                title: "latency (ms)".into(),
                series: vec![
                    Series {
                        name: "p50".into(),
                        color: "#1f77b4",
                        points: pick(&|r| Some(r.server.latency.all.p50_us as f64 / 1000.0)),
                    },
                    Series {
                        name: "p99".into(),
                        color: "#ff7f0e",
                        points: pick(&|r| Some(r.server.latency.all.p99_us as f64 / 1000.0)),
                    },
                    Series {
                        name: "p99.9".into(),
                        color: "#9467bd",
                        points: pick(&|r| Some(r.server.latency.all.p999_us as f64 / 1000.0)),
                    },
                ],
            },
        ];
        let (lo, hi) = steps
            .iter()
            .fold((u32::MAX, 0), |(a, b), s| (a.min(s.scale), b.max(s.scale)));
        let title = steps
            .first()
            .map(|s| {
                format!(
                    "sweep of {:?} over {} {lo}..{hi}",
                    s.report.load.scenario, self.variable
                )
            })
            .unwrap_or_default();
        svg_chart(&title, "forwarded packets/s", &panels)
    }
}

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Stroke colour.
    pub color: &'static str,
    /// (x, y) points.
    pub points: Vec<(f64, f64)>,
}

/// One plot area.
#[derive(Debug, Clone)]
pub struct Panel {
    /// Title above it.
    pub title: String,
    /// Its lines.
    pub series: Vec<Series>,
}

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn tick(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Stacked panels sharing an x axis, as a standalone SVG document.
pub fn svg_chart(title: &str, x_label: &str, panels: &[Panel]) -> String {
    let xmax = nice_max(
        panels
            .iter()
            .flat_map(|p| &p.series)
            .flat_map(|s| &s.points)
            .map(|p| p.0)
            .fold(0.0, f64::max),
    );
    svg_chart_to(title, x_label, panels, xmax)
}

/// [`svg_chart`] with the x axis from 0 to `xmax` (five ticks).
pub fn svg_chart_to(title: &str, x_label: &str, panels: &[Panel], xmax: f64) -> String {
    let (w, ph, left, right, top) = (860.0, 260.0, 70.0, 160.0, 40.0);
    let gap = 50.0;
    let h = top + panels.len() as f64 * (ph + gap) + 30.0;
    let xmax = if xmax > 0.0 { xmax } else { 1.0 };
    let pw = w - left - right;
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{left}" y="22" font-size="15" font-weight="bold">{}</text>"#,
        esc(title)
    );
    for (i, p) in panels.iter().enumerate() {
        let y0 = top + i as f64 * (ph + gap) + 20.0;
        let ymax = nice_max(
            p.series
                .iter()
                .flat_map(|s| &s.points)
                .map(|p| p.1)
                .fold(0.0, f64::max),
        );
        let _ = writeln!(
            o,
            r#"<text x="{left}" y="{}" font-weight="bold">{}</text>"#,
            y0 - 8.0,
            esc(&p.title)
        );
        let _ = writeln!(
            o,
            r##"<rect x="{left}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>"##
        );
        for k in 0..=5 {
            let f = k as f64 / 5.0;
            let y = y0 + ph - f * ph;
            let x = left + f * pw;
            let _ = writeln!(
                o,
                r##"<line x1="{left}" y1="{y}" x2="{}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
                left + pw,
                left - 6.0,
                y + 4.0,
                tick(ymax * f)
            );
            let _ = writeln!(
                o,
                r##"<line x1="{x}" y1="{y0}" x2="{x}" y2="{}" stroke="#eee"/><text x="{x}" y="{}" text-anchor="middle">{}</text>"##,
                y0 + ph,
                y0 + ph + 16.0,
                tick(xmax * f)
            );
        }
        for (si, s) in p.series.iter().enumerate() {
            let mut pts = s.points.clone();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let coords: Vec<String> = pts
                .iter()
                .map(|(x, y)| {
                    format!(
                        "{:.1},{:.1}",
                        left + x / xmax * pw,
                        y0 + ph - (y / ymax).min(1.0) * ph
                    )
                })
                .collect();
            if coords.len() > 1 {
                let _ = writeln!(
                    o,
                    r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#,
                    s.color,
                    coords.join(" ")
                );
            }
            for c in &coords {
                let (x, y) = c.split_once(',').unwrap_or(("0", "0"));
                let _ = writeln!(
                    o,
                    r#"<circle cx="{x}" cy="{y}" r="2.5" fill="{}"/>"#,
                    s.color
                );
            }
            let ly = y0 + 16.0 + si as f64 * 18.0;
            let lx = left + pw + 12.0;
            let _ = writeln!(
                o,
                r#"<rect x="{lx}" y="{}" width="14" height="4" fill="{}"/><text x="{}" y="{ly}">{}</text>"#,
                ly - 6.0,
                s.color,
                lx + 20.0,
                esc(&s.name)
            );
        }
    }
    let _ = writeln!(
        o,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        left + pw / 2.0,
        h - 8.0,
        esc(x_label)
    );
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_is_svg() {
        let s = svg_chart(
            "t <1>",
            "x",
            &[Panel {
                title: "p".into(),
                series: vec![Series {
                    name: "a".into(),
                    color: "red",
                    points: vec![(1.0, 2.0), (3.0, 4.0)],
                }],
            }],
        );
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
        assert!(s.contains("t &lt;1&gt;") && s.contains("polyline"));
        assert_eq!(nice_max(3.2), 5.0);
        assert_eq!(nice_max(120.0), 200.0);
    }
}
