//! Helpers shared by every layer's error types.

use std::fmt;

/// The error type underneath another (`#[source]`), boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Displays an error followed by its sources: `cannot store blob x: permission denied`.
/// Error types here display only their own context, so logs and start-up messages use this.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn shows_every_source() {
        let error = Outer(std::io::Error::other("inner"));
        assert_eq!(Chain(&error).to_string(), "outer: inner");
    }
}
