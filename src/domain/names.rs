//! Validation of the names people give to apps, versions and native builds.

use super::InvalidInput;

/// Version names a bundle may not take: devices give them special meaning.
const RESERVED_VERSION_NAMES: &[&str] = &["builtin", "unknown"];

fn check_text(value: &str, what: &str, max_len: usize) -> Result<(), InvalidInput> {
    if value.trim().is_empty() {
        return Err(InvalidInput(format!("{what} is required")));
    }
    if value.len() > max_len {
        return Err(InvalidInput(format!(
            "{what} is longer than {max_len} characters"
        )));
    }
    if value.trim() != value || value.chars().any(char::is_control) {
        return Err(InvalidInput(format!(
            "{what} {value:?} has leading or trailing spaces or control characters"
        )));
    }
    Ok(())
}

/// An app id such as `com.example.app` (letters, digits, `.`, `_`, `-`).
pub fn check_app_id(value: &str) -> Result<(), InvalidInput> {
    check_text(value, "app_id", 255)?;
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(InvalidInput(format!(
            "app_id {value:?} may hold only letters, digits, '.', '_' and '-' (like com.example.app)"
        )));
    }
    Ok(())
}

/// A bundle's version name: what devices report as `version_name` once they run it.
pub fn check_bundle_version(value: &str) -> Result<(), InvalidInput> {
    check_text(value, "version_name", 128)?;
    if RESERVED_VERSION_NAMES.contains(&value) {
        return Err(InvalidInput(format!(
            "version_name {value:?} is reserved by the plugin; choose another name"
        )));
    }
    Ok(())
}

/// A native version name or code (`1.2.0`, `42`).
pub fn check_native_version(value: &str, what: &str) -> Result<(), InvalidInput> {
    check_text(value, what, 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_ids() {
        assert!(check_app_id("com.example.app").is_ok());
        assert!(check_app_id("").is_err());
        assert!(check_app_id("com example").is_err());
        assert!(check_app_id("com/../x").is_err());
    }

    #[test]
    fn bundle_versions() {
        assert!(check_bundle_version("1.2.3").is_ok());
        assert!(check_bundle_version("builtin").is_err());
        assert!(check_bundle_version(" 1.0").is_err());
        assert!(check_bundle_version(&"9".repeat(129)).is_err());
    }
}
