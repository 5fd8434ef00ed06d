//! Results as JSON, a Markdown table with gateway/peer ratios, and an SVG chart of latency
//! against delivered rate.

use std::fmt::Write as _;
use std::path::Path;

use crate::case::Kind;
use crate::run::{RunResult, StepResult};
use crate::target::Which;

fn step<'a>(r: &'a RunResult, name: &str) -> Option<&'a StepResult> {
    r.steps.iter().find(|s| s.step == name)
}

fn si(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

/// One row: a figure per target and the gateway's ratio to the best peer.
struct Row {
    name: &'static str,
    values: Vec<Option<f64>>,
    higher_is_better: bool,
    format: fn(f64) -> String,
}

fn table(results: &[RunResult], rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = write!(out, "| figure |");
    for r in results {
        let _ = write!(out, " {} |", r.target);
    }
    let _ = writeln!(out, " gateway / best peer |");
    let _ = writeln!(out, "|---|{}---|", "---|".repeat(results.len()));
    for row in rows {
        let _ = write!(out, "| {} |", row.name);
        for v in &row.values {
            let _ = write!(out, " {} |", v.map_or("–".to_owned(), row.format));
        }
        let gateway = results
            .iter()
            .position(|r| r.target == Which::Gateway)
            .and_then(|i| row.values[i]);
        let peers: Vec<f64> = results
            .iter()
            .zip(&row.values)
            .filter(|(r, _)| r.target != Which::Gateway)
            .filter_map(|(_, v)| *v)
            .collect();
        let best = if row.higher_is_better {
            peers
                .iter()
                .copied()
                .fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.max(b))))
        } else {
            peers
                .iter()
                .copied()
                .fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.min(b))))
        };
        match (gateway, best) {
            (Some(g), Some(b)) if b > 0.0 && g > 0.0 => {
                let ratio = if row.higher_is_better { g / b } else { b / g };
                let _ = writeln!(
                    out,
                    " {ratio:.2}× {} |",
                    if ratio >= 1.0 { "better" } else { "worse" }
                );
            }
            _ => {
                let _ = writeln!(out, " – |");
            }
        }
    }
    out
}

