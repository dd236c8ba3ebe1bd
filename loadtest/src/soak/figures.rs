//! A soak's figures: least-squares slopes after warm-up, growth from the
//! idle server before to the idle server after, the server log's warnings
//! and errors, the checks, a chart and a Markdown summary.

use std::fmt::Write;
use std::path::Path;

use serde::Serialize;

use super::{SoakRun, SoakSample};
use crate::report::{Panel, Series, svg_chart_to};

/// Memory may grow at most this much per 10 minutes after warm-up.
pub const RSS_SLOPE_LIMIT_MB: f64 = 1.0;

/// The server's store file, in the directory the soak starts it in.
const STORE_FILE: &str = "vela.sqlite";
/// Connections the store's pool opens at most (signaling/src/store/mod.rs).
const STORE_POOL: u64 = 4;

/// File descriptor kinds whose count changed, and by how much.
pub fn fd_changes(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
) -> Vec<(String, i64)> {
    let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .map(|k| {
            let n = |m: &std::collections::BTreeMap<String, u64>| m.get(k).copied().unwrap_or(0);
            (k.clone(), n(after) as i64 - n(before) as i64)
        })
        .filter(|(_, d)| *d != 0)
        .collect()
}

/// One quantity over the samples after warm-up.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Trend {
    /// The first sample after warm-up.
    pub first: f64,
    /// The last sample of the load.
    pub last: f64,
    /// Lowest after warm-up.
    pub min: f64,
    /// Highest after warm-up.
    pub max: f64,
    /// Mean after warm-up.
    pub mean: f64,
    /// Least-squares slope, per 10 minutes.
    pub slope_per_10min: f64,
}

/// The least-squares line through `(seconds, value)` points: its slope per
/// 10 minutes, with first, last, min, max and mean.
pub fn trend(points: &[(f64, f64)]) -> Trend {
    let n = points.len() as f64;
    if points.is_empty() {
        return Trend::default();
    }
    let mt = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mt).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mt) * (p.1 - my)).sum();
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    Trend {
        first: points[0].1,
        last: points[points.len() - 1].1,
        min: points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min),
        max: points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max),
        mean: my,
        slope_per_10min: slope * 600.0,
    }
}

/// Warnings and errors of one kind in the server's log.
#[derive(Debug, Clone, Serialize)]
pub struct LogKind {
    /// `WARN` or `ERROR`.
    pub level: String,
    /// Lines of this kind.
    pub count: u64,
    /// The first such line (without its timestamp).
    pub example: String,
}

/// The server's log, read after it stopped.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LogSummary {
    /// Where it is.
    pub path: String,
    /// Lines in it.
    pub lines: u64,
    /// Lines at WARN.
    pub warn: u64,
    /// Lines at ERROR.
    pub error: u64,
    /// WARN and ERROR lines grouped by level, place and message (field values left out).
    pub kinds: Vec<LogKind>,
}

/// A line's level (`tracing`'s text format: the timestamp, then the level).
fn level(line: &str) -> Option<&str> {
    let mut w = line.split_whitespace();
    let first = w.next()?;
    if ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&first) {
        return Some(first);
    }
    w.next()
        .filter(|l| ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(l))
}

