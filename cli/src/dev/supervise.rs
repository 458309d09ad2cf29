//! Local processes kept running: each child's output prefixed with its
//! name in its own colour, a crash reported and the child restarted with
//! exponential backoff, and a stop that asks (SIGTERM) before it insists
//! (SIGKILL).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anstyle::{AnsiColor, Style};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// First wait before a restart; doubled on each crash up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A child that ran this long before crashing starts again from [`FIRST_BACKOFF`].
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// How to start one child.
#[derive(Clone, Debug)]
pub struct Spec {
    pub label: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub dir: PathBuf,
    pub colour: AnsiColor,
    /// How long the child may take to exit after SIGTERM.
    pub grace: Duration,
}

/// What the status page and the tests see of a child.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct State {
    pub pid: Option<u32>,
    pub restarts: u32,
    pub running: bool,
}

/// One supervised child.
pub struct Supervised {
    pub state: Arc<Mutex<State>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Supervised {
    /// Starts the child and keeps it running until [`Supervised::stop`].
    pub fn start(spec: Spec) -> Supervised {
        let state = Arc::new(Mutex::new(State::default()));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(keep_running(spec, state.clone(), stopped));
        Supervised { state, stop, task }
    }

    /// SIGTERM, then SIGKILL after the grace period; returns once it has exited.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The prefix `name | ` of a child's lines, padded to `width`.
pub fn prefix(label: &str, width: usize, colour: AnsiColor) -> String {
    let style = Style::new().fg_color(Some(colour.into()));
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        format!("{style}{label:<width$} |{style:#} ")
    } else {
        format!("{label:<width$} | ")
    }
}

/// Width of the widest label, so every prefix lines up.
pub static LABEL_WIDTH: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(8);

async fn keep_running(spec: Spec, state: Arc<Mutex<State>>, mut stopped: watch::Receiver<bool>) {
    let width = LABEL_WIDTH.load(std::sync::atomic::Ordering::Relaxed);
    let tag = prefix(&spec.label, width, spec.colour);
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = Instant::now();
        let mut child = match spawn(&spec, &tag) {
            Ok(c) => c,
            Err(e) => {
                println!("{tag}cannot start {}: {e}", spec.program.display());
                if wait_or_stop(&mut stopped, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        {
            let mut s = lock(&state);
            s.pid = child.id();
            s.running = true;
        }
        let status = tokio::select! {
            status = child.wait() => status,
            _ = stop_requested(&mut stopped) => {
                terminate(&mut child, spec.grace, &tag).await;
                let mut s = lock(&state);
                s.running = false;
                s.pid = None;
                return;
            }
        };
        {
            let mut s = lock(&state);
            s.running = false;
            s.pid = None;
            s.restarts += 1;
        }
        if started.elapsed() >= STABLE_AFTER {
            backoff = FIRST_BACKOFF;
        }
        let how = match status {
            Ok(s) => s.to_string(),
            Err(e) => e.to_string(),
        };
        println!(
            "{tag}crashed ({how}); restarting in {}",
            humantime::format_duration(backoff)
        );
        if wait_or_stop(&mut stopped, backoff).await {
            return;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Sleeps `how_long`; true when a stop came first.
async fn wait_or_stop(stopped: &mut watch::Receiver<bool>, how_long: Duration) -> bool {
    tokio::time::timeout(how_long, stop_requested(stopped))
        .await
        .is_ok()
}

/// Returns once a stop is asked for (or the asker is gone).
async fn stop_requested(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

fn spawn(spec: &Spec, tag: &str) -> std::io::Result<Child> {
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group: a terminal's Ctrl-C reaches `trellis dev`
        // alone, which then stops apps before sidecars.
        .process_group(0);
    // SAFETY: prctl is async-signal-safe and touches only the child. It
    // makes the kernel kill the child if `trellis dev` itself dies without
    // cleaning up (SIGKILL), so nothing is left behind even then.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    if let Some(out) = child.stdout.take() {
        tokio::spawn(forward(out, tag.to_string()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward(err, tag.to_string()));
    }
    Ok(child)
}

async fn forward(stream: impl AsyncRead + Unpin, tag: String) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        println!("{tag}{line}");
    }
}

async fn terminate(child: &mut Child, grace: Duration, tag: &str) {
    let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) else {
        return;
    };
    // The whole process group: a child's own children (a broker's VM, a
    // shell's command) go with it.
    signal_group(pid, libc::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        println!(
            "{tag}still running {} after SIGTERM; killing it",
            humantime::format_duration(grace)
        );
        signal_group(pid, libc::SIGKILL);
        let _ = child.wait().await;
    }
    // Whatever of the group outlived its leader goes too.
    signal_group(pid, libc::SIGKILL);
}

fn signal_group(leader: i32, signal: i32) {
    // SAFETY: kill(2) of the group our own unreaped child leads (we hold its
    // handle), so the id is still ours.
    unsafe {
        libc::kill(-leader, signal);
    }
}
