//! Durations as sametag writes them (`500ms`, `30s`, `5m`, `1h`, `1m30s`):
//! the one parser behind the policy's `maxAge`, the sidecar's flags and the
//! operator's flags.
//!
//! Hand-written rather than `jiff`'s friendly format: jiff also accepts
//! `1.5h`, `1 hour`, `-5s`, `5s ago` and ISO 8601 `PT5S`, none of which the
//! CRD's `maxAge` pattern (`^([0-9]+(ms|s|m|h))+$`) admits, so the sidecar
//! would accept files the CRD refuses and the two would drift. Each caller
//! keeps the spellings it always accepted through a [`DurationSyntax`]; the
//! grammar underneath is one.

use std::time::Duration;

/// Longest input read: far more than any real duration, and it bounds the
/// work done on hostile input.
const MAX_LEN: usize = 64;

/// Which spellings a duration field accepts on top of the common grammar
/// (`<integer><unit>` repeated, units `ms`, `s`, `m`, `h`, whole
/// milliseconds only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurationSyntax {
    /// `d` (24 hours) is a unit too.
    pub days: bool,
    /// A bare integer is a number of seconds.
    pub bare_seconds: bool,
    /// Whitespace around the value is ignored (flags and env vars).
    pub trim: bool,
    /// Examples quoted in the error message.
    pub examples: &'static str,
}

impl DurationSyntax {
    /// The policy file's `maxAge`, exactly what the CRD's pattern admits.
    pub const POLICY: Self = Self {
        days: false,
        bare_seconds: false,
        trim: false,
        examples: "500ms, 30s, 5m, 1h",
    };
    /// The sidecar's flags (`--upstream-timeout 30s`): the policy's units.
    pub const SIDECAR_FLAG: Self = Self {
        trim: true,
        ..Self::POLICY
    };
    /// The operator's flags (`--cert-validity 90d`, `--resync 300`).
    pub const OPERATOR_FLAG: Self = Self {
        days: true,
        bare_seconds: true,
        trim: true,
        examples: "90s, 15m, 1h30m, 30d, or 300 for seconds",
    };
}

/// A duration that could not be read: the input and what was expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration `{input}` (expected e.g. {examples})")]
pub struct DurationError {
    /// What was given (at most [`MAX_LEN`] characters of it).
    pub input: String,
    /// Examples of the accepted syntax.
    pub examples: &'static str,
}

/// Parse a duration in the policy file's syntax ([`DurationSyntax::POLICY`]).
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    parse_duration_with(s, DurationSyntax::POLICY)
}

/// Parse a duration in `syntax`: one or more `<integer><unit>`. Overflow is
/// an error, never a silently saturated value.
pub fn parse_duration_with(s: &str, syntax: DurationSyntax) -> Result<Duration, DurationError> {
    let bad = || DurationError {
        input: s.chars().take(MAX_LEN).collect(),
        examples: syntax.examples,
    };
    let s = if syntax.trim { s.trim() } else { s };
    let b = s.as_bytes();
    if b.is_empty() || b.len() > MAX_LEN {
        return Err(bad());
    }
    if syntax.bare_seconds && b.iter().all(u8::is_ascii_digit) {
        let secs: u64 = s.parse().map_err(|_| bad())?;
        return Ok(Duration::from_secs(secs));
    }
    let mut total: u64 = 0;
    let mut i = 0;
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        // An empty digit run fails here (`s`, `m5`, `1mss`).
        let n: u64 = s[start..i].parse().map_err(|_| bad())?;
        let unit_ms: u64 = if b[i..].starts_with(b"ms") {
            i += 2;
            1
        } else {
            let u = match b.get(i) {
                Some(b's') => 1_000,
                Some(b'm') => 60_000,
                Some(b'h') => 3_600_000,
                Some(b'd') if syntax.days => 86_400_000,
                _ => return Err(bad()),
            };
            i += 1;
            u
        };
        total = n
            .checked_mul(unit_ms)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(bad)?;
    }
    Ok(Duration::from_millis(total))
}

/// Format a duration in the largest unit that divides it (`1h`, `90s`,
/// `1500ms`); [`parse_duration`] reads it back.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".to_owned(),
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1_000) => format!("{}s", ms / 1_000),
        _ => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_syntax() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in [
            "",
            "s",
            "1",
            "1.5s",
            "-1s",
            "1d",
            "1s ",
            " 1s",
            "99999999999999999999h",
            "1mss",
            "m5",
            "1 hour",
            "PT5S",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_duration("30 s").unwrap_err().to_string(),
            "invalid duration `30 s` (expected e.g. 500ms, 30s, 5m, 1h)"
        );
    }

    #[test]
    fn sidecar_flags_trim_and_nothing_else() {
        let p = |s| parse_duration_with(s, DurationSyntax::SIDECAR_FLAG);
        assert_eq!(p(" 30s\n"), Ok(Duration::from_secs(30)));
        assert_eq!(p("0s"), Ok(Duration::ZERO));
        assert!(p("1d").is_err() && p("12").is_err() && p("5 parsecs").is_err());
    }

    #[test]
    fn operator_flags_add_days_and_bare_seconds() {
        let p = |s| parse_duration_with(s, DurationSyntax::OPERATOR_FLAG);
        assert_eq!(p("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(p("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(p("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(p("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(p("12"), Ok(Duration::from_secs(12)));
        assert_eq!(p(" 1d12h "), Ok(Duration::from_secs(36 * 3600)));
        for bad in ["", "5x", "m5", "1.5h", "99999999999999999999d", "1d 2h"] {
            assert!(p(bad).is_err(), "{bad}");
        }
        assert!(p("5x").unwrap_err().to_string().contains("30d"));
    }

    #[test]
    fn format_reads_back() {
        for ms in [1, 999, 1000, 1500, 60_000, 90_000, 3_600_000, 86_400_000] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{ms}");
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }
}
