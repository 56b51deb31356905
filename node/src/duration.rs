//! Durations on the command line as kubelet's flags take them (`90s`, `2m`, `24h`,
//! `1h30m`, `500ms`), plus a bare number of seconds.

use std::time::Duration;

/// Parses `90s`, `2m`, `24h`, `1h30m`, `500ms` or a bare number of seconds (`0` too).
pub fn parse(text: &str) -> Result<Duration, String> {
    let bad = |why: &str| format!("invalid duration {text:?}: {why} (expected e.g. 90s, 2m, 24h, 1h30m)");
    let text_trimmed = text.trim();
    if text_trimmed.is_empty() {
        return Err(bad("empty"));
    }
    if let Ok(secs) = text_trimmed.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = text_trimmed;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad("a unit without a number"));
        }
        let value: u64 = rest[..digits].parse().map_err(|_| bad("number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let millis_per_unit: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "" => return Err(bad("a number without a unit")),
            unit => return Err(bad(&format!("unknown unit {unit:?}; use ms, s, m or h"))),
        };
        rest = &rest[unit_len..];
        let millis = value.checked_mul(millis_per_unit).ok_or_else(|| bad("too long"))?;
        total = total.checked_add(Duration::from_millis(millis)).ok_or_else(|| bad("too long"))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_compounds_and_bare_seconds() {
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("300"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_input_says_what_was_expected() {
        assert_eq!(
            parse("5 minutes"),
            Err("invalid duration \"5 minutes\": unknown unit \" minutes\"; use ms, s, m or h (expected e.g. 90s, 2m, 24h, 1h30m)".to_owned())
        );
        assert!(parse("").is_err());
        assert!(parse("h").is_err());
        assert!(parse("1h30").is_err());
        assert!(parse("-5s").is_err());
        assert!(parse("99999999999999999999h").is_err());
    }
}
