//! Durations as people write them in job files: `10m`, `30s`, `1h30m`, `500ms`, `10 minutes`.

use std::time::Duration;

/// Parses a duration, accepting Spark's spelled-out units (`10 minutes`) as well as `10m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("expected a duration such as 30s, 5m or 1h, found an empty value".into());
    }
    if trimmed.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "`{trimmed}` has no unit; write it as {trimmed}s, {trimmed}m or {trimmed}ms"
        ));
    }
    // humantime does not take a space between the number and its unit ("10 minutes").
    let mut compact = String::with_capacity(trimmed.len());
    let mut prev_digit = false;
    for c in trimmed.chars() {
        if c.is_whitespace() && prev_digit {
            continue;
        }
        prev_digit = c.is_ascii_digit();
        compact.push(c);
    }
    humantime::parse_duration(&compact)
        .map_err(|e| format!("`{trimmed}` is not a duration ({e}); examples: 30s, 5m, 1h, 500ms"))
}

/// Whole microseconds of a duration, saturating at `i64::MAX`.
pub fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_units() {
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(
            parse_duration("10 minutes").unwrap(),
            Duration::from_secs(600)
        );
        assert_eq!(parse_duration(" 5 min ").unwrap(), Duration::from_secs(300));
    }

    #[test]
    fn rejects_bare_numbers_and_garbage() {
        assert!(parse_duration("10").unwrap_err().contains("no unit"));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("").is_err());
    }
}
