//! The mesh at work: pods with their sidecars, HTTP and gRPC through both
//! sidecars, discovery that follows EndpointSlices, and the injector webhook
//! called by the real API server.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use trellis_api::inject::PROXY_CONTAINER;
use trellis_api::proxy::INBOUND_PORT;
use trellis_e2e::cluster::{
    Cluster, app_image, app_service, condition, eventually, name, pod_ip, pod_ready, report,
    shared, sidecar_status,
};
use trellis_e2e_app::api::{CallSpec, GrpcCall, GrpcSpec};

use crate::support::{READY, echo_and_driver};

fn started_at(status: &k8s_openapi::api::core::v1::ContainerStatus) -> Option<String> {
    let started = status
        .state
        .as_ref()?
        .running
        .as_ref()?
        .started_at
        .as_ref()?;
    Some(started.0.to_string())
}

#[tokio::test]
async fn a_mesh_service_runs_its_sidecar_first_and_is_ready_only_when_both_are() {
    let _cluster = shared().await;
    let Some(cluster) = Cluster::attach("sidecar_first").await else {
        return;
    };
    let mesh = cluster.namespace("ready").await.unwrap();
    let created = Instant::now();
    mesh.apply_service("echo", app_service("echo", 1, &[], json!([])))
        .await
        .unwrap();
    let pods = mesh.wait_ready("echo", 1, READY).await.unwrap();
    report(
        "MeshService Ready=True after create (1 pod)",
        created.elapsed().as_secs_f64(),
        "s",
    );
    let pod = &pods[0];

    // The sidecar is a native sidecar: the first init container, restartPolicy Always.
    let spec = pod.spec.as_ref().unwrap();
    let first_init = &spec.init_containers.as_ref().unwrap()[0];
    assert_eq!(first_init.name, PROXY_CONTAINER);
    assert_eq!(first_init.restart_policy.as_deref(), Some("Always"));
    // It was started before the app, and both are ready.
    let proxy = sidecar_status(pod).expect("sidecar status");
    let app = &pod
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0];
    assert!(proxy.ready && app.ready, "{proxy:?} {app:?}");
    let (proxy_started, app_started) = (started_at(&proxy).unwrap(), started_at(app).unwrap());
    assert!(
        proxy_started <= app_started,
        "sidecar started {proxy_started}, app {app_started}"
    );

    // The app stops being ready: the pod is not Ready although its sidecar is.
    let pod_name = name(pod);
    mesh.set_ready(&pod_name, false).await.unwrap();
    let unready = eventually(Duration::from_secs(30), || async {
        let p = mesh.get_pod(&pod_name).await.ok()?;
        (!pod_ready(&p)).then_some(p)
    })
    .await
    .expect("the pod turns unready with its app");
    assert!(
        sidecar_status(&unready).is_some_and(|s| s.ready),
        "the sidecar stays ready"
    );
    assert!(!condition(&unready, "ContainersReady"));
    mesh.set_ready(&pod_name, true).await.unwrap();
    mesh.wait_ready("echo", 1, READY).await.unwrap();
    mesh.cleanup().await;
}

