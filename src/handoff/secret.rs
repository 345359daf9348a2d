//! [`Secret`]: the ring's shared key for the handoff proofs (`OUROBOROS_SECRET`).

/// Environment variable holding the ring's shared secret. It is read from the environment
/// only (never a flag, so it never appears in argv) and passed to local successors the same
/// way.
pub const SECRET_ENV: &str = "OUROBOROS_SECRET";

/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// The ring's shared secret. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// A secret from explicit bytes (tests, configuration).
    ///
    /// # Errors
    /// [`SecretError::TooShort`] below [`MIN_SECRET_LEN`] bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, SecretError> {
        let bytes = bytes.into();
        if bytes.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort);
        }
        Ok(Secret(bytes))
    }

    /// A fresh random secret (32 random bytes, hex: 64 characters), for a ring started
    /// without `OUROBOROS_SECRET`; local successors inherit it through the environment.
    pub fn generate() -> Self {
        let bytes: [u8; 32] = rand::random();
        Secret(hex::encode(bytes).into_bytes())
    }

    /// The secret from `OUROBOROS_SECRET`, if set.
    ///
    /// # Errors
    /// [`SecretError::TooShort`] if set but shorter than [`MIN_SECRET_LEN`];
    /// [`SecretError::NotUnicode`] if not valid UTF-8.
    pub fn from_env() -> Result<Option<Self>, SecretError> {
        match std::env::var(SECRET_ENV) {
            Ok(s) if s.is_empty() => Ok(None),
            Ok(s) => Secret::new(s.into_bytes()).map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(SecretError::NotUnicode),
        }
    }

    /// `from_env`, or a generated secret when unset (logged, without the value).
    ///
    /// # Errors
    /// As [`Secret::from_env`].
    pub fn from_env_or_generate() -> Result<Self, SecretError> {
        Ok(match Secret::from_env()? {
            Some(s) => s,
            None => {
                tracing::info!(
                    "{SECRET_ENV} not set: generated a ring secret for local successors"
                );
                Secret::generate()
            }
        })
    }

    /// The key bytes (for HMAC).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The value to put in a child's `OUROBOROS_SECRET`.
    pub fn to_env_value(&self) -> std::ffi::OsString {
        use std::os::unix::ffi::OsStringExt;
        std::ffi::OsString::from_vec(self.0.clone())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Why a secret was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Shorter than [`MIN_SECRET_LEN`].
    #[error("{SECRET_ENV} must be at least {MIN_SECRET_LEN} bytes")]
    TooShort,
    /// Not UTF-8.
    #[error("{SECRET_ENV} is not valid UTF-8")]
    NotUnicode,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new(b"super-secret-value-123".to_vec()).unwrap();
        assert!(!format!("{s:?}").contains("super"));
        assert_eq!(Secret::new(b"short".to_vec()), Err(SecretError::TooShort));
        let g = Secret::generate();
        assert_eq!(g.expose().len(), 64);
        assert_ne!(g, Secret::generate());
    }
}
