//! Prometheus metrics: request counts and latency by route, labels submitted,
//! and queue depth (computed from the database at scrape time).
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// In-process metrics registry.
#[derive(Default)]
pub struct Metrics {
    /// Labels accepted.
    pub labels_submitted: AtomicU64,
    /// Tasks skipped.
    pub skips: AtomicU64,
    /// Leases handed out.
    pub leases_granted: AtomicU64,
    /// Expired leases reclaimed.
    pub leases_expired: AtomicU64,
    requests: Mutex<HashMap<(String, String, u16), u64>>,
    latency: Mutex<HashMap<String, Histogram>>,
}

impl Metrics {
    /// Records one finished request.
    pub fn observe_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        {
            let mut r = self.requests.lock().unwrap_or_else(|e| e.into_inner());
            *r.entry((method.to_string(), route.to_string(), status))
                .or_default() += 1;
        }
        let secs = elapsed.as_secs_f64();
        let mut l = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let h = l.entry(route.to_string()).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// Renders the Prometheus text exposition format; `queue_depth` is the
    /// number of labels still wanted on open comparisons.
    pub fn render(&self, queue_depth: i64, active_leases: i64) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            &mut out,
            "rlhf_labels_submitted_total",
            "Labels accepted.",
            self.labels_submitted.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "rlhf_skips_total",
            "Tasks skipped by labelers.",
            self.skips.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "rlhf_leases_granted_total",
            "Task leases handed out.",
            self.leases_granted.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "rlhf_leases_expired_total",
            "Expired leases reclaimed.",
            self.leases_expired.load(Ordering::Relaxed),
        );
        let _ = writeln!(out, "# HELP rlhf_queue_depth Labels still wanted on open comparisons.\n# TYPE rlhf_queue_depth gauge\nrlhf_queue_depth {queue_depth}");
        let _ = writeln!(out, "# HELP rlhf_active_leases Leases currently held.\n# TYPE rlhf_active_leases gauge\nrlhf_active_leases {active_leases}");

        let _ = writeln!(out, "# HELP rlhf_http_requests_total HTTP requests by method, route and status.\n# TYPE rlhf_http_requests_total counter");
        let mut reqs: Vec<_> = {
            let r = self.requests.lock().unwrap_or_else(|e| e.into_inner());
            r.iter().map(|(k, v)| (k.clone(), *v)).collect()
        };
        reqs.sort();
        for ((method, route, status), v) in reqs {
            let _ = writeln!(
                out,
                "rlhf_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {v}",
                label_value(&method),
                label_value(&route)
            );
        }

        let _ = writeln!(out, "# HELP rlhf_http_request_duration_seconds HTTP request latency by route.\n# TYPE rlhf_http_request_duration_seconds histogram");
        let l = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let mut routes: Vec<_> = l.keys().cloned().collect();
        routes.sort();
        for route in routes {
            let h = &l[&route];
            let r = label_value(&route);
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "rlhf_http_request_duration_seconds_bucket{{route=\"{r}\",le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "rlhf_http_request_duration_seconds_bucket{{route=\"{r}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "rlhf_http_request_duration_seconds_sum{{route=\"{r}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "rlhf_http_request_duration_seconds_count{{route=\"{r}\"}} {}",
                h.count
            );
        }
        out
    }
}

/// Escapes a Prometheus label value.
fn label_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.labels_submitted.fetch_add(2, Ordering::Relaxed);
        m.observe_request("GET", "/healthz", 200, Duration::from_millis(3));
        let text = m.render(7, 1);
        assert!(text.contains("rlhf_labels_submitted_total 2"));
        assert!(text.contains("rlhf_queue_depth 7"));
        assert!(text.contains(
            "rlhf_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 1"
        ));
        assert!(text.contains(
            "rlhf_http_request_duration_seconds_bucket{route=\"/healthz\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "rlhf_http_request_duration_seconds_bucket{route=\"/healthz\",le=\"0.001\"} 0"
        ));
    }
}