/// What lines of one kind share: the level, the spans' and target's names
/// and the message, with field values (`key=value`, `{...}`) left out.
fn kind_key(line: &str) -> String {
    let rest = line
        .split_once(" WARN ")
        .or_else(|| line.split_once(" ERROR "))
        .map_or(line, |(_, r)| r);
    let mut out = String::new();
    let mut depth = 0;
    for c in rest.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace()
        .map(|w| match w.split_once('=') {
            Some((k, _)) => format!("{k}=…"),
            None => w.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Reads a server log: counts lines by level and groups WARN and ERROR.
pub fn read_log(path: &Path) -> std::io::Result<LogSummary> {
    let text = std::fs::read_to_string(path)?;
    let mut s = LogSummary {
        path: path.display().to_string(),
        ..LogSummary::default()
    };
    let mut kinds: Vec<(String, LogKind)> = Vec::new();
    for line in text.lines() {
        s.lines += 1;
        let Some(l) = level(line) else { continue };
        match l {
            "WARN" => s.warn += 1,
            "ERROR" => s.error += 1,
            _ => continue,
        }
        let key = format!("{l} {}", kind_key(line));
        match kinds.iter_mut().find(|(k, _)| *k == key) {
            Some((_, k)) => k.count += 1,
            None => {
                let example = line
                    .split_once(&format!(" {l} "))
                    .map_or(line, |(_, r)| r)
                    .chars()
                    .take(400)
                    .collect();
                kinds.push((
                    key,
                    LogKind {
                        level: l.to_owned(),
                        count: 1,
                        example,
                    },
                ));
            }
        }
    }
    s.kinds = kinds.into_iter().map(|(_, k)| k).collect();
    s.kinds.sort_by_key(|k| std::cmp::Reverse(k.count));
    Ok(s)
}

/// The idle server after the soak against the idle server before it.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Growth {
    /// RSS, MB.
    pub rss_mb: f64,
    /// Open file descriptors.
    pub fds: i64,
    /// Threads.
    pub threads: i64,
    /// Runtime tasks.
    pub tasks: i64,
}

/// One pass/fail check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What is checked.
    pub name: String,
    /// Whether it held.
    pub passed: bool,
    /// The figures behind it.
    pub detail: String,
}

/// A soak's report: figures, checks, the log, and every sample.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// The command line.
    pub command: String,
    /// When it started (UTC, RFC 3339).
    pub started: String,
    /// The load, described.
    pub load: String,
    /// Minutes of load.
    pub minutes: f64,
    /// Warm-up left out of the slopes, seconds.
    pub warmup_s: f64,
    /// Samples the slopes use.
    pub samples_after_warmup: usize,
    /// Server RSS after warm-up, MB.
    pub rss_mb: Trend,
    /// Open file descriptors after warm-up.
    pub fds: Trend,
    /// Threads after warm-up.
    pub threads: Trend,
    /// Runtime tasks after warm-up.
    pub tasks: Trend,
    /// Server CPU after warm-up, percent of one core.
    pub cpu_pct: Trend,
    /// Idle after minus idle before.
    pub growth: Growth,
    /// The checks.
    pub checks: Vec<Check>,
    /// All checks held.
    pub passed: bool,
    /// The server's exit status after SIGTERM (None: killed or unknown).
    pub server_exit_code: Option<i32>,
    /// The server's log.
    pub log: LogSummary,
    /// What was measured.
    pub run: SoakRun,
}

/// One figure of a sample.
type Reading = dyn Fn(&SoakSample) -> f64;

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

