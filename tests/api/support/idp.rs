//! [`Idp`]: keys and tokens made by an independent JWT library — PyJWT with
//! `cryptography`, run as `python3 support/mint_tokens.py` — so the gateway's
//! JWK Set handling is checked against what a real identity provider
//! publishes, not against `jsonwebtoken` agreeing with itself.
//! `scripts/test.sh` installs PyJWT and cryptography when missing.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/api/support/mint_tokens.py"
);
/// Key generation (RSA 2048) and signing take well under a second; the bound
/// leaves room for a loaded machine.
const MINT_TIMEOUT: Duration = Duration::from_secs(30);

/// One token to mint: signed with `alg` by key `key` (or `secret` for HS*),
/// with `kid` in its header when given.
pub struct TokenSpec<'a> {
    pub name: &'a str,
    pub alg: &'a str,
    pub key: Option<&'a str>,
    pub secret: Option<&'a str>,
    pub kid: Option<&'a str>,
    pub claims: Value,
}

pub struct Idp {
    jwks: HashMap<String, Value>,
    pem: HashMap<String, String>,
    tokens: HashMap<String, String>,
}

impl Idp {
    /// Generates `keys` (`(kid, "RSA" | "EC")`) and mints `tokens` with them.
    pub async fn mint(keys: &[(&str, &str)], tokens: &[TokenSpec<'_>]) -> Idp {
        let spec = json!({
            "keys": keys.iter().map(|(kid, kty)| json!({"kid": kid, "kty": kty})).collect::<Vec<_>>(),
            "tokens": tokens.iter().map(|t| json!({
                "name": t.name, "alg": t.alg, "key": t.key, "secret": t.secret,
                "kid": t.kid, "claims": t.claims,
            })).collect::<Vec<_>>(),
        });
        let mut child = tokio::process::Command::new("python3")
            .arg(SCRIPT)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn python3 (install it, or run scripts/test.sh)");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(spec.to_string().as_bytes())
            .await
            .expect("write the spec");
        drop(stdin);
        let out = tokio::time::timeout(MINT_TIMEOUT, child.wait_with_output())
            .await
            .expect("mint_tokens.py finished in time")
            .expect("mint_tokens.py ran");
        assert!(
            out.status.success(),
            "mint_tokens.py failed (PyJWT and cryptography installed? scripts/test.sh installs them): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("mint_tokens.py prints JSON");
        let map = |field: &str| -> HashMap<String, Value> {
            v[field]
                .as_object()
                .expect("an object")
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        Idp {
            jwks: map("jwks"),
            pem: map("pem")
                .into_iter()
                .map(|(k, v)| (k, v.as_str().expect("PEM text").to_owned()))
                .collect(),
            tokens: map("tokens")
                .into_iter()
                .map(|(k, v)| (k, v.as_str().expect("token text").to_owned()))
                .collect(),
        }
    }

    /// A JWK Set document holding the public keys `kids`.
    pub fn set(&self, kids: &[&str]) -> String {
        let keys: Vec<&Value> = kids.iter().map(|k| &self.jwks[*k]).collect();
        json!({ "keys": keys }).to_string()
    }

    /// The public key `kid` as a PEM.
    pub fn pem(&self, kid: &str) -> &str {
        &self.pem[kid]
    }

    /// The token minted under `name`.
    pub fn token(&self, name: &str) -> &str {
        &self.tokens[name]
    }
}
