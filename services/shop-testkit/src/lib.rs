//! Test support for the shop's services: a fresh database per test on SQLite
//! and on Postgres, the test broker, and services started on loopback ports.
//!
//! Postgres and RabbitMQ come from `services/testenv/testenv.sh up`
//! (`SHOP_TEST_POSTGRES_URL`, `SHOP_TEST_AMQP_URL`). Without them a test
//! that needs them is skipped with a notice, except under `CI`, where a
//! missing server fails the test.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use sqlx::Connection;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Whether this is a CI run (`CI` set), where every server must be there.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// The value of a testenv variable, or `None` (after saying so) when it is
/// not set outside CI. Panics under CI.
pub fn testenv_var(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if in_ci() => panic!(
            "{var} is not set: under CI the shop's tests need their servers \
             (eval \"$(bash services/testenv/testenv.sh up)\")"
        ),
        _ => {
            eprintln!(
                "SKIPPED: {var} is not set (start the servers with \
                 eval \"$(bash services/testenv/testenv.sh up)\")"
            );
            None
        }
    }
}

/// The test broker's URL.
pub fn amqp_url() -> Option<String> {
    testenv_var("SHOP_TEST_AMQP_URL")
}

fn testenv(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../testenv/testenv.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .args(args)
        .output()
        .expect("running testenv.sh");
    assert!(
        out.status.success(),
        "testenv.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A virtual host of its own on the test broker, so that a test's queues
/// (`notifications`, `order_processing`, …) are not another test's; its
/// AMQP URL.
pub fn amqp_vhost() -> Option<String> {
    let base = amqp_url()?;
    let vhost = format!("t_{}", uuid::Uuid::new_v4().simple());
    testenv(&[
        "rabbitmqctl",
        "eval",
        &format!(
            "ok = rabbit_vhost:add(<<\"{vhost}\">>, <<\"tests\">>), \
             rabbit_auth_backend_internal:set_permissions(<<\"guest\">>, <<\"{vhost}\">>, \
             <<\".*\">>, <<\".*\">>, <<\".*\">>, <<\"tests\">>)."
        ),
    ]);
    let root = base.rsplit_once('/').map_or(base.as_str(), |(r, _)| r);
    Some(format!("{root}/{vhost}"))
}

/// Stops the test broker (RabbitMQ closes every connection and accepts
/// none) until [`start_broker`]; queues and persistent messages are kept.
pub fn stop_broker() {
    testenv(&["broker-stop"]);
}

pub fn start_broker() {
    testenv(&["broker-start"]);
}

/// Has the test broker close every connection whose client named itself
/// `name`, as a network failure would; how many it closed.
pub fn close_broker_connections(name: &str) -> usize {
    let ctl = |args: &[&str]| {
        let mut all = vec!["rabbitmqctl"];
        all.extend_from_slice(args);
        testenv(&all)
    };
    let listing = ctl(&["list_connections", "pid", "client_properties"]);
    let pids: Vec<String> = listing
        .lines()
        .filter(|line| line.contains(&format!("{{\"connection_name\",\"{name}\"}}")))
        .filter_map(|line| line.split('\t').next().map(str::to_string))
        .collect();
    for pid in &pids {
        ctl(&["close_connection", pid, "closed by a test"]);
    }
    if pids.is_empty() {
        eprintln!("no connection named {name:?} in:\n{listing}");
    }
    pids.len()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database of its own for one test.
#[derive(Debug)]
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    dir: Option<PathBuf>,
}

impl TestDb {
    /// A new SQLite file in a temporary directory, removed on drop.
    pub fn sqlite() -> TestDb {
        let dir = std::env::temp_dir().join(format!("shop-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("creating a temporary directory");
        TestDb {
            url: format!("sqlite://{}/test.db", dir.display()),
            backend: Backend::Sqlite,
            dir: Some(dir),
        }
    }

    /// A new database on the test Postgres server (dropped with the server).
    pub async fn postgres() -> Option<TestDb> {
        let admin = testenv_var("SHOP_TEST_POSTGRES_URL")?;
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("connecting to the test Postgres at {admin}: {e}"));
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("creating a test database");
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        Some(TestDb {
            url: format!("{base}/{name}"),
            backend: Backend::Postgres,
            dir: None,
        })
    }

    pub async fn of(backend: Backend) -> Option<TestDb> {
        match backend {
            Backend::Sqlite => Some(TestDb::sqlite()),
            Backend::Postgres => TestDb::postgres().await,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Declares each test twice, `sqlite::<name>` and `postgres::<name>`, each
/// calling `<name>(TestDb)` (an async fn in the calling module) with a
/// fresh database.
#[macro_export]
macro_rules! db_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::TestDb::sqlite()).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = $crate::TestDb::postgres().await else { return };
                    super::$name(db).await
                }
            )*
        }
    };
}

