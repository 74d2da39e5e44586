//! [`PgProxy`]: a loopback TCP proxy in front of the test Postgres that a test
//! can cut (every open connection closed, new ones refused at once) and restore,
//! to play "Postgres went away" without stopping the shared cluster other tests
//! use. It forwards bytes and knows nothing of the Postgres protocol.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct PgProxy {
    addr: SocketAddr,
    up: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl PgProxy {
    /// Listens on `127.0.0.1:0` and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> PgProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (up, _) = watch::channel(true);
        let accept = tokio::spawn(accept_loop(listener, upstream, up.clone()));
        PgProxy { addr, up, accept }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Closes every forwarded connection and refuses new ones (accepted, then
    /// closed at once: the client sees an immediate EOF, as from a dead server).
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, up: watch::Sender<bool>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if !*up.borrow() {
            drop(client);
            continue;
        }
        let mut down = up.subscribe();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let (mut client, mut server) = (client, server);
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                // Cut (or the proxy dropped): both sockets close here.
                _ = down.wait_for(|up| !*up) => {}
            }
        });
    }
}
