//! `--chaos payments=50%`: turns a service's fault knob, its
//! `PUT /admin/faults`, called on the app's own port (the gateway does not
//! route it).

use std::collections::BTreeMap;
use std::time::Duration;

use super::plan::Ports;

/// `SERVICE=RATE` with RATE `50%` or `0.5`.
pub fn parse(knob: &str) -> Result<(String, f64), String> {
    let (service, rate) = knob
        .split_once('=')
        .ok_or_else(|| format!("{knob:?} is not SERVICE=RATE"))?;
    let rate = rate.trim();
    let value = match rate.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => rate.parse::<f64>(),
    }
    .map_err(|_| format!("{rate:?} is not a rate such as 50% or 0.5"))?;
    if !(0.0..=1.0).contains(&value) {
        return Err(format!("{rate:?} is not between 0% and 100%"));
    }
    Ok((service.trim().to_string(), value))
}

pub async fn turn(knob: &str, ports: &BTreeMap<String, Ports>) -> Result<String, String> {
    let (service, rate) = parse(knob)?;
    let p = ports
        .get(&service)
        .ok_or_else(|| format!("no service {service:?} is running"))?;
    let url = format!("http://127.0.0.1:{}/admin/faults", p.app);
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let answer = client
        .put(&url)
        .json(&serde_json::json!({"failureRate": rate, "addedLatency": "0ms"}))
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if !answer.status().is_success() {
        return Err(format!("{url} answered {}", answer.status()));
    }
    Ok(format!(
        "chaos: {service} now fails {:.0}% of its requests",
        rate * 100.0
    ))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn rates_as_percentages_or_fractions() {
        assert_eq!(parse("payments=50%"), Ok(("payments".into(), 0.5)));
        assert_eq!(parse("payments=0.25"), Ok(("payments".into(), 0.25)));
        assert!(parse("payments").is_err());
        assert!(parse("payments=150%").is_err());
        assert!(parse("payments=often").is_err());
    }
}
