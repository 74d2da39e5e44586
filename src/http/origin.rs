//! Browser origins compared the way browsers define them: scheme, host and port
//! (the scheme's default port when none is written), host case-insensitive.
//! Used by CORS and by the WebSocket cross-site check; `*` is refused by the
//! settings, so nothing here ever means "any origin".

use warp::http::Uri;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// Parses `scheme://host[:port]` (no path, query or user info). `null` and
    /// anything else is `None`.
    pub fn parse(s: &str) -> Option<Origin> {
        let uri: Uri = s.trim().parse().ok()?;
        let scheme = uri.scheme_str()?.to_ascii_lowercase();
        let authority = uri.authority()?;
        if authority.as_str().contains('@')
            || uri
                .path_and_query()
                .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
            || s.trim().ends_with('/')
        {
            return None;
        }
        let port = authority.port_u16().or(default_port(&scheme))?;
        Some(Origin {
            host: authority.host().to_ascii_lowercase(),
            scheme,
            port,
        })
    }

    /// True when a request's `Host` header names this origin's host and port
    /// (the gateway's own page). The scheme cannot be seen behind a TLS proxy,
    /// so a `Host` without a port matches the origin scheme's default port.
    pub fn is_host(&self, host_header: &str) -> bool {
        let Ok(authority) = host_header.trim().parse::<warp::http::uri::Authority>() else {
            return false;
        };
        let port = authority.port_u16().or(default_port(&self.scheme));
        authority.host().eq_ignore_ascii_case(&self.host) && port == Some(self.port)
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheme_host_and_port_all_count() {
        let a = Origin::parse("https://App.example.com").unwrap();
        assert_eq!(a, Origin::parse("https://app.example.com:443").unwrap());
        assert_ne!(a, Origin::parse("http://app.example.com").unwrap());
        assert_ne!(a, Origin::parse("https://app.example.com:8443").unwrap());
        assert_ne!(
            a,
            Origin::parse("https://app.example.com.evil.test").unwrap()
        );
    }

    #[test]
    fn non_origins_are_refused() {
        for bad in [
            "null",
            "*",
            "",
            "app.example.com",
            "https://u:p@a.test",
            "https://a.test/x",
        ] {
            assert!(Origin::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn host_header_matches_host_and_port() {
        let o = Origin::parse("http://127.0.0.1:8080").unwrap();
        assert!(o.is_host("127.0.0.1:8080"));
        assert!(!o.is_host("127.0.0.1:9090"));
        assert!(Origin::parse("https://a.test").unwrap().is_host("a.test"));
        assert!(!o.is_host("not a host"));
    }
}
