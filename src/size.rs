//! Byte sizes as a user types them (`65535`, `64k`, `10M`, `1MiB`, `2G`; powers of
//! 1024), parsed once for every option that takes one: the server's (`config`) and
//! `postern bench --body-size` (`client`), which `config` itself imports, so the parser
//! lives below both. Durations likewise ([`seconds`]: `30s`, `500ms`, `5m`). Imports
//! nothing of the crate.

/// Seconds as a user types them: `30`, `2.5`, or with a unit as gunicorn's and
/// systemd's users write them: `30s`, `500ms`, `5m`, `5min`, `1h`. The range is the
/// caller's to check (the server's durations must be positive, a client's may be 0).
pub fn seconds(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (t, unit) = [
        ("ms", 0.001),
        ("min", 60.0),
        ("s", 1.0),
        ("m", 60.0),
        ("h", 3600.0),
    ]
    .iter()
    .find_map(|(suffix, unit)| t.strip_suffix(suffix).map(|n| (n.trim_end(), *unit)))
    .unwrap_or((t, 1.0));
    t.parse::<f64>().map(|n| n * unit).map_err(|_| {
        format!("{s:?} is not a duration: seconds (30, 2.5, 30s), or with a unit: 500ms, 5m, 1h")
    })
}

/// Parses `65535`, `64k`, `1M`, `1MiB`, `2G` (powers of 1024). The error is one
/// sentence that says what to type instead.
pub fn parse(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 65535, 64k, 10M, 1G)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        u if u.starts_with(['.', ',']) => {
            return Err(format!(
                "{s:?}: a size is a whole number (of bytes, k, M or G: e.g. 1536k for 1.5M)"
            ))
        }
        _ => return Err(format!("{s:?}: unknown unit (use k, M or G)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// [`parse`], for a size held in memory (a `usize`).
pub fn parse_usize(s: &str) -> Result<usize, String> {
    usize::try_from(parse(s)?).map_err(|_| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse("65535"), Ok(65535));
        assert_eq!(parse("64k"), Ok(65536));
        assert_eq!(parse(" 64 KiB "), Ok(65536));
        assert_eq!(parse("1MiB"), Ok(1 << 20));
        assert_eq!(parse("10mb"), Ok(10 << 20));
        assert_eq!(parse("2G"), Ok(2 << 30));
        assert_eq!(parse("0"), Ok(0));
        assert_eq!(parse_usize("3k"), Ok(3072));
    }

    #[test]
    fn rejects_what_is_not_a_size_saying_what_to_type() {
        assert_eq!(
            parse("ten").unwrap_err(),
            "\"ten\" is not a size (e.g. 65535, 64k, 10M, 1G)"
        );
        assert_eq!(
            parse("5T").unwrap_err(),
            "\"5T\": unknown unit (use k, M or G)"
        );
        assert!(parse("1.5M").unwrap_err().contains("whole number"));
        assert!(parse("-1").is_err());
        assert_eq!(
            parse("18446744073709551615k").unwrap_err(),
            "\"18446744073709551615k\" is too large"
        );
    }
}
