//! Kubernetes resource quantities (`100m`, `0.5`, `128Mi`, `1e3`) as exact integers.
//!
//! The grammar is Kubernetes' `resource.Quantity`: a non-negative decimal number
//! followed by a binary suffix (`Ki Mi Gi Ti Pi Ei`), a decimal suffix
//! (`n u m k M G T P E`) or a decimal exponent (`e3`, `E-2`). Values are computed
//! exactly with integers and rounded up, as Kubernetes does for `Value()` and
//! `MilliValue()`, so `0.5` CPU is 500 millicores and `1.5` bytes is 2 bytes.

/// CPU in millicores: `100m` = 100, `0.5` = 500, `2` = 2000.
pub(crate) fn cpu_millis(text: &str) -> Result<u64, String> {
    parse(text, 1000)
}

/// Memory in bytes: `128Mi` = 134217728, `500M` = 500000000.
pub(crate) fn memory_bytes(text: &str) -> Result<u64, String> {
    parse(text, 1)
}

/// Exponents beyond this are rejected: 10^18 already exceeds any real machine.
const MAX_EXPONENT: i32 = 18;

/// Parses `text` and returns ceil(value × `scale`).
fn parse(text: &str, scale: u128) -> Result<u64, String> {
    let bad =
        |why: &str| format!("expected a quantity such as 500m, 0.5, 128Mi or 1Gi, got {text:?} ({why})");
    let text_trimmed = text.trim();
    let unsigned = text_trimmed.strip_prefix('+').unwrap_or(text_trimmed);
    if unsigned.starts_with('-') {
        return Err(bad("must not be negative"));
    }
    let number_end = unsigned.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(number_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return Err(bad("no number"));
    }
    if fraction.contains('.') {
        return Err(bad("more than one decimal point"));
    }
    let digits = format!("{whole}{fraction}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 30 {
        return Err(bad("too many digits"));
    }
    let mantissa: u128 =
        if digits.is_empty() { 0 } else { digits.parse().map_err(|_| bad("not a number"))? };

    // value = mantissa × 10^exp10 × 2^exp2
    let (mut exp10, exp2): (i32, u32) = match suffix {
        "" => (0, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        s if s.starts_with(['e', 'E']) => {
            let exponent: i32 = s[1..].parse().map_err(|_| bad("unknown suffix"))?;
            if exponent.abs() > MAX_EXPONENT {
                return Err(bad("exponent out of range"));
            }
            (exponent, 0)
        }
        _ => return Err(bad("unknown suffix")),
    };
    let fraction_digits = i32::try_from(fraction.len()).map_err(|_| bad("too many digits"))?;
    exp10 -= fraction_digits;

    let too_large = || bad("too large");
    let mut numerator =
        mantissa.checked_mul(scale).and_then(|n| n.checked_mul(1u128 << exp2)).ok_or_else(too_large)?;
    let mut denominator: u128 = 1;
    if exp10 >= 0 {
        numerator = numerator.checked_mul(10u128.pow(exp10.unsigned_abs())).ok_or_else(too_large)?;
    } else {
        // At most 30 fraction digits plus 18 for the exponent: 10^48 overflows u128, so
        // cap it; anything that small but non-zero rounds up to 1 anyway.
        let shift = exp10.unsigned_abs().min(38);
        denominator = 10u128.pow(shift);
    }
    let value = numerator.div_ceil(denominator);
    u64::try_from(value).map_err(|_| too_large())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities() {
        assert_eq!(cpu_millis("100m"), Ok(100));
        assert_eq!(cpu_millis("0.5"), Ok(500));
        assert_eq!(cpu_millis("2"), Ok(2000));
        assert_eq!(cpu_millis(".25"), Ok(250));
        assert_eq!(cpu_millis("1e3"), Ok(1_000_000));
        assert_eq!(cpu_millis("0.0001"), Ok(1), "rounds up like MilliValue");
        assert_eq!(cpu_millis("250000u"), Ok(250));
        assert_eq!(cpu_millis("0"), Ok(0));
    }

    #[test]
    fn memory_quantities() {
        assert_eq!(memory_bytes("128Mi"), Ok(134_217_728));
        assert_eq!(memory_bytes("1Gi"), Ok(1 << 30));
        assert_eq!(memory_bytes("500M"), Ok(500_000_000));
        assert_eq!(memory_bytes("1e3"), Ok(1000));
        assert_eq!(memory_bytes("1E6"), Ok(1_000_000));
        assert_eq!(memory_bytes("4096"), Ok(4096));
        assert_eq!(memory_bytes("1.5Ki"), Ok(1536));
        assert_eq!(memory_bytes("0.5"), Ok(1));
        assert_eq!(memory_bytes("1k"), Ok(1000));
    }

    #[test]
    fn bad_quantities_say_why() {
        let err = |s| memory_bytes(s).expect_err("the quantity is invalid");
        assert_eq!(
            err("12XB"),
            "expected a quantity such as 500m, 0.5, 128Mi or 1Gi, got \"12XB\" (unknown suffix)"
        );
        assert!(err("-1Gi").contains("must not be negative"));
        assert!(err("Mi").contains("no number"));
        assert!(err("1.2.3").contains("more than one decimal point"));
        assert!(err("100Ei").contains("too large"));
        assert!(err("1e99").contains("exponent out of range"));
        assert!(err("").contains("no number"));
        assert!(cpu_millis("1mi").is_err());
    }
}
