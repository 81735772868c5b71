//! Exit codes (SPEC section 9). Each error type says its own code with an
//! `exit_code()` method next to its definition; the binary prints the error
//! and exits with that code, in one place.
//!
//! 3, 4 and 5 (`invalid_credentials`, `invalid_permissions`,
//! `no_resources`) are [`crate::verify::VerifyCode::exit_code`].

/// Success.
pub const SUCCESS: u8 = 0;
/// A runtime failure (network, store).
pub const RUNTIME: u8 = 1;
/// A usage or configuration error.
pub const USAGE: u8 = 2;
/// `sync` finished but some repositories failed.
pub const SOME_FAILED: u8 = 6;
/// The store is locked by another process that does not answer.
pub const LOCKED: u8 = 7;
/// A bug: a panic outside the store (Rust's own code for a panic; the
/// message is one `error:` line, see `panic`).
pub const INTERNAL: u8 = 101;

impl crate::config::ConfigError {
    /// Every configuration error is a usage error.
    pub fn exit_code(&self) -> u8 {
        USAGE
    }
}