/// A service running in this process on a loopback port.
pub struct Running {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Binds 127.0.0.1:0 and runs `serve(listener, shutdown)` in a task.
    pub async fn start<F, Fut>(serve: F) -> Running
    where
        F: FnOnce(TcpListener, CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        Running::start_on(listener().await, serve)
    }

    /// Runs `serve` on a listener bound earlier (so that services that call
    /// each other can know their addresses before any of them starts).
    pub fn start_on<F, Fut>(listener: TcpListener, serve: F) -> Running
    where
        F: FnOnce(TcpListener, CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let addr = listener.local_addr().expect("local address");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(listener, shutdown.clone()));
        Running {
            addr,
            shutdown,
            task,
        }
    }

    /// Serves a plain axum router (a stand-in or a recorder).
    pub async fn router(app: axum::Router) -> Running {
        Running::start(|listener, shutdown| async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await?;
            Ok(())
        })
        .await
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Asks the service to stop and waits for it; its result.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        (&mut self.task).await?
    }

    /// Whether the service has stopped (by itself).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A listener on a free loopback port.
pub async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a loopback port")
}

/// Waits until `GET url` answers 200 (a service's `/health/ready`).
pub async fn wait_ready(url: &str) {
    let client = http();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(url).send().await
            && r.status() == 200
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} not ready within 60 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Sends SIGTERM to a child process (what Kubernetes sends on shutdown).
pub fn terminate(child: &std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -TERM {} failed", child.id());
}

/// A plain HTTP client that never uses a proxy.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("building an HTTP client")
}

/// GETs `url`, expecting 200; its JSON body.
pub async fn get_json(url: &str) -> serde_json::Value {
    let (status, body) = send(http().get(url)).await;
    assert_eq!(status, 200, "GET {url}: {body}");
    body
}

/// Sends a request; its status and JSON body (`null` when not JSON).
pub async fn send(request: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
    let response = request.send().await.expect("sending a request");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}

/// A loopback address nothing listens on.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a loopback port");
    let addr = listener.local_addr().expect("local address");
    drop(listener);
    addr
}

/// Asserts a problem+json answer with `status` that names `field`; returns the problem.
pub async fn assert_problem(
    response: reqwest::Response,
    status: u16,
    field: Option<&str>,
) -> serde_json::Value {
    assert_eq!(
        response.status().as_u16(),
        status,
        "status of {}",
        response.url()
    );
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body: serde_json::Value = response.json().await.expect("a JSON problem body");
    assert_eq!(content_type, "application/problem+json", "{body}");
    assert_eq!(body["status"], status, "{body}");
    if let Some(field) = field {
        let fields: Vec<&str> = body["errors"]
            .as_array()
            .map(|a| a.iter().filter_map(|e| e["field"].as_str()).collect())
            .unwrap_or_default();
        assert!(
            fields.contains(&field),
            "expected an error naming {field:?}: {body}"
        );
    }
    body
}

/// A listener that accepts connections and never answers: a service that hangs.
pub async fn silent_server() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a loopback port");
    let addr = listener.local_addr().expect("local address");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (addr, task)
}

/// What a [`recorder`] saw: each request's URI (absolute-form when it came
/// as to a proxy) and headers.
pub type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, axum::http::HeaderMap)>>>;

/// A server that records every request and answers `recorded`.
pub async fn recorder() -> (Running, Seen) {
    let seen = Seen::default();
    let record = seen.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let record = record.clone();
        async move {
            record
                .lock()
                .unwrap()
                .push((req.uri().to_string(), req.headers().clone()));
            "recorded"
        }
    });
    (Running::router(app).await, seen)
}

pub mod broker;
