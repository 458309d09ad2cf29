//! Latency percentiles for the benchmarks.

use std::future::Future;
use std::time::{Duration, Instant};

/// p50, p90, p99 and max of `samples` (sorted here).
pub fn percentiles(samples: &mut [Duration]) -> [Duration; 4] {
    samples.sort();
    let last = samples.len().saturating_sub(1);
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(last)];
    [at(0.5), at(0.9), at(0.99), samples[last]]
}

/// One line: the name, the count and the percentiles in milliseconds.
pub fn report(name: &str, samples: &mut [Duration]) {
    let [p50, p90, p99, max] = percentiles(samples);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{name:<46} n={:<5} p50={:>7.3} ms  p90={:>7.3} ms  p99={:>7.3} ms  max={:>7.3} ms",
        samples.len(),
        ms(p50),
        ms(p90),
        ms(p99),
        ms(max),
    );
}

/// Runs `call` `n` times after a warm-up, one after another; prints the line.
pub async fn measure<F, Fut>(name: &str, n: usize, mut call: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    for _ in 0..n.min(50) {
        call().await;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        call().await;
        samples.push(start.elapsed());
    }
    report(name, &mut samples);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_hundred() {
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let [p50, p90, p99, max] = percentiles(&mut samples);
        assert_eq!(
            [p50, p90, p99, max].map(|d| d.as_millis()),
            [51, 91, 100, 100]
        );
    }
}
