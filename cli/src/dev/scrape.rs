//! The sidecars' Prometheus text read into samples, and two scrapes of one
//! sidecar turned into what the status page shows: rates, success, latency
//! quantiles, breaker states. Pure.

use std::collections::BTreeMap;

/// One sample: metric name, labels, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    fn label(&self, key: &str) -> &str {
        self.labels.get(key).map(String::as_str).unwrap_or("")
    }
}

/// Parses the text exposition format; lines it cannot read are skipped
/// (a page of numbers is no reason to stop showing the others).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (series, value) = line.trim().rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        None => (series.to_string(), BTreeMap::new()),
        Some((name, rest)) => (name.to_string(), parse_labels(rest.strip_suffix('}')?)?),
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

fn parse_labels(mut rest: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.insert(key.trim_start_matches(',').trim().to_string(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some(labels)
}

/// Sum of a counter's samples whose labels match all of `with`.
fn total(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && with.iter().all(|(k, v)| s.label(k) == *v))
        .map(|s| s.value)
        .sum()
}

/// What one sidecar did between two scrapes `seconds` apart.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Window {
    /// Requests into the service per second.
    pub rate: f64,
    /// Share of those not answered 5xx; `None` without requests.
    pub success: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Totals since the sidecar started.
    pub retries: f64,
    pub fallbacks: f64,
    pub ejected: f64,
    /// Times any of its breakers opened.
    pub breaker_opens: f64,
    /// Per upstream: breaker state (closed, open, half-open) and calls per second.
    pub peers: BTreeMap<String, Upstream>,
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Upstream {
    pub breaker: &'static str,
    pub rate: f64,
}

const REQUESTS: &str = "trellis_requests_total";
const DURATION_BUCKET: &str = "trellis_request_duration_seconds_bucket";

/// Compares two scrapes of one sidecar.
pub fn window(before: &[Sample], now: &[Sample], seconds: f64) -> Window {
    let delta = |name: &str, with: &[(&str, &str)]| {
        (total(now, name, with) - total(before, name, with)).max(0.0)
    };
    let inbound = [("direction", "inbound")];
    let requests = delta(REQUESTS, &inbound);
    let failed = delta(
        REQUESTS,
        &[("direction", "inbound"), ("status_class", "5xx")],
    );
    let per_second = |n: f64| if seconds > 0.0 { n / seconds } else { 0.0 };

    let mut peers = BTreeMap::new();
    for s in now
        .iter()
        .filter(|s| s.name == REQUESTS && s.label("direction") == "outbound")
    {
        peers
            .entry(s.label("peer").to_string())
            .or_insert_with(Upstream::default);
    }
    for s in now.iter().filter(|s| s.name == "trellis_circuit_state") {
        peers
            .entry(s.label("peer").to_string())
            .or_insert_with(Upstream::default);
    }
    for (peer, up) in peers.iter_mut() {
        let state = now
            .iter()
            .find(|s| s.name == "trellis_circuit_state" && s.label("peer") == peer)
            .map(|s| s.value);
        up.breaker = match state {
            Some(1.0) => "open",
            Some(2.0) => "half-open",
            _ => "closed",
        };
        up.rate = per_second(delta(
            REQUESTS,
            &[("direction", "outbound"), ("peer", peer)],
        ));
    }

    Window {
        rate: per_second(requests),
        success: (requests > 0.0).then(|| 1.0 - failed / requests),
        p50_ms: quantile(before, now, 0.50),
        p99_ms: quantile(before, now, 0.99),
        retries: total(now, "trellis_retries_total", &[]),
        fallbacks: total(now, "trellis_fallback_responses_total", &[]),
        ejected: total(now, "trellis_endpoints", &[("state", "ejected")]),
        breaker_opens: total(now, "trellis_circuit_transitions_total", &[("to", "open")]),
        peers,
    }
}

/// The `q` quantile of inbound latency in the window, in milliseconds, by
/// linear interpolation inside the bucket (as PromQL's histogram_quantile).
fn quantile(before: &[Sample], now: &[Sample], q: f64) -> Option<f64> {
    let buckets = |samples: &[Sample]| -> BTreeMap<u64, f64> {
        let mut out = BTreeMap::new();
        let inbound = samples
            .iter()
            .filter(|s| s.name == DURATION_BUCKET && s.label("direction") == "inbound");
        for s in inbound {
            let le: f64 = match s.label("le") {
                "+Inf" => f64::INFINITY,
                v => match v.parse() {
                    Ok(le) => le,
                    Err(_) => continue,
                },
            };
            *out.entry(le.to_bits()).or_insert(0.0) += s.value;
        }
        out
    };
    let (b, n) = (buckets(before), buckets(now));
    let mut cumulative: Vec<(f64, f64)> = n
        .iter()
        .map(|(le, v)| (f64::from_bits(*le), v - b.get(le).copied().unwrap_or(0.0)))
        .collect();
    cumulative.sort_by(|a, b| a.0.total_cmp(&b.0));
    let count = cumulative.last()?.1;
    if count <= 0.0 {
        return None;
    }
    let rank = q * count;
    let mut lower = (0.0, 0.0);
    for (le, c) in cumulative {
        if c >= rank {
            if le.is_infinite() {
                return Some(lower.0 * 1000.0);
            }
            let share = if c > lower.1 {
                (rank - lower.1) / (c - lower.1)
            } else {
                1.0
            };
            return Some((lower.0 + (le - lower.0) * share) * 1000.0);
        }
        lower = (le, c);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"
# HELP trellis_requests_total Requests
# TYPE trellis_requests_total counter
trellis_requests_total{direction="inbound",outcome="success",peer="inbound",status_class="2xx"} 100
trellis_requests_total{direction="inbound",outcome="error",peer="inbound",status_class="5xx"} 0
trellis_request_duration_seconds_bucket{direction="inbound",peer="inbound",le="0.01"} 50
trellis_request_duration_seconds_bucket{direction="inbound",peer="inbound",le="0.1"} 100
trellis_request_duration_seconds_bucket{direction="inbound",peer="inbound",le="+Inf"} 100
trellis_circuit_state{peer="payments"} 0
"#;
    const NOW: &str = r#"
trellis_requests_total{direction="inbound",outcome="success",peer="inbound",status_class="2xx"} 190
trellis_requests_total{direction="inbound",outcome="error",peer="inbound",status_class="5xx"} 10
trellis_requests_total{direction="outbound",outcome="circuit-open",peer="payments",status_class="5xx"} 40
trellis_request_duration_seconds_bucket{direction="inbound",peer="inbound",le="0.01"} 50
trellis_request_duration_seconds_bucket{direction="inbound",peer="inbound",le="0.1"} 150
trellis_request_duration_seconds_bucket{direction="inbound",peer="inbound",le="+Inf"} 200
trellis_circuit_state{peer="payments"} 1
trellis_fallback_responses_total{peer="payments"} 7
trellis_endpoints{peer="payments",state="ejected"} 1
trellis_endpoints{peer="payments",state="ready"} 2
trellis_retries_total{peer="payments",reason="connect-failure"} 3
"#;

    #[test]
    fn parses_names_labels_and_values() {
        let s = parse(r#"a_total{x="1",y="q\"uote"} 2.5"#);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].name, "a_total");
        assert_eq!(s[0].labels["y"], "q\"uote");
        assert_eq!(s[0].value, 2.5);
        assert_eq!(parse("plain 3\n# comment\nbroken{ 1")[0].value, 3.0);
        assert_eq!(parse("plain 3\nbroken{ 1").len(), 1);
    }

    #[test]
    fn a_window_has_rates_success_quantiles_and_breakers() {
        let w = window(&parse(BEFORE), &parse(NOW), 10.0);
        assert_eq!(w.rate, 10.0);
        assert_eq!(w.success, Some(0.9));
        // 100 new requests: none ≤ 10ms, 50 in (10ms, 100ms], 50 beyond.
        let p50 = w.p50_ms.unwrap();
        assert!((p50 - 100.0).abs() < 1e-9, "{p50}");
        assert_eq!(w.p99_ms, Some(100.0));
        assert_eq!(w.peers["payments"].breaker, "open");
        assert_eq!(w.peers["payments"].rate, 4.0);
        assert_eq!((w.fallbacks, w.ejected, w.retries), (7.0, 1.0, 3.0));
    }

    #[test]
    fn no_requests_means_no_success_rate_or_latency() {
        let w = window(&parse(NOW), &parse(NOW), 1.0);
        assert_eq!((w.rate, w.success, w.p99_ms), (0.0, None, None));
    }
}
