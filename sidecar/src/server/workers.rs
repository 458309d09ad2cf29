//! Serving threads: each runs its own single-threaded runtime and accepts on
//! its own listening socket (all bound to one address with `SO_REUSEPORT`,
//! the kernel spreading connections over them), so a request is read,
//! forwarded and answered on the thread that accepted it. A multi-threaded
//! runtime moves tasks between workers instead, and every such hop wakes a
//! sleeping thread: on a busy sidecar that is most of its system time.
//!
//! Pooled upstream connections are kept per thread too (the thread's
//! [`lane`], see [`crate::client`]), so a pooled connection's task runs
//! where its requests come from. The cost of the model: the streams of one
//! HTTP/2 connection are all served by one thread.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Pending connections each listening socket queues.
const BACKLOG: u32 = 1024;
/// How long a stopping thread waits for its runtime's blocking work.
const STOP_GRACE: Duration = Duration::from_secs(1);

thread_local! {
    static LANE: Cell<usize> = const { Cell::new(0) };
}

/// The serving thread this code runs on: `0..n` on the `n` threads of a
/// [`Workers`], 0 anywhere else.
pub fn lane() -> usize {
    LANE.get()
}

/// A set of serving threads; dropping it stops them (a task still running
/// on one is cancelled).
pub struct Workers {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Starts `n` threads (at least one), each with a current-thread runtime.
    pub fn start(n: usize) -> io::Result<Workers> {
        let mut workers = Workers {
            handles: Vec::new(),
            stops: Vec::new(),
        };
        for i in 0..n.max(1) {
            let (handle_tx, handle_rx) = std::sync::mpsc::channel();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("trellis-worker-{i}"))
                .spawn(move || {
                    LANE.set(i);
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = handle_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = handle_tx.send(Ok(runtime.handle().clone()));
                    // Runs the tasks spawned onto it until the set is dropped.
                    let _ = runtime.block_on(stopped);
                    runtime.shutdown_timeout(STOP_GRACE);
                })?;
            let handle = handle_rx
                .recv()
                .map_err(|_| io::Error::other("a serving thread exited at start"))??;
            workers.handles.push(handle);
            workers.stops.push(stop);
        }
        Ok(workers)
    }

    /// The threads' runtimes, in lane order.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// One listening socket per thread, all on `addr` (the first socket
    /// picks the port when `addr` has port 0), each registered with its
    /// thread's runtime.
    pub fn bind(&self, addr: SocketAddr) -> io::Result<Vec<TcpListener>> {
        let mut bound = addr;
        let mut listeners = Vec::with_capacity(self.handles.len());
        for handle in &self.handles {
            let socket = match bound {
                SocketAddr::V4(_) => TcpSocket::new_v4()?,
                SocketAddr::V6(_) => TcpSocket::new_v6()?,
            };
            socket.set_reuseaddr(true)?;
            socket.set_reuseport(true)?;
            socket.bind(bound)?;
            let _runtime = handle.enter();
            let listener = socket.listen(BACKLOG)?;
            bound = listener.local_addr()?;
            listeners.push(listener);
        }
        Ok(listeners)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_thread_accepts_on_the_shared_port_and_knows_its_lane() {
        let workers = Workers::start(2).unwrap();
        let listeners = workers.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listeners[0].local_addr().unwrap();
        assert_eq!(listeners[1].local_addr().unwrap(), addr);
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        for (listener, handle) in listeners.into_iter().zip(workers.handles()) {
            let seen_tx = seen_tx.clone();
            handle.spawn(async move {
                while let Ok((_stream, _)) = listener.accept().await {
                    let _ = seen_tx.send(lane());
                }
            });
        }
        assert_eq!(lane(), 0);
        // Connections from many source ports land on both sockets.
        let mut lanes = std::collections::BTreeSet::new();
        for _ in 0..64 {
            let _conn = tokio::net::TcpStream::connect(addr).await.unwrap();
            lanes.insert(seen.recv().await.unwrap());
            if lanes.len() == 2 {
                break;
            }
        }
        assert_eq!(lanes, [0, 1].into());
        drop(workers);
    }
}