#[tokio::test]
async fn http_goes_through_both_sidecars_and_discovery_follows_scaling() {
    let _cluster = shared().await;
    let Some(cluster) = Cluster::attach("http_and_discovery").await else {
        return;
    };
    let mesh = cluster.namespace("http").await.unwrap();
    let driver = echo_and_driver(&mesh, "echo", 1, &["echo"]).await.unwrap();
    let echo_pod = name(&mesh.pods("echo").await.unwrap()[0]);

    let outbound = |m: &trellis_e2e::cluster::Metrics| {
        m.sum(
            "trellis_requests_total",
            &[("direction", "outbound"), ("peer", "echo")],
        )
    };
    let inbound = |m: &trellis_e2e::cluster::Metrics| {
        m.sum("trellis_requests_total", &[("direction", "inbound")])
    };
    let out_before = outbound(&mesh.metrics(&driver).await.unwrap());
    let in_before = inbound(&mesh.metrics(&echo_pod).await.unwrap());
    let ns = mesh.ns.clone();
    for authority in [
        "echo".to_string(),
        format!("echo.{ns}"),
        format!("echo.{ns}.svc.cluster.local"),
    ] {
        let r = mesh.get(&driver, &authority, "/hello").await.unwrap();
        assert_eq!(r.status, 200, "{authority}: {r:?}");
        let echo = r.echo().expect("an echo answer");
        assert_eq!(
            (echo.pod.as_str(), echo.path.as_str()),
            (echo_pod.as_str(), "/hello")
        );
    }
    // Both sidecars counted the calls: the driver's outbound, the echo's inbound.
    let out_after = outbound(&mesh.metrics(&driver).await.unwrap());
    let in_after = inbound(&mesh.metrics(&echo_pod).await.unwrap());
    assert_eq!(out_after - out_before, 3.0);
    assert!(in_after - in_before >= 3.0, "{in_before} -> {in_after}");

    // 1 -> 3: the driver's sidecar learns the new endpoints and spreads calls over them.
    let scaled = Instant::now();
    mesh.scale("echo", 3).await.unwrap();
    let pods = mesh.wait_ready("echo", 3, READY).await.unwrap();
    let want: Vec<String> = {
        let mut v: Vec<String> = pods
            .iter()
            .map(|p| format!("{}:{INBOUND_PORT}", pod_ip(p)))
            .collect();
        v.sort();
        v
    };
    eventually(Duration::from_secs(30), || async {
        (mesh.ready_endpoints(&driver, "echo").await.ok()? == want).then_some(())
    })
    .await
    .expect("the driver's sidecar sees the three pods");
    report(
        "scale 1->3: endpoints in the caller's sidecar",
        scaled.elapsed().as_secs_f64(),
        "s",
    );
    // The balancer prefers fast endpoints (peak EWMA), and an unused one's
    // estimate decays until it is picked: every replica serves within a while.
    let spec = CallSpec {
        authority: "echo".into(),
        path: "/spread".into(),
        method: "GET".into(),
        count: 20,
        body: String::new(),
    };
    let names: BTreeSet<String> = pods.iter().map(name).collect();
    let mut served = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while served != names && Instant::now() < deadline {
        let results = mesh.call(&driver, &spec).await.unwrap();
        assert!(results.iter().all(|r| r.status == 200), "{results:?}");
        served.extend(results.iter().filter_map(|r| r.echo()).map(|e| e.pod));
    }
    assert_eq!(served, names, "every replica serves");

    // 3 -> 1: the sidecar drops the endpoints of the removed pods.
    let scaled = Instant::now();
    mesh.scale("echo", 1).await.unwrap();
    let pods = mesh.wait_ready("echo", 1, READY).await.unwrap();
    let last = format!("{}:{INBOUND_PORT}", pod_ip(&pods[0]));
    eventually(Duration::from_secs(30), || async {
        (mesh.ready_endpoints(&driver, "echo").await.ok()? == vec![last.clone()]).then_some(())
    })
    .await
    .expect("the driver's sidecar keeps only the last pod");
    report(
        "scale 3->1: endpoints in the caller's sidecar",
        scaled.elapsed().as_secs_f64(),
        "s",
    );
    let spec = CallSpec { count: 20, ..spec };
    let results = mesh.call(&driver, &spec).await.unwrap();
    assert!(
        results
            .iter()
            .all(|r| r.status == 200 && r.echo().is_some_and(|e| e.pod == name(&pods[0]))),
        "{results:?}"
    );
    mesh.cleanup().await;
}

