//! The CRI container log format: one line per chunk of output,
//! `<RFC 3339 timestamp> <stdout|stderr> <P|F> <content>`, where `P` marks a partial line
//! continued by the next entry and `F` a full one.

use std::time::{Duration, SystemTime};

/// Which stream a log entry came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// One parsed entry of a CRI log file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry<'a> {
    /// The timestamp as written (RFC 3339 with nanoseconds).
    pub timestamp: &'a str,
    /// The timestamp as a point in time.
    pub time: SystemTime,
    pub stream: LogStream,
    /// Whether the content continues in the next entry (a `P` tag).
    pub partial: bool,
    /// The content, without the trailing newline.
    pub content: &'a [u8],
}

/// What is wrong with a log line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LogParseError {
    #[error("log line has {0} fields, expected at least 3")]
    Fields(usize),
    #[error("log line has an invalid timestamp {0:?}")]
    Timestamp(String),
    #[error("log line has an unknown stream {0:?}")]
    Stream(String),
}

/// Parses one line (without its trailing newline) of a CRI log file.
pub fn parse_line(line: &[u8]) -> Result<LogEntry<'_>, LogParseError> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let timestamp = parts.next().unwrap_or_default();
    let stream = parts.next();
    let tag = parts.next();
    let content = parts.next().unwrap_or_default();
    let (Some(stream), Some(tag)) = (stream, tag) else {
        return Err(LogParseError::Fields(line.split(|b| *b == b' ').count()));
    };
    let timestamp = std::str::from_utf8(timestamp)
        .map_err(|_| LogParseError::Timestamp(String::from_utf8_lossy(timestamp).into_owned()))?;
    let time =
        parse_rfc3339(timestamp).ok_or_else(|| LogParseError::Timestamp(timestamp.to_owned()))?;
    let stream = match stream {
        b"stdout" => LogStream::Stdout,
        b"stderr" => LogStream::Stderr,
        other => {
            return Err(LogParseError::Stream(
                String::from_utf8_lossy(other).into_owned(),
            ))
        }
    };
    // Old runtimes wrote no tag; then the third field is content, and the line is full.
    let (partial, content) = match tag {
        b"P" => (true, content),
        b"F" => (false, content),
        _ => {
            // "stdout" and "stderr" are both six bytes long.
            let start = timestamp.len() + 1 + 6 + 1;
            (false, &line[start.min(line.len())..])
        }
    };
    Ok(LogEntry {
        timestamp,
        time,
        stream,
        partial,
        content,
    })
}

/// Parses an RFC 3339 timestamp (`2026-11-22T09:30:01.123456789Z`, or with a `+hh:mm`
/// offset) to a point in time.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let mut value: u64 = frac[..digits.min(9)].parse().ok()?;
        for _ in digits.min(9)..9 {
            value *= 10;
        }
        nanos = u32::try_from(value).ok()?;
        rest = &frac[digits..];
    }
    let offset_secs: i64 = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) => {
            let h: i64 = rest.get(1..3)?.parse().ok()?;
            let m: i64 = rest.get(4..6)?.parse().ok()?;
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    let days = days_from_civil(year, month as u32, day as u32);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    let secs = u64::try_from(secs).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))
}

/// A proleptic Gregorian date to days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_partial_lines() {
        let e = parse_line(b"2026-11-22T09:30:01.123456789Z stdout F hello world").unwrap();
        assert_eq!(e.stream, LogStream::Stdout);
        assert!(!e.partial);
        assert_eq!(e.content, b"hello world");
        assert_eq!(e.timestamp, "2026-11-22T09:30:01.123456789Z");
        let p = parse_line(b"2026-11-22T09:30:01Z stderr P part").unwrap();
        assert!(p.partial && p.stream == LogStream::Stderr && p.content == b"part");
        let empty = parse_line(b"2026-11-22T09:30:01Z stdout F ").unwrap();
        assert_eq!(empty.content, b"");
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            parse_line(b"hello"),
            Err(LogParseError::Fields(1))
        ));
        assert!(matches!(
            parse_line(b"yesterday stdout F x"),
            Err(LogParseError::Timestamp(_))
        ));
        assert!(matches!(
            parse_line(b"2026-11-22T09:30:01Z stdin F x"),
            Err(LogParseError::Stream(_))
        ));
    }

    #[test]
    fn timestamps() {
        let t = parse_rfc3339("1970-01-02T00:00:01.5Z").unwrap();
        assert_eq!(
            t,
            SystemTime::UNIX_EPOCH + Duration::new(86_401, 500_000_000)
        );
        let a = parse_rfc3339("2026-11-22T10:00:00+01:00").unwrap();
        let b = parse_rfc3339("2026-11-22T09:00:00Z").unwrap();
        assert_eq!(a, b);
        let c = parse_rfc3339("2026-11-18T11:06:40Z").unwrap();
        assert_eq!(
            c,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000)
        );
        assert!(parse_rfc3339("2026-13-01T00:00:00Z").is_none());
        assert!(parse_rfc3339("2026-11-22T09:00:00").is_none());
    }
}
