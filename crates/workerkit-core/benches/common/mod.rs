//! What the benches share (every crate's, through `#[path]`): the machine-load reading, the
//! criterion settings of the in-process benches, and the report format of `xtask bench`.
#![allow(dead_code)] // Each bench uses part of it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

/// CPU time in clock ticks, from Linux's `/proc`: of the whole machine and of this process.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CpuTicks {
    machine_busy: u64,
    machine_total: u64,
    this_process: u64,
}

impl CpuTicks {
    /// `None` where `/proc` is not Linux's.
    pub(crate) fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let ticks: Vec<u64> = stat
            .lines()
            .next()?
            .strip_prefix("cpu ")?
            .split_whitespace()
            .map(|field| field.parse().ok())
            .collect::<Option<_>>()?;
        // user nice system idle iowait irq softirq steal ...
        let [user, nice, system, idle, iowait, irq, softirq, steal, ..] = ticks[..] else {
            return None;
        };
        let machine_busy = user + nice + system + irq + softirq + steal;
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The fields after the command name: state is field 3, utime 14 and stime 15.
        let fields: Vec<&str> = own.rsplit_once(')')?.1.split_whitespace().collect();
        let this_process =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(Self {
            machine_busy,
            machine_total: machine_busy + idle + iowait,
            this_process,
        })
    }

    /// The share of the machine's CPU that other processes used since `self`.
    pub(crate) fn foreign_share(self) -> Option<f64> {
        let now = Self::read()?;
        let total = now.machine_total.checked_sub(self.machine_total)?;
        let busy = now.machine_busy.checked_sub(self.machine_busy)?;
        let own = now.this_process.checked_sub(self.this_process)?;
        (total > 0).then(|| busy.saturating_sub(own) as f64 / total as f64)
    }
}

// ---- Report ----

/// The report file. Field order matters: `scenarios` must be the last key (see `xtask bench`).
#[derive(Debug, Serialize)]
pub(crate) struct Report<'a> {
    pub(crate) schema: u32,
    pub(crate) scenarios: &'a [Scenario],
}

#[derive(Debug, Serialize)]
pub(crate) struct Scenario {
    pub(crate) id: &'static str,
    pub(crate) issue: u32,
    pub(crate) value: f64,
    pub(crate) baseline: f64,
    pub(crate) unit: &'static str,
    pub(crate) ratio: f64,
    pub(crate) target: Target,
    pub(crate) pass: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct Target {
    pub(crate) op: &'static str,
    pub(crate) value: f64,
}

/// Prints how much of the machine other processes used since `before`, with a warning when it
/// makes the timings unreliable.
pub(crate) fn print_load_note(before: Option<CpuTicks>) {
    if let Some(share) = before.and_then(CpuTicks::foreign_share) {
        println!(
            "other processes used {:.0}% of the machine's CPU while this bench ran{}",
            share * 100.0,
            if share > 0.1 {
                ": the times above are not reliable, run again on a quiet machine"
            } else {
                ""
            }
        );
    }
}

/// A scenario of issue `issue` whose ratio `value / baseline` must be at most `max` (value and
/// baseline rounded to one decimal, the ratio to four).
pub(crate) fn at_most(
    id: &'static str,
    issue: u32,
    (value, baseline): (f64, f64),
    unit: &'static str,
    max: f64,
) -> Scenario {
    let (value, baseline) = (round(value, 1), round(baseline, 1));
    let ratio = round(value / baseline, 4);
    Scenario {
        id,
        issue,
        value,
        baseline,
        unit,
        ratio,
        target: Target {
            op: "<=",
            value: max,
        },
        pass: ratio.is_finite() && ratio <= max,
    }
}

/// The median (the mean of the middle two for an even count).
pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 0 {
        f64::midpoint(values[mid - 1], values[mid])
    } else {
        values[mid]
    }
}

pub(crate) fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// Writes the compact report; returns its path.
pub(crate) fn write_report(file: &str, scenarios: &[Scenario]) -> PathBuf {
    let dir = std::env::var_os("WORKERKIT_BENCH_REPORT_DIR").map_or_else(
        || {
            // The workspace root is two levels above this crate's manifest directory.
            let root = Path::new(env!("CARGO_MANIFEST_DIR"))
                .ancestors()
                .nth(2)
                .expect("the crate lives in <root>/crates/<name>");
            root.join("target").join("bench-report")
        },
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir).expect("create the report directory");
    let path = dir.join(file);
    let json = serde_json::to_string(&Report {
        schema: 1,
        scenarios,
    })
    .expect("serialise the report");
    std::fs::write(&path, json + "\n").expect("write the report");
    path
}

/// Criterion for the benches whose operations take nanoseconds to microseconds: short with
/// `quick` (`WORKERKIT_BENCH_QUICK=1`), then overridden by criterion's own command line.
pub(crate) fn criterion(quick: bool) -> criterion::Criterion {
    let criterion = criterion::Criterion::default();
    if quick {
        criterion
            .sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1))
    } else {
        criterion
            .sample_size(30)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3))
    }
    .configure_from_args()
}