#[tokio::test]
async fn grpc_unary_and_server_streaming_between_two_pods() {
    let _cluster = shared().await;
    let Some(cluster) = Cluster::attach("grpc").await else {
        return;
    };
    let mesh = cluster.namespace("grpc").await.unwrap();
    let mut grpc = app_service("echo", 1, &[], json!([]));
    grpc["protocol"] = json!("grpc");
    mesh.apply_service("grpc-echo", grpc).await.unwrap();
    mesh.apply_service(
        "driver",
        app_service("driver", 1, &["grpc-echo"], json!([])),
    )
    .await
    .unwrap();
    let server = name(&mesh.wait_ready("grpc-echo", 1, READY).await.unwrap()[0]);
    let driver = name(&mesh.wait_ready("driver", 1, READY).await.unwrap()[0]);
    let before_out = mesh.metrics(&driver).await.unwrap();
    let before_in = mesh.metrics(&server).await.unwrap();

    let unary = mesh
        .grpc(
            &driver,
            &GrpcSpec {
                authority: "grpc-echo".into(),
                call: GrpcCall::Unary,
                message: "ping".into(),
                count: 0,
            },
        )
        .await
        .unwrap();
    assert_eq!(unary.error, None);
    assert_eq!(unary.replies.len(), 1);
    assert_eq!(
        (
            unary.replies[0].message.as_str(),
            unary.replies[0].pod.as_str()
        ),
        ("ping", server.as_str())
    );

    let stream = mesh
        .grpc(
            &driver,
            &GrpcSpec {
                authority: "grpc-echo".into(),
                call: GrpcCall::ServerStream,
                message: "tick".into(),
                count: 5,
            },
        )
        .await
        .unwrap();
    assert_eq!(stream.error, None);
    let indices: Vec<u32> = stream.replies.iter().map(|r| r.index).collect();
    assert_eq!(indices, [0, 1, 2, 3, 4]);
    assert!(
        stream
            .replies
            .iter()
            .all(|r| r.pod == server && r.message == "tick")
    );

    // Both calls crossed both sidecars, as HTTP/2.
    let after_out = mesh.metrics(&driver).await.unwrap();
    let after_in = mesh.metrics(&server).await.unwrap();
    let out = |m: &trellis_e2e::cluster::Metrics| {
        m.sum(
            "trellis_requests_total",
            &[("direction", "outbound"), ("peer", "grpc-echo")],
        )
    };
    let inb = |m: &trellis_e2e::cluster::Metrics| {
        m.sum("trellis_requests_total", &[("direction", "inbound")])
    };
    assert_eq!(out(&after_out) - out(&before_out), 2.0);
    assert!(inb(&after_in) - inb(&before_in) >= 2.0);
    mesh.cleanup().await;
}

#[tokio::test]
async fn the_api_server_calls_the_injector_for_a_plain_annotated_deployment() {
    let _cluster = shared().await;
    let Some(cluster) = Cluster::attach("injector").await else {
        return;
    };
    let mesh = cluster.namespace("inject").await.unwrap();
    // The echo to call, and the MeshService whose sidecar config and
    // ServiceAccount the plain Deployment borrows (its upstream is the echo).
    let _ = echo_and_driver(&mesh, "echo", 1, &["echo"]).await.unwrap();

    let deployment = |name: &str, annotations: serde_json::Value| -> Deployment {
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}, "annotations": annotations},
                    "spec": {
                        "serviceAccountName": "driver",
                        "containers": [{
                            "name": "app",
                            "image": app_image(),
                            "env": [
                                {"name": "APP_ROLE", "value": "driver"},
                                // Not meshed, it is probed on the pod's address.
                                {"name": "APP_LISTEN", "value": "0.0.0.0:8080"},
                                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
                            ],
                            "readinessProbe": {"httpGet": {"path": "/health/ready", "port": 8080}}
                        }]
                    }
                }
            }
        }))
        .unwrap()
    };
    let deployments: Api<Deployment> = Api::namespaced(mesh.client.clone(), &mesh.ns);
    deployments
        .create(
            &PostParams::default(),
            &deployment(
                "plain-meshed",
                json!({"mesh.trellis.dev/inject": "enabled", "mesh.trellis.dev/service": "driver"}),
            ),
        )
        .await
        .unwrap();
    deployments
        .create(
            &PostParams::default(),
            &deployment("plain-unmeshed", json!({})),
        )
        .await
        .unwrap();

    let pods: Api<Pod> = Api::namespaced(mesh.client.clone(), &mesh.ns);
    let ready_pod = |app: &'static str| {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels(&format!("app={app}")))
                .await
                .ok()?;
            list.items.into_iter().find(pod_ready)
        }
    };
    let meshed = eventually(READY, || ready_pod("plain-meshed"))
        .await
        .expect("the annotated pod runs");
    let unmeshed = eventually(READY, || ready_pod("plain-unmeshed"))
        .await
        .expect("the plain pod runs");

    let inits = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.init_containers.clone())
            .unwrap_or_default()
    };
    let injected = inits(&meshed);
    assert_eq!(injected.len(), 1, "{injected:?}");
    assert_eq!(injected[0].name, PROXY_CONTAINER);
    assert_eq!(injected[0].restart_policy.as_deref(), Some("Always"));
    assert!(sidecar_status(&meshed).is_some_and(|s| s.ready));
    assert!(inits(&unmeshed).is_empty(), "no annotation, no sidecar");

    // The injected sidecar carries the MeshService's config: the pod reaches the echo through it.
    let r = mesh
        .get(&name(&meshed), "echo", "/from-injected")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.echo().unwrap().path, "/from-injected");
    mesh.cleanup().await;
}
