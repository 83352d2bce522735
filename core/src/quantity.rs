//! Kubernetes resource quantities (`1Mi`, `10Gi`, `500M`, `1.5e3`, `250m`),
//! parsed exactly.
//!
//! The grammar is Kubernetes' own (`apimachinery/pkg/api/resource`): a signed
//! decimal number, then a binary suffix (`Ki`..`Ei`), a decimal suffix
//! (`m`, `k`, `M`..`E`) or an exponent (`e3`). Values are kept as an exact
//! fraction and rounded up to whole units, as `Quantity.Value()` does, so
//! `0.5` bytes asks for 1 byte and never for 0.
//!
//! Written here rather than taken from a crate: the crates that parse
//! quantities either pin an old `k8s-openapi` or go through floats, and the
//! grammar is small and exactly specified.

use std::fmt;

/// A parsed, non-negative quantity: `numerator / 10^scale` units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity {
    numerator: u128,
    /// Powers of ten to divide by; can be negative (multiply).
    scale: i32,
    /// Binary multiplier (1024^n) applied on top.
    binary: u32,
}

/// Why a quantity does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantityError(String);

impl fmt::Display for QuantityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for QuantityError {}

const HINT: &str = "a number with an optional suffix: Ki, Mi, Gi, Ti, Pi, Ei (powers of 1024), \
                    k, M, G, T, P, E (powers of 1000), m (thousandths) or an exponent (e3)";

impl Quantity {
    /// Parses a quantity; negative ones are refused (nothing petset measures
    /// can be negative).
    pub fn parse(text: &str) -> Result<Quantity, QuantityError> {
        let bad =
            |why: &str| QuantityError(format!("{text:?} is not a quantity ({why}); write {HINT}"));
        if text.is_empty() {
            return Err(bad("it is empty"));
        }
        let (sign, rest) = match text.as_bytes()[0] {
            b'-' => (-1, &text[1..]),
            b'+' => (1, &text[1..]),
            _ => (1, text),
        };
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(number_end);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
            return Err(bad("the number is malformed"));
        }
        if whole.len() + fraction.len() > 30 {
            return Err(bad("too many digits"));
        }
        let digits: u128 = format!("{whole}{fraction}")
            .parse()
            .map_err(|_| bad("the number is malformed"))?;
        let mut scale = fraction.len() as i32;
        let mut binary = 0;
        match suffix {
            "" => {}
            "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => {
                binary = 1 + ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"]
                    .iter()
                    .position(|s| *s == suffix)
                    .expect("listed") as u32;
            }
            "m" => scale += 3,
            "k" => scale -= 3,
            "M" => scale -= 6,
            "G" => scale -= 9,
            "T" => scale -= 12,
            "P" => scale -= 15,
            "E" => scale -= 18,
            s if s.starts_with(['e', 'E']) && s.len() > 1 => {
                let exponent: i32 = s[1..]
                    .parse()
                    .ok()
                    .filter(|e: &i32| e.abs() <= 30)
                    .ok_or_else(|| bad("the exponent is malformed or too large"))?;
                scale -= exponent;
            }
            _ => return Err(bad(&format!("unknown suffix {suffix:?}"))),
        }
        if sign < 0 && digits != 0 {
            return Err(QuantityError(format!(
                "{text:?} is negative; it must be positive"
            )));
        }
        Ok(Quantity {
            numerator: digits,
            scale,
            binary,
        })
    }

    /// Whether it is zero.
    pub fn is_zero(&self) -> bool {
        self.numerator == 0
    }

    /// The value in whole units, rounded up; `None` if it exceeds `i64`.
    pub fn value(&self) -> Option<u64> {
        self.scaled(0)
    }

    /// The value in thousandths of a unit (cpu millicores), rounded up.
    pub fn milli_value(&self) -> Option<u64> {
        self.scaled(3)
    }

    fn scaled(&self, extra: i32) -> Option<u64> {
        let mut n = self
            .numerator
            .checked_mul(1024u128.checked_pow(self.binary)?)?;
        let scale = self.scale - extra;
        if scale < 0 {
            n = n.checked_mul(10u128.checked_pow(scale.unsigned_abs())?)?;
        } else if scale > 0 {
            let d = 10u128.checked_pow(scale as u32)?;
            n = n.div_ceil(d);
        }
        u64::try_from(n).ok().filter(|v| *v <= i64::MAX as u64)
    }
}

/// Parses a size in bytes for a field: positive, within `i64`.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let quantity = Quantity::parse(text).map_err(|e| e.to_string())?;
    if quantity.is_zero() {
        return Err(format!("{text:?} is zero; it must be positive"));
    }
    quantity
        .value()
        .ok_or_else(|| format!("{text:?} is too large (more than 8Ei)"))
}

/// Writes bytes the way Kubernetes users read them: the largest binary
/// suffix that divides evenly (`1Mi`, `1536Ki`), or plain bytes.
pub fn format_bytes(bytes: u64) -> String {
    const SUFFIXES: [&str; 6] = ["Ei", "Pi", "Ti", "Gi", "Mi", "Ki"];
    for (i, suffix) in SUFFIXES.iter().enumerate() {
        let unit = 1u64 << (10 * (6 - i));
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_forms_users_write() {
        let bytes = |t| parse_bytes(t).unwrap();
        assert_eq!(bytes("1Mi"), 1 << 20);
        assert_eq!(bytes("10Gi"), 10 << 30);
        assert_eq!(bytes("500M"), 500_000_000);
        assert_eq!(bytes("1k"), 1000);
        assert_eq!(bytes("1.5Gi"), 3 << 29);
        assert_eq!(bytes("1e3"), 1000);
        assert_eq!(bytes("1E6"), 1_000_000);
        assert_eq!(bytes("2048"), 2048);
        assert_eq!(bytes("+5"), 5);
        assert_eq!(bytes(".5Ki"), 512);
        // Rounded up, never down to nothing.
        assert_eq!(bytes("500m"), 1);
        assert_eq!(bytes("1.0001"), 2);
        assert_eq!(Quantity::parse("250m").unwrap().milli_value(), Some(250));
        assert_eq!(Quantity::parse("2").unwrap().milli_value(), Some(2000));
    }

    #[test]
    fn bad_quantities_are_refused_with_a_reason() {
        for (text, why) in [
            ("", "empty"),
            ("0", "zero"),
            ("0Mi", "zero"),
            ("-1Mi", "negative"),
            ("1MB", "unknown suffix"),
            ("1mi", "unknown suffix"),
            ("Mi", "malformed"),
            ("1..2", "malformed"),
            ("1 Mi", "unknown suffix"),
            ("10Ei", "too large"),
            ("1e99", "exponent"),
            ("one", "malformed"),
        ] {
            let err = parse_bytes(text).unwrap_err();
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }

    #[test]
    fn formatting() {
        assert_eq!(format_bytes(1 << 20), "1Mi");
        assert_eq!(format_bytes(1536 << 10), "1536Ki");
        assert_eq!(format_bytes(1000), "1000");
        assert_eq!(format_bytes(10 << 30), "10Gi");
    }

    proptest! {
        #[test]
        fn formatted_sizes_parse_back(bytes in 1u64..(1 << 62)) {
            prop_assert_eq!(parse_bytes(&format_bytes(bytes)).unwrap(), bytes);
        }
    }
}
