//! A stand-in socket for the Docker engine that a test can take away and
//! bring back, without touching the real `dockerd` other tests use.
//!
//! Workers reach the engine through it (`DOCKER_HOST=unix://...`). Down: the
//! socket is gone and every open connection (a container's wait stream too)
//! is cut, as when `dockerd` restarts. Refusing creates: the engine answers
//! pings but drops every container creation, as a failing engine would.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// Longest request head the proxy reads.
const MAX_HEAD: usize = 64 * 1024;

pub struct EngineProxy {
    dir: tempfile::TempDir,
    refuse_creates: Arc<AtomicBool>,
    server: Option<tokio::task::JoinHandle<()>>,
}

/// The real engine's socket.
fn upstream() -> PathBuf {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if host.starts_with("unix://") => PathBuf::from(&host["unix://".len()..]),
        _ => PathBuf::from("/var/run/docker.sock"),
    }
}

impl EngineProxy {
    /// A proxy that is down until [`EngineProxy::up`].
    pub fn new() -> Self {
        EngineProxy {
            dir: tempfile::tempdir().expect("temp dir"),
            refuse_creates: Arc::new(AtomicBool::new(false)),
            server: None,
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    /// The `DOCKER_HOST` value that reaches the engine through the proxy.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// Start answering (must run inside a Tokio runtime).
    pub fn up(&mut self) {
        assert!(self.server.is_none(), "the proxy is already up");
        let listener = UnixListener::bind(self.socket()).expect("bind the proxy socket");
        let refuse = self.refuse_creates.clone();
        self.server = Some(tokio::spawn(async move {
            // Dropped with this task when the proxy goes down: every
            // connection is cut at once.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                while connections.try_join_next().is_some() {}
                connections.spawn(relay(client, refuse.clone()));
            }
        }));
    }

    /// Go away: no new connection, every open one cut.
    pub fn down(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
        let _ = std::fs::remove_file(self.socket());
    }

    /// Drop every container creation (pings and the rest still pass).
    pub fn refuse_creates(&self, refuse: bool) {
        self.refuse_creates.store(refuse, Ordering::SeqCst);
    }
}

impl Drop for EngineProxy {
    fn drop(&mut self) {
        self.down();
    }
}

/// Pass one request (and its response) through. The request is told to
/// close its connection after the answer, so every request arrives on a
/// fresh connection and can be looked at.
async fn relay(mut client: UnixStream, refuse_creates: Arc<AtomicBool>) {
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        let n = match client.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        head.extend_from_slice(&chunk[..n]);
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if head.len() > MAX_HEAD {
            return;
        }
    };
    let (request, body) = head.split_at(end);
    let request = String::from_utf8_lossy(request);
    let first = request.lines().next().unwrap_or_default();
    if refuse_creates.load(Ordering::SeqCst) && first.contains("/containers/create") {
        return;
    }
    let mut rewritten = String::new();
    for line in request.split("\r\n").filter(|l| !l.is_empty()) {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            rewritten.push_str(line);
            rewritten.push_str("\r\n");
        }
    }
    rewritten.push_str("Connection: close\r\n\r\n");
    let Ok(mut engine) = UnixStream::connect(upstream()).await else {
        return;
    };
    if engine.write_all(rewritten.as_bytes()).await.is_err()
        || engine.write_all(body).await.is_err()
    {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
}
