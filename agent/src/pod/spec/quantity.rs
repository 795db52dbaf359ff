//! Kubernetes resource quantities (`resource.Quantity`: `500m`, `1`, `128Mi`, `1G`, `1e3`),
//! parsed exactly.
//!
//! k8s-openapi keeps a quantity as its string; this module gives it a value. The grammar is
//! apimachinery's:
//!
//! ```text
//! quantity  = [sign] number [suffix]
//! number    = digits | digits "." [digits] | "." digits
//! suffix    = binarySI | decimalSI | ("e" | "E") [sign] digits
//! binarySI  = Ki | Mi | Gi | Ti | Pi | Ei
//! decimalSI = n | u | m | (none) | k | M | G | T | P | E
//! ```
//!
//! The value is held in nano-units, the finest precision Kubernetes keeps: like
//! `resource.ParseQuantity`, anything finer is rounded up, away from zero, so that a tiny
//! request is never rounded down to nothing.

use std::fmt;

/// Nano-units in one unit.
const NANOS_PER_UNIT: i128 = 1_000_000_000;
/// Nano-units in one milli-unit.
const NANOS_PER_MILLI: i128 = 1_000_000;
/// More significant digits than this cannot be held in an `i128` at nano precision anyway.
const MAX_SIGNIFICANT_DIGITS: u32 = 36;
/// Decimal exponents past this are out of any range the value could be held in.
const MAX_EXPONENT_DIGITS: usize = 4;

/// A quantity's exact value (to the nano-unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ParsedQuantity {
    nanos: i128,
}

/// Why a string is not a quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("no number")]
    NoNumber,
    #[error("unknown suffix {0:?}")]
    UnknownSuffix(String),
    #[error("out of range")]
    OutOfRange,
}

impl ParsedQuantity {
    /// Zero.
    pub const ZERO: Self = Self { nanos: 0 };

    /// Parses a quantity string exactly; whitespace anywhere is an error, as in Kubernetes.
    pub fn parse(text: &str) -> Result<Self, QuantityError> {
        let (negative, unsigned) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let (mantissa, mut exp10, suffix) = parse_number(unsigned)?;
        let (suffix_exp10, exp2) = parse_suffix(suffix)?;
        exp10 += suffix_exp10;

        let binary = 1i128.checked_shl(exp2).ok_or(QuantityError::OutOfRange)?;
        let mut nanos = mantissa
            .checked_mul(binary)
            .ok_or(QuantityError::OutOfRange)?;
        // Move the decimal point to nano-units, rounding up what falls below them.
        let shift = exp10 + 9;
        if shift >= 0 {
            let scale = pow10(shift).ok_or(QuantityError::OutOfRange)?;
            nanos = nanos.checked_mul(scale).ok_or(QuantityError::OutOfRange)?;
        } else {
            nanos = match pow10(-shift) {
                Some(scale) => ceil_div(nanos, scale),
                // Smaller than 10^-38 of the mantissa: any non-zero value is one nano-unit.
                None => i128::from(nanos > 0),
            };
        }
        Ok(Self {
            nanos: if negative { -nanos } else { nanos },
        })
    }

    /// A quantity of `millis` thousandths.
    pub fn from_milli(millis: i64) -> Self {
        Self {
            nanos: i128::from(millis) * NANOS_PER_MILLI,
        }
    }

    /// A quantity of `units` whole units.
    pub fn from_units(units: i64) -> Self {
        Self {
            nanos: i128::from(units) * NANOS_PER_UNIT,
        }
    }

    /// The value in whole units, rounded up away from zero (`Quantity.Value()`), saturating
    /// at the bounds of `i64`.
    pub fn value(self) -> i64 {
        saturate(ceil_div_away(self.nanos, NANOS_PER_UNIT))
    }

    /// The value in thousandths, rounded up away from zero (`Quantity.MilliValue()`),
    /// saturating at the bounds of `i64`.
    pub fn milli_value(self) -> i64 {
        saturate(ceil_div_away(self.nanos, NANOS_PER_MILLI))
    }

    pub fn is_zero(self) -> bool {
        self.nanos == 0
    }

    pub fn is_positive(self) -> bool {
        self.nanos > 0
    }

    pub fn is_negative(self) -> bool {
        self.nanos < 0
    }

    /// The sum, saturating (no real quantity comes near the bound).
    pub fn saturating_add(self, other: Self) -> Self {
        Self {
            nanos: self.nanos.saturating_add(other.nanos),
        }
    }
}

impl fmt::Display for ParsedQuantity {
    /// Nano-units, unambiguous if not canonical: `250000000n`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}n", self.nanos)
    }
}

/// Splits `digits[.digits]` off the front: the significant digits as an integer, the decimal
/// exponent that scales them, and what follows the number.
fn parse_number(text: &str) -> Result<(i128, i32, &str), QuantityError> {
    let bytes = text.as_bytes();
    let mut mantissa: i128 = 0;
    let mut exp10: i32 = 0;
    let mut digits = 0usize;
    let mut significant = 0u32;
    let mut seen_point = false;
    let mut end = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        match byte {
            b'0'..=b'9' => {
                digits += 1;
                if seen_point {
                    exp10 -= 1;
                }
                let digit = i128::from(byte - b'0');
                if mantissa != 0 || digit != 0 {
                    significant += 1;
                    if significant > MAX_SIGNIFICANT_DIGITS {
                        return Err(QuantityError::OutOfRange);
                    }
                    mantissa = mantissa * 10 + digit;
                }
            }
            b'.' if !seen_point => seen_point = true,
            _ => break,
        }
        end = index + 1;
    }
    if digits == 0 {
        return Err(QuantityError::NoNumber);
    }
    Ok((mantissa, exp10, &text[end..]))
}

