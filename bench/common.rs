//! Helpers shared by the benchmarks (each includes this file as a module).

/// Peak resident memory of this process so far (VmHWM), in MiB; 0 where
/// /proc is unavailable.
pub fn peak_rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}
