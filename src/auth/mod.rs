//! Who may watch what: [`credentials`] finds the token in a
//! request, [`claims`] verifies it into [`Claims`], [`policy`] decides whether
//! those claims may see a given job; [`jwks`] keeps an identity provider's
//! rotating keys.

pub mod claims;
pub mod credentials;
pub mod hook;
pub mod jwks;
pub mod policy;

pub use claims::{AuthError, Claims, Role, Verifier};
pub use credentials::{Credentials, TokenSource};
