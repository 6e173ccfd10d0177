//! Parsing of the human-friendly values a spec accepts: sizes (`190MB`),
//! durations (`30s`, `5m`) and percentages (`5%`). Pure functions, so the
//! spec validator can report every bad value with its field path.

use std::time::Duration;

/// Parse a byte size: a plain integer (bytes) or a number with a unit.
/// Decimal units (`KB`, `MB`, `GB`) are powers of 1000 and binary units
/// (`KiB`, `MiB`, `GiB`) powers of 1024, because providers state their
/// limits in decimal megabytes (OpenAI's 200 MB is 200,000,000 bytes).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "`{text}` is not a size; write e.g. 190MB, 512KiB or 1000000"
        ));
    }
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a size; write e.g. 190MB, 512KiB or 1000000"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{text}`; use B, KB, MB, GB, KiB, MiB or GiB"
            ));
        }
    };
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(format!(
            "size `{text}` is too large (at most {} bytes)",
            u64::MAX
        ));
    }
    if bytes < 1.0 {
        return Err(format!("size `{text}` must be at least 1 byte"));
    }
    Ok(bytes.round() as u64)
}

/// Parse a duration in humantime syntax (`30s`, `5m`, `1h 30m`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration ({e}); write e.g. 30s, 5m or 1h"))
}

/// Parse a percentage given as `"5%"` (0–100) or as a fraction `0.05` (0–1).
/// Returns the fraction.
pub fn parse_percent_str(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let Some(num) = t.strip_suffix('%') else {
        return Err(format!(
            "`{text}` is not a percentage; write e.g. 5% or 0.05"
        ));
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a percentage; write e.g. 5% or 0.05"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(format!("percentage `{text}` must be between 0% and 100%"));
    }
    Ok(v / 100.0)
}

pub fn parse_fraction(v: f64) -> Result<f64, String> {
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "{v} is not a fraction between 0 and 1; write a percentage as a string, e.g. \"{v}%\""
        ))
    }
}

/// Render a byte count for people: `1.5 MB`, `812 B`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KB", "MB", "GB", "TB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1000.0 {
            break;
        }
        v /= 1000.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let cases: &[(&str, Result<u64, ()>)] = &[
            ("190MB", Ok(190_000_000)),
            ("190 MB", Ok(190_000_000)),
            ("200mb", Ok(200_000_000)),
            ("1.5GB", Ok(1_500_000_000)),
            ("512KiB", Ok(524_288)),
            ("1MiB", Ok(1_048_576)),
            ("1000", Ok(1000)),
            ("10B", Ok(10)),
            ("", Err(())),
            ("MB", Err(())),
            ("12 parsecs", Err(())),
            ("0MB", Err(())),
            ("1.2.3MB", Err(())),
        ];
        for (input, want) in cases {
            let got = parse_size(input).map_err(|_| ());
            assert_eq!(&got, want, "parse_size({input:?})");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("30").is_err());
    }

    #[test]
    fn percents() {
        assert_eq!(parse_percent_str("5%").unwrap(), 0.05);
        assert_eq!(parse_percent_str(" 12.5 % ").unwrap(), 0.125);
        assert_eq!(parse_percent_str("0%").unwrap(), 0.0);
        assert!(parse_percent_str("101%").is_err());
        assert!(parse_percent_str("5").is_err());
        assert!(parse_percent_str("five%").is_err());
        assert_eq!(parse_fraction(0.05).unwrap(), 0.05);
        assert!(parse_fraction(5.0).is_err());
        assert!(parse_fraction(-0.1).is_err());
    }

    #[test]
    fn human_byte_counts() {
        assert_eq!(human_bytes(812), "812 B");
        assert_eq!(human_bytes(1_500_000), "1.5 MB");
        assert_eq!(human_bytes(200_000_000), "200.0 MB");
    }
}