/// The Markdown report of one case run against several targets.
pub(crate) fn markdown(results: &[RunResult]) -> String {
    let Some(first) = results.first() else {
        return String::new();
    };
    let mut out = format!(
        "### `{}`: {} sessions over {} customers, {}-byte events\n\n",
        first.case, first.sessions, first.customers, first.event_bytes
    );
    let col = |f: &dyn Fn(&RunResult) -> Option<f64>| results.iter().map(f).collect::<Vec<_>>();
    let mut rows = vec![Row {
        name: "handshakes/s opening the sessions",
        values: col(&|r| Some(r.connect.handshakes_per_s)),
        higher_is_better: true,
        format: si,
    }];
    rows.push(Row {
        name: "handshakes per server CPU-second, opening",
        values: col(&|r| Some(r.connect.per_server_cpu_s)),
        higher_is_better: true,
        format: si,
    });
    match first.kind {
        Kind::Idle => rows.push(Row {
            name: "server memory per idle session",
            values: col(&|r| Some(r.bytes_per_session)),
            higher_is_better: false,
            format: |b| format!("{:.2} KiB", b / 1024.0),
        }),
        Kind::Storm => {
            rows.push(Row {
                name: "handshakes/s, reconnect wave",
                values: col(&|r| r.storm.as_ref().map(|w| w.handshakes_per_s)),
                higher_is_better: true,
                format: si,
            });
            rows.push(Row {
                name: "handshakes per server CPU-second, reconnect wave",
                values: col(&|r| r.storm.as_ref().map(|w| w.per_server_cpu_s)),
                higher_is_better: true,
                format: si,
            });
            rows.push(Row {
                name: "handshake p99, reconnect wave",
                values: col(&|r| r.storm.as_ref().map(|w| w.latency.p99_us as f64)),
                higher_is_better: false,
                format: |us| ms(us as u64),
            });
        }
        Kind::Throughput => {
            rows.push(Row {
                name: "saturation deliveries/s",
                values: col(&|r| step(r, "max").map(|s| s.deliveries_per_s)),
                higher_is_better: true,
                format: si,
            });
            rows.push(Row {
                name: "deliveries per server CPU-second (saturation)",
                values: col(&|r| step(r, "max").map(|s| s.deliveries_per_cpu_second)),
                higher_is_better: true,
                format: si,
            });
            rows.push(Row {
                name: "p50 at half saturation",
                values: col(&|r| step(r, "50%").map(|s| s.latency.p50_us as f64)),
                higher_is_better: false,
                format: |us| ms(us as u64),
            });
            rows.push(Row {
                name: "p99 at half saturation",
                values: col(&|r| step(r, "50%").map(|s| s.latency.p99_us as f64)),
                higher_is_better: false,
                format: |us| ms(us as u64),
            });
            rows.push(Row {
                name: "p999 at half saturation",
                values: col(&|r| step(r, "50%").map(|s| s.latency.p999_us as f64)),
                higher_is_better: false,
                format: |us| ms(us as u64),
            });
            rows.push(Row {
                name: "events lost (all steps)",
                values: col(&|r| Some(r.steps.iter().map(|s| s.lost as f64).sum())),
                higher_is_better: false,
                format: |x| format!("{x:.0}"),
            });
        }
    }
    out.push_str(&table(results, &rows));
    if first.kind == Kind::Throughput {
        out.push_str("\nEvery step:\n\n| target | step | events/s | deliveries/s | p50 | p99 | p999 | lost | server CPU-s | deliveries/CPU-s |\n|---|---|---|---|---|---|---|---|---|---|\n");
        for r in results {
            for s in &r.steps {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {} |",
                    r.target,
                    s.step,
                    si(s.events_per_s),
                    si(s.deliveries_per_s),
                    ms(s.latency.p50_us),
                    ms(s.latency.p99_us),
                    ms(s.latency.p999_us),
                    s.lost,
                    s.cpu_seconds,
                    si(s.deliveries_per_cpu_second)
                );
            }
        }
    }
    let split: Vec<String> = results
        .iter()
        .filter_map(|r| {
            let max = r.steps.iter().find(|s| s.step == "max")?;
            if max.cpu_split.len() < 2 {
                return None;
            }
            let parts: Vec<String> = max
                .cpu_split
                .iter()
                .map(|(name, cpu)| format!("{name} {cpu:.2} s"))
                .collect();
            Some(format!("{}: {}", r.target, parts.join(", ")))
        })
        .collect();
    if !split.is_empty() {
        let _ = writeln!(
            out,
            "\nServer CPU at saturation, per process: {}.",
            split.join("; ")
        );
    }
    let _ = writeln!(
        out,
        "\nServer memory with the sessions open: {}.",
        results
            .iter()
            .map(|r| format!("{} {:.1} MiB", r.target, r.rss_sessions_kib as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    out
}

/// An SVG chart of p99 latency (log scale) against delivered rate, a line per target.
pub(crate) fn chart(results: &[RunResult]) -> String {
    let (w, h, left, bottom, top, right) = (720.0, 420.0, 80.0, 50.0, 40.0, 140.0);
    let points: Vec<(Which, Vec<(f64, f64)>)> = results
        .iter()
        .map(|r| {
            let mut p: Vec<(f64, f64)> = r
                .steps
                .iter()
                .map(|s| (s.deliveries_per_s, (s.latency.p99_us.max(1)) as f64))
                .collect();
            p.sort_by(|a, b| a.0.total_cmp(&b.0));
            (r.target, p)
        })
        .collect();
    let max_x = points
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
        .fold(1.0, f64::max)
        * 1.05;
    let (min_y, max_y) = (10f64.log10(), 10_000_000f64.log10()); // 10 µs .. 10 s
    let x = |v: f64| left + (w - left - right) * v / max_x;
    let y = |us: f64| {
        h - bottom - (h - bottom - top) * ((us.max(10.0).log10() - min_y) / (max_y - min_y))
    };
    let colors = ["#d62728", "#1f77b4", "#2ca02c"];
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"22\" font-size=\"14\">{}: p99 latency against delivered rate</text>",
        left,
        results.first().map_or("", |r| r.case.as_str())
    );
    for decade in 1..=7 {
        let us = 10f64.powi(decade);
        let label = match decade {
            1 => "10 µs",
            2 => "100 µs",
            3 => "1 ms",
            4 => "10 ms",
            5 => "100 ms",
            6 => "1 s",
            _ => "10 s",
        };
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y0:.1}\" y2=\"{y0:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>",
            w - right,
            left - 6.0,
            y(us) + 4.0,
            y0 = y(us)
        );
    }
    for i in 0..=4 {
        let v = max_x * f64::from(i) / 4.0;
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}/s</text>",
            x(v),
            h - bottom + 18.0,
            si(v)
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">deliveries per second</text>",
        (left + w - right) / 2.0,
        h - 10.0
    );
    for (i, (which, p)) in points.iter().enumerate() {
        let color = colors[i % colors.len()];
        let path: Vec<String> = p
            .iter()
            .map(|(a, b)| format!("{:.1},{:.1}", x(*a), y(*b)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            path.join(" ")
        );
        for (a, b) in p {
            let _ = writeln!(
                svg,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{color}\"/>",
                x(*a),
                y(*b)
            );
        }
        let _ = writeln!(
            svg,
            "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{which}</text>",
            w - right + 16.0,
            top + 20.0 * i as f64,
            w - right + 34.0,
            top + 10.0 + 20.0 * i as f64
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Writes `results.json`, `report.md` and, for throughput cases, `latency.svg` into `dir`.
///
/// # Errors
/// When a file cannot be written.
pub(crate) fn write(dir: &Path, results: &[RunResult]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(results)?,
    )?;
    std::fs::write(dir.join("report.md"), markdown(results))?;
    if results.first().is_some_and(|r| r.kind == Kind::Throughput) {
        std::fs::write(dir.join("latency.svg"), chart(results))?;
    }
    Ok(())
}
