//! Capacity search: raise the load geometrically until a step fails (loss
//! above the limit, p99 above the limit, failed joins, silent routes, or an
//! invalid generator), then bisect between the last pass and the first fail.

use std::time::Duration;

use crate::report::{RunReport, SweepReport, SweepStep};
use crate::run::{RunConfig, RunError, Target, run};

/// How to search.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// First value (rooms, or subscribers for fan-out).
    pub start: u32,
    /// Growth factor between steps.
    pub factor: f64,
    /// Largest value tried.
    pub max: u32,
    /// Bisection steps after the first failure.
    pub refine: u32,
    /// Loss limit, percent (0.1 in PERFORMANCE.md).
    pub loss_limit_pct: f64,
    /// p99 latency limit, milliseconds (5 in PERFORMANCE.md).
    pub p99_limit_ms: f64,
}

/// Why a step fails, or None when it passes.
pub fn judge(r: &RunReport, sc: &SweepConfig) -> Option<String> {
    let s = &r.server;
    if !r.valid {
        return Some(format!("generator-bound ({})", r.warnings.join("; ")));
    }
    if s.join.joined < s.join.attempted {
        return Some(format!("{} joins failed", s.join.attempted - s.join.joined));
    }
    if s.loss.routes_missing > 0 {
        return Some(format!("{} silent routes", s.loss.routes_missing));
    }
    if s.loss.loss_pct > sc.loss_limit_pct {
        return Some(format!("loss {:.3}%", s.loss.loss_pct));
    }
    let p99_ms = s.latency.all.p99_us as f64 / 1000.0;
    if p99_ms > sc.p99_limit_ms {
        return Some(format!("p99 {p99_ms:.1} ms"));
    }
    None
}

async fn run_step(
    base: &RunConfig,
    sc: &SweepConfig,
    target: &Target,
    v: u32,
) -> Result<SweepStep, RunError> {
    let mut cfg = base.clone();
    cfg.load = base.load.with_scale(v);
    cfg.seed = base.seed.wrapping_add(u64::from(v));
    let report = run(&cfg, target).await?;
    let reason = judge(&report, sc);
    Ok(SweepStep {
        scale: v,
        passed: reason.is_none(),
        reason,
        report,
    })
}

/// Runs the sweep; `on_step` sees each step as it completes.
pub async fn sweep(
    base: &RunConfig,
    sc: &SweepConfig,
    target: &Target,
    mut on_step: impl FnMut(&SweepStep),
) -> Result<SweepReport, RunError> {
    let mut steps: Vec<SweepStep> = Vec::new();
    let mut good: Option<u32> = None;
    let mut bad: Option<u32> = None;
    let mut generator_bound = false;
    let mut v = sc.start.max(1);
    let stopped = loop {
        steps.push(run_step(base, sc, target, v).await?);
        let last = steps.last();
        if let Some(s) = last {
            on_step(s);
            if s.passed {
                good = Some(v);
            } else {
                generator_bound = !s.report.valid;
                bad = Some(v);
                break format!("step {v} failed");
            }
        }
        if v >= sc.max {
            break format!("reached --max {}", sc.max);
        }
        let next = ((f64::from(v) * sc.factor).ceil() as u32).max(v + 1);
        v = next.min(sc.max);
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    if !generator_bound {
        for _ in 0..sc.refine {
            let (Some(g), Some(b)) = (good, bad) else {
                break;
            };
            if b <= g + 1 {
                break;
            }
            let mid = g + (b - g) / 2;
            tokio::time::sleep(Duration::from_secs(1)).await;
            steps.push(run_step(base, sc, target, mid).await?);
            if let Some(s) = steps.last() {
                on_step(s);
                if s.passed {
                    good = Some(mid);
                } else if !s.report.valid {
                    break;
                } else {
                    bad = Some(mid);
                }
            }
        }
    }
    let capacity = if generator_bound { None } else { good };
    let capacity_forwarded_pps = capacity.and_then(|c| {
        steps
            .iter()
            .find(|s| s.scale == c)
            .map(|s| s.report.server.forwarded_pps)
    });
    let stopped = if generator_bound {
        format!("{stopped}: the generator, not the server, was the limit")
    } else {
        stopped
    };
    Ok(SweepReport {
        variable: if base.load.sweeps_subscribers() {
            "subscribers"
        } else {
            "rooms"
        },
        loss_limit_pct: sc.loss_limit_pct,
        p99_limit_ms: sc.p99_limit_ms,
        steps,
        capacity,
        capacity_forwarded_pps,
        stopped,
    })
}
