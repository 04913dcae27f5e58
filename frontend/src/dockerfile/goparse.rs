//! Go's `time.ParseDuration` and `strconv.ParseInt(s, 10, 32)`, with their exact error
//! messages, for HEALTHCHECK's `--interval`, `--timeout`, ... and `--retries`.

use super::gostr::quote;

/// Go's `time` package quoting: non-ASCII and control bytes as `\x..`.
fn time_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if (c as u32) >= 0x80 || c < ' ' {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("\\x{b:02x}"));
            }
        } else {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
    }
    out.push('"');
    out
}

const LIMIT: u64 = 1 << 63;

fn leading_int(s: &str) -> Option<(u64, &str)> {
    let mut x: u64 = 0;
    let mut i = 0;
    for &c in s.as_bytes() {
        if !c.is_ascii_digit() {
            break;
        }
        if x > LIMIT / 10 {
            return None;
        }
        x = x * 10 + u64::from(c - b'0');
        if x > LIMIT {
            return None;
        }
        i += 1;
    }
    Some((x, &s[i..]))
}

fn leading_fraction(s: &str) -> (u64, f64, &str) {
    let mut x: u64 = 0;
    let mut scale = 1.0f64;
    let mut overflow = false;
    let mut i = 0;
    for &c in s.as_bytes() {
        if !c.is_ascii_digit() {
            break;
        }
        i += 1;
        if overflow {
            continue;
        }
        if x > (LIMIT - 1) / 10 {
            overflow = true;
            continue;
        }
        let y = x * 10 + u64::from(c - b'0');
        if y > LIMIT {
            overflow = true;
            continue;
        }
        x = y;
        scale *= 10.0;
    }
    (x, scale, &s[i..])
}

/// Go's `time.ParseDuration`: nanoseconds, or Go's error message.
pub(crate) fn parse_duration(orig: &str) -> Result<i64, String> {
    let invalid = || format!("time: invalid duration {}", time_quote(orig));
    let mut s = orig;
    let mut neg = false;
    if let Some(rest) = s.strip_prefix('-') {
        neg = true;
        s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut d: u64 = 0;
    while !s.is_empty() {
        let first = s.as_bytes()[0];
        if !(first == b'.' || first.is_ascii_digit()) {
            return Err(invalid());
        }
        let before = s.len();
        let (v, rest) = leading_int(s).ok_or_else(invalid)?;
        s = rest;
        let pre = before != s.len();
        let mut post = false;
        let (mut f, mut scale) = (0u64, 1.0f64);
        if let Some(rest) = s.strip_prefix('.') {
            let before = rest.len();
            let (ff, sc, rest) = leading_fraction(rest);
            f = ff;
            scale = sc;
            post = before != rest.len();
            s = rest;
        }
        if !pre && !post {
            return Err(invalid());
        }
        let unit_len = s
            .as_bytes()
            .iter()
            .position(|c| *c == b'.' || c.is_ascii_digit())
            .unwrap_or(s.len());
        if unit_len == 0 {
            return Err(format!(
                "time: missing unit in duration {}",
                time_quote(orig)
            ));
        }
        let (u, rest) = s.split_at(unit_len);
        s = rest;
        let unit: u64 = match u {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => {
                return Err(format!(
                    "time: unknown unit {} in duration {}",
                    time_quote(u),
                    time_quote(orig)
                ))
            }
        };
        if v > LIMIT / unit {
            return Err(invalid());
        }
        let mut v = v * unit;
        if f > 0 {
            // Truncation toward zero, as Go's float-to-integer conversion does.
            v += (f as f64 * (unit as f64 / scale)) as u64;
            if v > LIMIT {
                return Err(invalid());
            }
        }
        d = d.checked_add(v).ok_or_else(invalid)?;
        if d > LIMIT {
            return Err(invalid());
        }
    }
    if neg {
        return Ok(0i64.wrapping_sub_unsigned(d));
    }
    i64::try_from(d).map_err(|_| invalid())
}

/// Go's `strconv.ParseInt(s, 10, 32)`.
pub(crate) fn parse_int32(s0: &str) -> Result<i64, String> {
    let syntax = || format!("strconv.ParseInt: parsing {}: invalid syntax", quote(s0));
    let range = || {
        format!(
            "strconv.ParseInt: parsing {}: value out of range",
            quote(s0)
        )
    };
    let (neg, s) = if let Some(r) = s0.strip_prefix('+') {
        (false, r)
    } else if let Some(r) = s0.strip_prefix('-') {
        (true, r)
    } else {
        (false, s0)
    };
    if s.is_empty() {
        return Err(syntax());
    }
    let cutoff = u64::MAX / 10 + 1;
    let mut n: u64 = 0;
    for &c in s.as_bytes() {
        if !c.is_ascii_digit() {
            return Err(syntax());
        }
        if n >= cutoff {
            return Err(range());
        }
        n = n
            .checked_mul(10)
            .and_then(|m| m.checked_add(u64::from(c - b'0')))
            .ok_or_else(range)?;
    }
    let limit: u64 = 1 << 31;
    if (!neg && n >= limit) || (neg && n > limit) {
        return Err(range());
    }
    let n = i64::try_from(n).map_err(|_| range())?;
    Ok(if neg { -n } else { n })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_like_go() {
        let ok: &[(&str, i64)] = &[
            ("5s", 5_000_000_000),
            ("1.5h", 5_400_000_000_000),
            ("-1s", -1_000_000_000),
            (".5s", 500_000_000),
            ("1µs", 1_000),
            ("1μs", 1_000),
            ("9223372036854775807ns", i64::MAX),
            ("-9223372036854775808ns", i64::MIN),
            ("0", 0),
            ("-0", 0),
            ("+0", 0),
            ("0.0000000001s", 0),
            ("1h2m3s4ms", 3_723_004_000_000),
            ("50ns", 50),
        ];
        for (s, want) in ok {
            assert_eq!(parse_duration(s), Ok(*want), "{s}");
        }
        let bad: &[(&str, &str)] = &[
            ("5", "time: missing unit in duration \"5\""),
            ("5x", "time: unknown unit \"x\" in duration \"5x\""),
            (
                "9223372036854775808ns",
                "time: invalid duration \"9223372036854775808ns\"",
            ),
            ("1e3s", "time: unknown unit \"e\" in duration \"1e3s\""),
            ("", "time: invalid duration \"\""),
            ("5s x", "time: unknown unit \"s x\" in duration \"5s x\""),
            (".s", "time: invalid duration \".s\""),
            (
                "5é",
                "time: unknown unit \"\\xc3\\xa9\" in duration \"5\\xc3\\xa9\"",
            ),
        ];
        for (s, want) in bad {
            assert_eq!(parse_duration(s), Err(want.to_string()), "{s}");
        }
    }

    #[test]
    fn int32_like_go() {
        assert_eq!(parse_int32("3"), Ok(3));
        assert_eq!(parse_int32("+3"), Ok(3));
        assert_eq!(parse_int32("-2147483648"), Ok(-2_147_483_648));
        let err = |s: &str| parse_int32(s).err().unwrap_or_default();
        assert_eq!(
            err("2147483648"),
            "strconv.ParseInt: parsing \"2147483648\": value out of range"
        );
        assert_eq!(err("x"), "strconv.ParseInt: parsing \"x\": invalid syntax");
        assert_eq!(
            err("99999999999999999999x"),
            "strconv.ParseInt: parsing \"99999999999999999999x\": value out of range"
        );
    }
}