/// The decimal and binary exponents a suffix stands for.
fn parse_suffix(suffix: &str) -> Result<(i32, u32), QuantityError> {
    let exponents = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        _ => (parse_decimal_exponent(suffix)?, 0),
    };
    Ok(exponents)
}

/// `e3`, `E-2`, `e+6`.
fn parse_decimal_exponent(suffix: &str) -> Result<i32, QuantityError> {
    let unknown = || QuantityError::UnknownSuffix(suffix.to_owned());
    let rest = suffix
        .strip_prefix('e')
        .or_else(|| suffix.strip_prefix('E'))
        .ok_or_else(unknown)?;
    let (negative, digits) = match rest.as_bytes().first() {
        Some(b'-') => (true, &rest[1..]),
        Some(b'+') => (false, &rest[1..]),
        _ => (false, rest),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(unknown());
    }
    let trimmed = digits.trim_start_matches('0');
    if trimmed.len() > MAX_EXPONENT_DIGITS {
        return Err(QuantityError::OutOfRange);
    }
    let magnitude: i32 = if trimmed.is_empty() {
        0
    } else {
        trimmed.parse().map_err(|_| unknown())?
    };
    Ok(if negative { -magnitude } else { magnitude })
}

fn pow10(exponent: i32) -> Option<i128> {
    10i128.checked_pow(u32::try_from(exponent).ok()?)
}

/// `ceil(n / d)` for `n >= 0`, `d > 0`.
fn ceil_div(n: i128, d: i128) -> i128 {
    n / d + i128::from(n % d != 0)
}

/// `n / d` rounded away from zero, `d > 0`.
fn ceil_div_away(n: i128, d: i128) -> i128 {
    if n >= 0 {
        ceil_div(n, d)
    } else {
        -ceil_div(-n, d)
    }
}

fn saturate(value: i128) -> i64 {
    i64::try_from(value).unwrap_or(if value < 0 { i64::MIN } else { i64::MAX })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(text: &str) -> ParsedQuantity {
        match ParsedQuantity::parse(text) {
            Ok(parsed) => parsed,
            Err(error) => panic!("{text:?}: {error}"),
        }
    }

    #[test]
    fn cpu_quantities_in_millis() {
        for (text, millis) in [
            ("500m", 500),
            ("100m", 100),
            ("250m", 250),
            ("1", 1000),
            ("2.5", 2500),
            ("0.1", 100),
            (".5", 500),
            ("1.", 1000),
            ("+2", 2000),
            ("1e3", 1_000_000),
            ("1E3", 1_000_000),
            ("1e-3", 1),
            ("1500u", 2),
            ("1n", 1),
            ("0", 0),
            ("0.0001", 1),
            ("-0.0001", -1),
            ("00.5", 500),
        ] {
            assert_eq!(q(text).milli_value(), millis, "{text}");
        }
    }

    #[test]
    fn memory_quantities_in_bytes() {
        for (text, bytes) in [
            ("128Mi", 128 * 1024 * 1024),
            ("1Gi", 1 << 30),
            ("1.5Gi", 3 << 29),
            ("1G", 1_000_000_000),
            ("1k", 1000),
            ("1Ki", 1024),
            ("64M", 64_000_000),
            ("1e3", 1000),
            ("1E", 1_000_000_000_000_000_000),
            ("1Ei", 1 << 60),
            ("100m", 1),
            ("12345", 12345),
            ("-1k", -1000),
            ("2.5e2", 250),
        ] {
            assert_eq!(q(text).value(), bytes, "{text}");
        }
    }

    #[test]
    fn equal_values_compare_equal_across_notations() {
        assert_eq!(q("1"), q("1000m"));
        assert_eq!(q("1Ki"), q("1024"));
        assert_eq!(q("1k"), q("1e3"));
        assert_eq!(q("0.5"), q("500m"));
        assert!(q("1Gi") > q("1G"));
        assert_eq!(q("100m").saturating_add(q("150m")), q("250m"));
    }

    #[test]
    fn malformed_quantities_are_rejected() {
        for (text, error) in [
            ("", QuantityError::NoNumber),
            ("12 GB", QuantityError::UnknownSuffix(" GB".into())),
            ("1GB", QuantityError::UnknownSuffix("GB".into())),
            ("Mi", QuantityError::NoNumber),
            (".", QuantityError::NoNumber),
            ("-", QuantityError::NoNumber),
            ("1.2.3", QuantityError::UnknownSuffix(".3".into())),
            ("1e", QuantityError::UnknownSuffix("e".into())),
            ("1e+", QuantityError::UnknownSuffix("e+".into())),
            ("1mi", QuantityError::UnknownSuffix("mi".into())),
            (" 1", QuantityError::NoNumber),
            ("1 ", QuantityError::UnknownSuffix(" ".into())),
            ("1e99999", QuantityError::OutOfRange),
            ("1e40", QuantityError::OutOfRange),
        ] {
            assert_eq!(ParsedQuantity::parse(text), Err(error), "{text:?}");
        }
    }

    #[test]
    fn values_saturate_instead_of_wrapping() {
        assert_eq!(q("1e20").value(), i64::MAX);
        assert_eq!(q("-1e20").value(), i64::MIN);
    }
}