impl SoakReport {
    /// Figures and checks from a run, its log and how the server ended.
    pub fn new(
        run: SoakRun,
        load: String,
        minutes: f64,
        warmup_s: f64,
        log: LogSummary,
        server_exit_code: Option<i32>,
    ) -> SoakReport {
        let steady: Vec<&SoakSample> = run
            .samples
            .iter()
            .filter(|s| s.phase == "load" && s.t_s >= warmup_s)
            .collect();
        let series = |f: &dyn Fn(&SoakSample) -> f64| -> Vec<(f64, f64)> {
            steady.iter().map(|s| (s.t_s, f(s))).collect()
        };
        let rss_mb = trend(&series(&|s| mb(s.rss_kb)));
        let fds = trend(&series(&|s| s.fds as f64));
        let threads = trend(&series(&|s| s.threads as f64));
        let tasks = trend(&series(&|s| s.tasks as f64));
        let cpu_pct = trend(&series(&|s| s.cpu_pct));
        let base = run.samples.iter().find(|s| s.phase == "baseline");
        let settled = run.samples.iter().find(|s| s.phase == "settled");
        let growth = match (base, settled) {
            (Some(b), Some(a)) => Growth {
                rss_mb: mb(a.rss_kb) - mb(b.rss_kb),
                fds: a.fds as i64 - b.fds as i64,
                threads: a.threads as i64 - b.threads as i64,
                tasks: a.tasks as i64 - b.tasks as i64,
            },
            _ => Growth::default(),
        };
        let mut checks = Vec::new();
        let mut check = |name: &str, passed: bool, detail: String| {
            checks.push(Check {
                name: name.to_owned(),
                passed,
                detail,
            });
        };
        check(
            "enough samples after warm-up",
            steady.len() >= 10,
            format!("{} samples after {:.0} s", steady.len(), warmup_s),
        );
        check(
            "flat memory after warm-up",
            rss_mb.slope_per_10min < RSS_SLOPE_LIMIT_MB,
            format!(
                "RSS slope {:+.2} MB per 10 min (limit {RSS_SLOPE_LIMIT_MB}); {:.1} -> {:.1} MB, max {:.1}",
                rss_mb.slope_per_10min, rss_mb.first, rss_mb.last, rss_mb.max
            ),
        );
        // Under load the counts move with the sockets open at the moment;
        // idle before and idle after must agree, except that the store's
        // pool may keep a few more connections open (each holds the
        // database, its WAL and shared-memory files) until they idle out.
        let (b_fds, b_tasks) = base.map_or((0, 0), |b| (b.fds, b.tasks));
        let changed = fd_changes(&run.fds_before, &run.fds_after);
        let store = |k: &str| k.starts_with(STORE_FILE);
        let other: i64 = changed.iter().filter(|(k, _)| !store(k)).map(|c| c.1).sum();
        let store_after: u64 = run
            .fds_after
            .iter()
            .filter(|(k, _)| store(k))
            .map(|c| c.1)
            .sum();
        check(
            "no file descriptor growth",
            other <= 0 && store_after <= 3 * STORE_POOL,
            format!(
                "idle before {b_fds}, idle after {} ({:+}: {}); under load {:.0}..{:.0}, slope {:+.2} per 10 min",
                b_fds as i64 + growth.fds,
                growth.fds,
                if changed.is_empty() {
                    "no kind changed".to_owned()
                } else {
                    changed
                        .iter()
                        .map(|(k, n)| format!("{k} {n:+}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                fds.min,
                fds.max,
                fds.slope_per_10min
            ),
        );
        check(
            "no task growth",
            growth.tasks <= 0,
            format!(
                "idle before {b_tasks}, idle after {} ({:+}); under load {:.0}..{:.0}, slope {:+.2} per 10 min",
                b_tasks as i64 + growth.tasks,
                growth.tasks,
                tasks.min,
                tasks.max,
                tasks.slope_per_10min
            ),
        );
        check(
            "no ERROR in the server log",
            log.error == 0,
            format!(
                "{} ERROR, {} WARN of {} lines",
                log.error, log.warn, log.lines
            ),
        );
        check(
            "every join answered",
            run.joins.failed == 0,
            format!("{} joined, {} failed", run.joins.ok, run.joins.failed),
        );
        let (ok, failed) = run
            .actions
            .values()
            .fold((0, 0), |(o, f), c| (o + c.ok, f + c.failed));
        check(
            "every account action answered as expected",
            failed == 0,
            format!("{ok} as expected, {failed} not"),
        );
        check(
            "the server stopped cleanly on SIGTERM",
            server_exit_code == Some(0),
            format!("exit code {server_exit_code:?}"),
        );
        let passed = checks.iter().all(|c| c.passed);
        SoakReport {
            command: std::env::args().collect::<Vec<_>>().join(" "),
            started: String::new(),
            load,
            minutes,
            warmup_s,
            samples_after_warmup: steady.len(),
            rss_mb,
            fds,
            threads,
            tasks,
            cpu_pct,
            growth,
            checks,
            passed,
            server_exit_code,
            log,
            run,
        }
    }

    /// RSS, file descriptors and threads, tasks and participants, CPU over time.
    pub fn chart(&self) -> String {
        let pts = |f: &dyn Fn(&SoakSample) -> f64| -> Vec<(f64, f64)> {
            self.run
                .samples
                .iter()
                .map(|s| (s.t_s / 60.0, f(s)))
                .collect()
        };
        let panels = [
            Panel {
                title: format!(
                    "server RSS (MB); slope after {:.0} min warm-up: {:+.2} MB per 10 min",
                    self.warmup_s / 60.0,
                    self.rss_mb.slope_per_10min
                ),
                series: vec![Series {
                    name: "RSS".into(),
                    color: "#d62728",
                    points: pts(&|s| mb(s.rss_kb)),
                }],
            },
            Panel {
                title: "server open file descriptors and threads".into(),
                series: vec![
                    Series {
                        name: "fds".into(),
                        color: "#1f77b4",
                        points: pts(&|s| s.fds as f64),
                    },
                    Series {
                        name: "threads".into(),
                        color: "#2ca02c",
                        points: pts(&|s| s.threads as f64),
                    },
                ],
            },
            Panel {
                title: "tokio tasks alive; participants in rooms".into(),
                series: vec![
                    Series {
                        name: "tasks".into(),
                        color: "#9467bd",
                        points: pts(&|s| s.tasks as f64),
                    },
                    Series {
                        name: "participants".into(),
                        color: "#ff7f0e",
                        points: pts(&|s| s.participants as f64),
                    },
                ],
            },
            Panel {
                title: "server CPU (% of one core)".into(),
                series: vec![Series {
                    name: "CPU".into(),
                    color: "#8c564b",
                    points: pts(&|s| s.cpu_pct),
                }],
            },
        ];
        // Whole 5 minutes on the axis (the settled point is just past the end).
        let last = self.run.samples.last().map_or(0.0, |s| s.t_s / 60.0);
        let xmax = ((last / 5.0).ceil() * 5.0).max(5.0);
        svg_chart_to(
            &format!(
                "Soak, {:.0} min: rooms with churn, WHIP/WHEP, accounts, device sockets, calls",
                self.minutes
            ),
            "minutes (first point: idle before; last: idle after everyone left)",
            &panels,
            xmax,
        )
    }

    /// The summary as Markdown.
    pub fn markdown(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "# Soak {}\n", self.started);
        let _ = writeln!(o, "`{}`\n", self.command);
        let _ = writeln!(o, "{}\n", self.load);
        let _ = writeln!(
            o,
            "Result: **{}**\n",
            if self.passed { "pass" } else { "FAIL" }
        );
        let _ = writeln!(o, "| check | | figures |\n| --- | --- | --- |");
        for c in &self.checks {
            let _ = writeln!(
                o,
                "| {} | {} | {} |",
                c.name,
                if c.passed { "ok" } else { "**failed**" },
                c.detail
            );
        }
        let base = self.run.samples.iter().find(|s| s.phase == "baseline");
        let settled = self.run.samples.iter().find(|s| s.phase == "settled");
        let idle = |s: Option<&SoakSample>, f: &dyn Fn(&SoakSample) -> f64| {
            s.map_or("-".to_owned(), |s| format!("{:.1}", f(s)))
        };
        let _ = writeln!(
            o,
            "\nAfter {:.0} min of warm-up ({} samples):\n",
            self.warmup_s / 60.0,
            self.samples_after_warmup
        );
        let _ = writeln!(
            o,
            "| | idle before | first | last | min | max | slope per 10 min | idle after |\n| --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        let rows: [(&str, &Trend, &Reading); 5] = [
            ("RSS (MB)", &self.rss_mb, &|s| mb(s.rss_kb)),
            ("open fds", &self.fds, &|s| s.fds as f64),
            ("threads", &self.threads, &|s| s.threads as f64),
            ("tokio tasks", &self.tasks, &|s| s.tasks as f64),
            ("CPU (% of a core)", &self.cpu_pct, &|s| s.cpu_pct),
        ];
        for (name, t, f) in rows {
            let _ = writeln!(
                o,
                "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:+.2} | {} |",
                idle(base, f),
                t.first,
                t.last,
                t.min,
                t.max,
                t.slope_per_10min,
                idle(settled, f)
            );
        }
        let j = &self.run.joins;
        let _ = writeln!(
            o,
            "\nJoins: {} answered, {} failed; {} participants left, {} of them had connected, {} had received media (WHIP publishers receive none); {} client connection errors. Rooms opened: {}; WHIP+WHEP pairs: {}.",
            j.ok,
            j.failed,
            j.departed,
            j.departed_connected,
            j.departed_with_media,
            j.rtc_errors,
            self.run.rooms_opened,
            self.run.whip_whep_pairs
        );
        for e in &j.errors {
            let _ = writeln!(o, "- join failed: {e}");
        }
        let _ = writeln!(
            o,
            "\n| action | as expected | failed |\n| --- | --- | --- |"
        );
        for (k, c) in &self.run.actions {
            let _ = writeln!(o, "| {k} | {} | {} |", c.ok, c.failed);
        }
        for e in &self.run.action_errors {
            let _ = writeln!(o, "- {e}");
        }
        let _ = writeln!(
            o,
            "\nServer log: {} lines, {} WARN, {} ERROR.\n",
            self.log.lines, self.log.warn, self.log.error
        );
        if !self.log.kinds.is_empty() {
            let _ = writeln!(o, "| level | lines | first |\n| --- | --- | --- |");
            for k in &self.log.kinds {
                let _ = writeln!(
                    o,
                    "| {} | {} | `{}` |",
                    k.level,
                    k.count,
                    k.example.replace('|', "\\|").replace('`', "'")
                );
            }
        }
        o
    }
}

/// Now, UTC, as `YYYY-MM-DDTHH:MMZ`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line() {
        // 1 MB per minute is 10 MB per 10 minutes.
        let pts: Vec<(f64, f64)> = (0..10).map(|i| (60.0 * i as f64, 5.0 + i as f64)).collect();
        let t = trend(&pts);
        assert!((t.slope_per_10min - 10.0).abs() < 1e-9, "{t:?}");
        assert_eq!((t.first, t.last, t.min, t.max), (5.0, 14.0, 5.0, 14.0));
        let flat = trend(&[(0.0, 3.0), (10.0, 3.0), (20.0, 3.0)]);
        assert_eq!(flat.slope_per_10min, 0.0);
        assert_eq!(trend(&[]).slope_per_10min, 0.0);
    }

    #[test]
    fn groups_log_lines_by_kind() {
        let dir = std::env::temp_dir().join(format!("vela-soak-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let path = dir.join("server.log");
        std::fs::write(
            &path,
            "2026-01-01T00:00:00.000001Z  INFO vela_signaling: vela is up\n\
             2026-01-01T00:00:01.000001Z  WARN session{room=a participant=PA1}: vela_signaling::session: slow client id=3\n\
             2026-01-01T00:00:02.000001Z  WARN session{room=b participant=PA9}: vela_signaling::session: slow client id=4\n\
             2026-01-01T00:00:03.000001Z ERROR vela_media: driver failed error=boom\n",
        )
        .ok();
        let s = read_log(&path).ok().unwrap_or_default();
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!((s.lines, s.warn, s.error), (4, 2, 1));
        assert_eq!(s.kinds.len(), 2, "{:?}", s.kinds);
        assert_eq!(s.kinds[0].count, 2);
        assert_eq!(s.kinds[0].level, "WARN");
        assert!(s.kinds[0].example.starts_with("session{room=a"));
        assert_eq!(s.kinds[1].level, "ERROR");
    }
}
