//! The Grafana dashboards of charts/trellis/dashboards/: valid dashboards,
//! one Prometheus data source chosen by a variable, templated by namespace
//! (and service), and every query built from metrics the sidecar and the
//! operator really register.

use std::collections::BTreeSet;

use trellis_e2e::delivery::{
    Dashboard, Family, exported_families, is_exported_series, promql_metric_names, promql_selectors,
};

fn families() -> BTreeSet<Family> {
    let mut all = exported_families("sidecar").unwrap();
    all.extend(exported_families("operator").unwrap());
    all
}

#[test]
fn the_code_exports_the_families_the_design_names() {
    let all = families();
    for (name, histogram) in [
        ("trellis_requests_total", false),
        ("trellis_request_duration_seconds", true),
        ("trellis_circuit_state", false),
        ("trellis_endpoints", false),
        ("trellis_operator_reconcile_total", false),
        ("trellis_operator_reconcile_duration_seconds", true),
    ] {
        assert!(
            all.contains(&Family {
                name: name.into(),
                histogram
            }),
            "{name} (histogram: {histogram}) not found in {all:?}"
        );
    }
}

#[test]
fn dashboards_are_grafana_dashboards() {
    let dashboards = Dashboard::all().unwrap();
    let files: Vec<_> = dashboards.iter().map(|d| d.file.as_str()).collect();
    assert_eq!(
        files,
        ["mesh-overview.json", "operator.json", "service-detail.json"]
    );
    let mut uids = BTreeSet::new();
    for d in &dashboards {
        let j = &d.json;
        assert!(
            j["title"]
                .as_str()
                .is_some_and(|t| t.starts_with("Trellis / ")),
            "{}",
            d.file
        );
        assert!(
            uids.insert(j["uid"].as_str().unwrap().to_string()),
            "{}: uid repeated",
            d.file
        );
        assert!(j["schemaVersion"].as_u64().unwrap() >= 36, "{}", d.file);
        let panels = d.panels();
        assert!(panels.len() >= 8, "{}: {} panels", d.file, panels.len());
        let mut ids = BTreeSet::new();
        for p in j["panels"].as_array().unwrap() {
            assert!(
                ids.insert(p["id"].as_u64().unwrap()),
                "{}: panel id repeated",
                d.file
            );
            let g = &p["gridPos"];
            assert!(
                g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
                "{}: {}",
                d.file,
                p["title"]
            );
        }
    }
}

#[test]
fn every_panel_queries_the_chosen_prometheus() {
    for d in Dashboard::all().unwrap() {
        let ds = d
            .variable("datasource")
            .unwrap_or_else(|| panic!("{}: no datasource variable", d.file));
        assert_eq!(ds["type"], "datasource");
        assert_eq!(ds["query"], "prometheus");
        for p in d.panels() {
            let title = &p["title"];
            assert_eq!(p["datasource"]["type"], "prometheus", "{}: {title}", d.file);
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "{}: {title}",
                d.file
            );
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{}: {title} has no query", d.file);
            for t in targets {
                assert_eq!(
                    t["datasource"]["uid"], "${datasource}",
                    "{}: {title}",
                    d.file
                );
                assert!(
                    t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                    "{}: {title}",
                    d.file
                );
            }
        }
    }
}

#[test]
fn dashboards_are_templated_by_namespace_and_service() {
    for d in Dashboard::all().unwrap() {
        let per_service = d.file != "operator.json";
        let mut wanted = vec![("namespace", "$namespace")];
        if per_service {
            wanted.push(("service", "$service"));
        }
        for (var, _) in &wanted {
            let v = d
                .variable(var)
                .unwrap_or_else(|| panic!("{}: no {var} variable", d.file));
            assert_eq!(v["type"], "query", "{}: {var}", d.file);
            assert_eq!(v["datasource"]["uid"], "${datasource}", "{}: {var}", d.file);
            let q = v["query"]["query"].as_str().unwrap();
            assert!(
                q.starts_with("label_values(") && q.contains(&format!(", {var})")),
                "{}: {q}",
                d.file
            );
        }
        for (title, expr) in d.queries() {
            let selectors = promql_selectors(&expr);
            assert!(!selectors.is_empty(), "{}: {title}: no selector", d.file);
            for s in selectors {
                for (label, var) in &wanted {
                    assert!(
                        s.contains(&format!("{label}=~\"{var}\""))
                            || s.contains(&format!("{label}=\"{var}\"")),
                        "{}: {title}: selector {{{s}}} does not select on {var}",
                        d.file
                    );
                }
            }
        }
    }
}

#[test]
fn queries_use_only_exported_metrics_and_cover_them_all() {
    let families = families();
    let mut used = BTreeSet::new();
    for d in Dashboard::all().unwrap() {
        let variable_queries = ["namespace", "service"]
            .iter()
            .filter_map(|v| d.variable(v))
            .map(|v| {
                // label_values(SELECTOR, LABEL): the selector is the query.
                let q = v["query"]["query"].as_str().unwrap();
                let selector = q
                    .strip_prefix("label_values(")
                    .and_then(|rest| rest.rsplit_once(','))
                    .map_or(q, |(selector, _)| selector);
                (format!("variable {}", v["name"]), selector.to_string())
            });
        for (title, expr) in d.queries().into_iter().chain(variable_queries) {
            let names = promql_metric_names(&expr);
            assert!(
                !names.is_empty(),
                "{}: {title}: no metric in {expr}",
                d.file
            );
            for name in names {
                assert!(
                    is_exported_series(&families, &name),
                    "{}: {title}: {name} is not a series the sidecar or the operator exports",
                    d.file
                );
                used.insert(name);
            }
        }
    }
    // Every family is on some panel.
    for f in &families {
        let series = if f.histogram {
            format!("{}_bucket", f.name)
        } else {
            f.name.clone()
        };
        assert!(used.contains(&series), "no panel shows {}", f.name);
    }
}
