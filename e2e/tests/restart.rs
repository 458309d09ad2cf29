//! The operator survives an API server restart. Its own test binary: it
//! restarts the shared API server, which no other test may see.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, PostParams};
use trellis_api::crd::MeshService;
use trellis_api::parse::from_yaml;
use trellis_e2e::{ControlPlane, eventually, install_crds, operator_client, test_namespace};
use trellis_operator::{Operator, OperatorConfig};

fn mesh_service(name: &str) -> MeshService {
    from_yaml(&format!(
        "apiVersion: mesh.trellis.dev/v1alpha1\nkind: MeshService\nmetadata: {{name: {name}}}\nspec: {{image: trellis/{name}:dev, port: 8080}}\n"
    ))
    .unwrap()
}

#[tokio::test]
async fn operator_reconnects_after_an_api_server_restart() {
    let Some(cp) = ControlPlane::attach("operator_reconnects_after_an_api_server_restart") else {
        return;
    };
    let admin = cp.client().await.unwrap();
    install_crds(&admin).await.unwrap();
    let ns = test_namespace(&admin, "restart").await.unwrap();
    let client = operator_client(&cp).await.unwrap();
    let op = Operator::start(
        client,
        OperatorConfig {
            namespace: Some(ns.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();

    let msvcs = Api::<MeshService>::namespaced(admin.clone(), &ns);
    let deploys = Api::<Deployment>::namespaced(admin.clone(), &ns);
    msvcs
        .create(&PostParams::default(), &mesh_service("before"))
        .await
        .unwrap();
    eventually(Duration::from_secs(30), || async {
        deploys.get_opt("before").await.ok()?
    })
    .await
    .unwrap();

    cp.restart_apiserver().unwrap();

    let admin = cp.client().await.unwrap();
    let msvcs = Api::<MeshService>::namespaced(admin.clone(), &ns);
    let deploys = Api::<Deployment>::namespaced(admin.clone(), &ns);
    eventually(Duration::from_secs(30), || async {
        msvcs
            .create(&PostParams::default(), &mesh_service("after"))
            .await
            .ok()
    })
    .await
    .expect("API server back");
    eventually(Duration::from_secs(60), || async {
        deploys.get_opt("after").await.ok()?
    })
    .await
    .expect("the operator reconciles a change made after the restart");
    op.shutdown().await;
}
