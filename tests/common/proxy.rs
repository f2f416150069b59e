//! A TCP forwarder to the primary that can be taken down (closing every connection, refusing new
//! ones) and brought back on the same port: the database going away and returning, as a daemon
//! sees it, without disturbing the shared cluster.

use tokio_util::sync::CancellationToken;

pub struct Proxy {
    pub port: u16,
    target: u16,
    /// Cancelled by [`Proxy::down`]: ends the listener and every forwarded connection, including
    /// one accepted in the very instant of going down (a task aborted while running would finish
    /// its poll and could still hand over a live connection).
    open: Option<CancellationToken>,
}

impl Proxy {
    /// Forward a free loopback port to `target`.
    pub async fn start(target: u16) -> Proxy {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let mut p = Proxy { port, target, open: None };
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
        self.down();
        // The previous listener closes as soon as its task sees the cancellation: retry briefly.
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("proxy bind 127.0.0.1:{}: {e}", self.port),
            }
        };
        let open = CancellationToken::new();
        self.open = Some(open.clone());
        let target = self.target;
        tokio::spawn(async move {
            loop {
                let mut client = tokio::select! {
                    _ = open.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => client,
                        Err(_) => return,
                    },
                };
                let open = open.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = open.cancelled() => {}
                        _ = async {
                            if let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await {
                                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            }
                        } => {}
                    }
                });
            }
        });
    }

    /// Close every forwarded connection and refuse new ones.
    pub fn down(&mut self) {
        if let Some(open) = self.open.take() {
            open.cancel();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.down();
    }
}
