//! Durations as people write them in settings, requests and resources: Go's
//! `time.ParseDuration` syntax (`10m`, `1s`, `1h30m`), which Kubernetes users already know.

use std::time::Duration;

/// Parses a Go `time.ParseDuration` string: a sequence of decimal numbers with units
/// `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`, such as `10m`, `1s`, `1h30m` or `1.5h`.
pub fn parse_go_duration(value: &str) -> Result<Duration, String> {
    const UNITS: &[(&str, f64)] = &[
        ("ns", 1e-9),
        ("us", 1e-6),
        ("µs", 1e-6),
        ("ms", 1e-3),
        ("s", 1.0),
        ("m", 60.0),
        ("h", 3600.0),
    ];
    let bad = || format!("expected a Go duration such as `10m`, `1s` or `1h30m`, got `{value}`");
    if value == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = value;
    let mut seconds = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let number: f64 = rest[..number_len].parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let scale = UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, scale)| *scale)
            .ok_or_else(bad)?;
        seconds += number * scale;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| bad())
}

/// Writes a duration the way [`parse_go_duration`] reads it back, in the largest exact units
/// (`90s` is `1m30s`, `1500ms` stays `1500ms`).
pub fn format_go_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        return "0s".into();
    }
    if !millis.is_multiple_of(1000) {
        return format!("{millis}ms");
    }
    let seconds = millis / 1000;
    let (hours, minutes, seconds) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    let mut text = String::new();
    for (value, unit) in [(hours, "h"), (minutes, "m"), (seconds, "s")] {
        if value > 0 {
            text.push_str(&format!("{value}{unit}"));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatted_durations_parse_back() {
        for (millis, text) in [
            (1_000, "1s"),
            (90_000, "1m30s"),
            (3_600_000, "1h"),
            (5_430_000, "1h30m30s"),
            (1_500, "1500ms"),
        ] {
            let duration = Duration::from_millis(millis);
            assert_eq!(format_go_duration(duration), text);
            assert_eq!(parse_go_duration(text).unwrap(), duration);
        }
    }
}
