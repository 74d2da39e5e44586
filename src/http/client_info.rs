//! Who is at the other end of a request: the peer's address and the HTTP
//! version it spoke, put into the request's extensions by the accept loop
//! (warp's own `addr::remote()` only works under warp's server). Behind a
//! proxy the peer is the proxy, and the version the one it speaks upstream,
//! which is what the buffering self-test wants to report.

use std::net::SocketAddr;

use warp::Filter;
use warp::http::Version;

/// The request's peer and HTTP version.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo {
    pub peer: SocketAddr,
    pub version: Version,
}

impl ClientInfo {
    /// `HTTP/1.0`, `HTTP/1.1`, `HTTP/2.0`…
    pub fn version_str(&self) -> &'static str {
        match self.version {
            Version::HTTP_09 => "HTTP/0.9",
            Version::HTTP_10 => "HTTP/1.0",
            Version::HTTP_11 => "HTTP/1.1",
            Version::HTTP_2 => "HTTP/2.0",
            Version::HTTP_3 => "HTTP/3.0",
            _ => "unknown",
        }
    }
}

/// Wraps a connection's service: every request carries a [`ClientInfo`].
#[derive(Clone)]
pub struct WithClientInfo<S> {
    pub peer: SocketAddr,
    pub inner: S,
}

impl<S, B> hyper::service::Service<hyper::Request<B>> for WithClientInfo<S>
where
    S: hyper::service::Service<hyper::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, mut req: hyper::Request<B>) -> Self::Future {
        let info = ClientInfo {
            peer: self.peer,
            version: req.version(),
        };
        req.extensions_mut().insert(info);
        self.inner.call(req)
    }
}

/// The request's [`ClientInfo`], where the accept loop set one.
pub fn client_info()
-> impl Filter<Extract = (Option<ClientInfo>,), Error = std::convert::Infallible> + Clone {
    warp::ext::optional::<ClientInfo>()
}
