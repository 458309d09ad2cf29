//! What the delivery tests share: the Go tools built for them (helm, Jaeger),
//! `helm template` parsed into objects, the Grafana dashboards of
//! `charts/trellis/dashboards/` and the metric names their queries use, and
//! the metric families the code exports.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::Value;

use crate::repo_root;

/// The trellis chart.
pub fn trellis_chart() -> PathBuf {
    repo_root().join("charts/trellis")
}

/// A tool built from its Go module by `e2e/kind/tools.sh` (cached; built when missing).
pub fn tool(name: &str) -> anyhow::Result<PathBuf> {
    let script = repo_root().join("e2e/kind/tools.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(name)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "e2e/kind/tools.sh {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let key = format!("{}=", name.to_uppercase());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .map(PathBuf::from)
        .with_context(|| format!("e2e/kind/tools.sh {name} printed no {key} line"))
}

/// Runs helm; its stdout, or an error carrying its stderr.
pub fn helm(args: &[&str]) -> anyhow::Result<String> {
    let helm = tool("helm")?;
    let out = Command::new(&helm)
        .args(args)
        .output()
        .with_context(|| format!("running {}", helm.display()))?;
    if !out.status.success() {
        bail!(
            "helm {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Every object of a multi-document YAML stream (empty documents left out).
pub fn yaml_objects(text: &str) -> anyhow::Result<Vec<serde_yaml::Value>> {
    let mut objects = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(doc)?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    Ok(objects)
}

/// `helm template` of the trellis chart into `namespace`, with `--set` values, as objects.
pub fn render_trellis(namespace: &str, sets: &[&str]) -> anyhow::Result<Vec<serde_yaml::Value>> {
    render_chart(&trellis_chart(), "trellis", namespace, sets)
}

/// The shop chart.
pub fn shop_chart() -> PathBuf {
    repo_root().join("charts/shop")
}

/// `helm template` of `chart` as `release` into `namespace`, with `--set` values, as objects.
pub fn render_chart(
    chart: &Path,
    release: &str,
    namespace: &str,
    sets: &[&str],
) -> anyhow::Result<Vec<serde_yaml::Value>> {
    let chart = chart.to_str().context("chart path is not UTF-8")?;
    let mut args = vec!["template", release, chart, "--namespace", namespace];
    for set in sets {
        args.extend(["--set", set]);
    }
    yaml_objects(&helm(&args)?)
}

/// `kind/name` of an object.
pub fn object_id(o: &serde_yaml::Value) -> String {
    format!(
        "{}/{}",
        o["kind"].as_str().unwrap_or("?"),
        o["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// The one object of this kind and name.
pub fn find<'a>(
    objects: &'a [serde_yaml::Value],
    kind: &str,
    name: &str,
) -> anyhow::Result<&'a serde_yaml::Value> {
    let id = format!("{kind}/{name}");
    let found: Vec<_> = objects.iter().filter(|o| object_id(o) == id).collect();
    match found.as_slice() {
        [one] => Ok(one),
        [] => bail!(
            "no {id} among {:?}",
            objects.iter().map(object_id).collect::<Vec<_>>()
        ),
        _ => bail!("{} objects {id}", found.len()),
    }
}

/// The literal `value`s of an `env` list (a container's, a MeshService spec's), by name.
pub fn env_values(env: &serde_yaml::Value) -> std::collections::BTreeMap<String, String> {
    env.as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_string(),
                e["value"].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// A dashboard of `charts/trellis/dashboards/`.
pub struct Dashboard {
    pub file: String,
    pub json: Value,
}

impl Dashboard {
    /// Every dashboard the chart ships.
    pub fn all() -> anyhow::Result<Vec<Dashboard>> {
        let dir = trellis_chart().join("dashboards");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read_to_string(&path)?;
                let json = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not JSON", path.display()))?;
                let file = path
                    .file_name()
                    .and_then(|f| f.to_str())
                    .context("file name")?
                    .to_string();
                out.push(Dashboard { file, json });
            }
        }
        out.sort_by(|a, b| a.file.cmp(&b.file));
        Ok(out)
    }

    /// The panels that show data (rows left out).
    pub fn panels(&self) -> Vec<&Value> {
        self.json["panels"]
            .as_array()
            .map(|ps| ps.iter().filter(|p| p["type"] != "row").collect())
            .unwrap_or_default()
    }

    /// `(panel title, query)` of every target of every panel.
    pub fn queries(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for panel in self.panels() {
            let title = panel["title"].as_str().unwrap_or("?").to_string();
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((title.clone(), expr.to_string()));
                }
            }
        }
        out
    }

    /// The template variable called `name`.
    pub fn variable(&self, name: &str) -> Option<&Value> {
        self.json["templating"]["list"]
            .as_array()?
            .iter()
            .find(|v| v["name"] == name)
    }
}

/// The query with Grafana's variables replaced as "All" would: every
/// namespace and service, and a rate window Prometheus understands.
pub fn expand_variables(expr: &str, rate_window: &str) -> String {
    expr.replace("$__rate_interval", rate_window)
        .replace("=\"$namespace\"", "=~\".+\"")
        .replace("=\"$service\"", "=~\".+\"")
        .replace("$namespace", ".+")
        .replace("$service", ".+")
}

/// The query as Grafana sends it with `namespace` and `service` chosen
/// (`service` empty: the variable is not substituted).
pub fn substitute_variables(
    expr: &str,
    rate_window: &str,
    namespace: &str,
    service: &str,
) -> String {
    let expr = expr
        .replace("$__rate_interval", rate_window)
        .replace("$namespace", namespace);
    if service.is_empty() {
        expr
    } else {
        expr.replace("$service", service)
    }
}

/// Keywords, and aggregations (their `by (...)` may come before the parenthesis).
const PROMQL_KEYWORDS: &[&str] = &[
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
    "Inf",
    "NaN",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
/// Keywords followed by a parenthesised list of label names.
const PROMQL_LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression selects: identifiers that are not
/// functions, aggregations, keywords, label names or inside strings.
pub fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Skips from an opening bracket to its match (label matchers, ranges, label lists).
    let skip_group = |mut i: usize, open: char, close: char| {
        let mut depth = 0;
        let mut quote: Option<char> = None;
        while i < chars.len() {
            let c = chars[i];
            match quote {
                Some(_) if c == '\\' => i += 1,
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == '"' || c == '\'' || c == '`' => quote = Some(c),
                None if c == open => depth += 1,
                None if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                None => {}
            }
            i += 1;
        }
        i
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            i = skip_group(i, '{', '}');
        } else if c == '[' {
            i = skip_group(i, '[', ']');
        } else if c == '"' || c == '\'' || c == '`' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != c {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            i = j + 1;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let called = chars.get(j) == Some(&'(');
            if PROMQL_LABEL_LISTS.contains(&word.as_str()) {
                if called {
                    i = skip_group(j, '(', ')');
                }
            } else if !called && !PROMQL_KEYWORDS.contains(&word.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Every label selector (`{...}`) of a PromQL expression, braces left out.
pub fn promql_selectors(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        out.push(rest[start + 1..start + len].to_string());
        rest = &rest[start + len + 1..];
    }
    out
}

/// A metric family the code registers, and whether it is a histogram.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Family {
    pub name: String,
    pub histogram: bool,
}

/// The metric families registered by the non-test code of `crate_dir`
/// (`sidecar`, `operator`): every `"trellis_…"` string literal, a histogram
/// when its registration (just before the name) says so.
pub fn exported_families(crate_dir: &str) -> anyhow::Result<BTreeSet<Family>> {
    let mut out = BTreeSet::new();
    let mut stack = vec![repo_root().join(crate_dir).join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                scan_families(&path, &mut out)?;
            }
        }
    }
    Ok(out)
}

fn scan_families(path: &Path, out: &mut BTreeSet<Family>) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)?;
    // Test modules sit at the end of a file.
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    let mut rest = code;
    let mut offset = 0;
    while let Some(at) = rest.find("\"trellis_") {
        let start = offset + at + 1;
        let len = code[start..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(code.len() - start);
        if code[start + len..].starts_with('"') {
            let before = &code[start.saturating_sub(80)..start];
            out.insert(Family {
                name: code[start..start + len].to_string(),
                histogram: before.contains("istogram"),
            });
        }
        offset = start + len;
        rest = &code[offset..];
    }
    Ok(())
}

/// Whether `name` is a series name of one of `families`: a counter or gauge
/// by its own name, a histogram by `_bucket`, `_sum` or `_count`.
pub fn is_exported_series(families: &BTreeSet<Family>, name: &str) -> bool {
    families.iter().any(|f| {
        if f.histogram {
            ["_bucket", "_sum", "_count"]
                .iter()
                .any(|suffix| name.strip_prefix(f.name.as_str()) == Some(suffix))
        } else {
            name == f.name
        }
    })
}

/// The shop's six services: the MeshServices of examples/shop and charts/shop,
/// all of which an order's trace crosses.
pub const SHOP: [&str; 6] = [
    "gateway",
    "users",
    "products",
    "orders",
    "payments",
    "notifications",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_skip_functions_labels_strings_and_keywords() {
        let expr = r#"histogram_quantile(0.99, sum by (service, le) (rate(trellis_request_duration_seconds_bucket{namespace=~"$namespace", x="a{b}"}[$__rate_interval]))) / on (service) group_left sum without (peer) (foo_total offset 5m) > bool 0 or vector(1) and up"#;
        let names: Vec<_> = promql_metric_names(expr).into_iter().collect();
        assert_eq!(
            names,
            ["foo_total", "trellis_request_duration_seconds_bucket", "up"]
        );
    }

    #[test]
    fn selectors_are_found() {
        assert_eq!(
            promql_selectors(r#"a{x="1"} + b{y=~"2", z!="3"}"#),
            [r#"x="1""#, r#"y=~"2", z!="3""#]
        );
    }

    #[test]
    fn histograms_are_exported_by_their_series() {
        let families = BTreeSet::from([
            Family {
                name: "h_seconds".into(),
                histogram: true,
            },
            Family {
                name: "c_total".into(),
                histogram: false,
            },
        ]);
        assert!(is_exported_series(&families, "h_seconds_bucket"));
        assert!(is_exported_series(&families, "h_seconds_count"));
        assert!(!is_exported_series(&families, "h_seconds"));
        assert!(is_exported_series(&families, "c_total"));
        assert!(!is_exported_series(&families, "c_total_bucket"));
    }

    #[test]
    fn variables_are_substituted_as_chosen() {
        assert_eq!(
            substitute_variables(
                "rate(x{namespace=~\"$namespace\", service=\"$service\"}[$__rate_interval])",
                "20s",
                "shop",
                "orders"
            ),
            "rate(x{namespace=~\"shop\", service=\"orders\"}[20s])"
        );
    }

    #[test]
    fn variables_expand_to_all() {
        assert_eq!(
            expand_variables(
                r#"rate(x{namespace=~"$namespace", service="$service"}[$__rate_interval])"#,
                "1m"
            ),
            r#"rate(x{namespace=~".+", service=~".+"}[1m])"#
        );
    }
}
