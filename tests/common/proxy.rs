//! A TCP forwarder to the primary that can be taken down (closing every connection, refusing new
//! ones) and brought back on the same port: the database going away and returning, as a daemon
//! sees it, without disturbing the shared cluster.

use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;

pub struct Proxy {
    pub port: u16,
    target: u16,
    accept: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    /// Forward a free loopback port to `target`.
    pub async fn start(target: u16) -> Proxy {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let mut p = Proxy { port, target, accept: None, conns: Arc::default() };
        p.up().await;
        p
    }

    /// `url` (on the target's port) rewritten to go through the proxy.
    pub fn url(&self, url: &str) -> String {
        let proxied = url.replace(&format!(":{}/", self.target), &format!(":{}/", self.port));
        assert_ne!(proxied, url, "{url} does not name port {}", self.target);
        proxied
    }

    /// Accept and forward connections again.
    pub async fn up(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await.expect("proxy bind");
        let (target, conns) = (self.target, self.conns.clone());
        self.accept = Some(tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                conns.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
            }
        }));
    }

    /// Close every forwarded connection and refuse new ones.
    pub fn down(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
        }
        for c in self.conns.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            c.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.down();
    }
}
