//! Numbers for people: the one copy of the formatting both binaries use in
//! their reports and stats lines.

/// 45678000 -> "45,678,000".
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// 4_520_000 -> "4.52M", 12_100 -> "12.1k", 950 -> "950": three
/// significant digits with an SI prefix.
pub fn si(v: f64) -> String {
    let (scaled, unit) = if v >= 1e9 {
        (v / 1e9, "G")
    } else if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "k")
    } else {
        return format!("{v:.0}");
    };
    if scaled >= 100.0 {
        format!("{scaled:.0}{unit}")
    } else if scaled >= 10.0 {
        format!("{scaled:.1}{unit}")
    } else {
        format!("{scaled:.2}{unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_of_three() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1_000), "1,000");
        assert_eq!(group(45_678_000), "45,678,000");
    }

    #[test]
    fn three_significant_digits() {
        assert_eq!(si(950.0), "950");
        assert_eq!(si(12_100.0), "12.1k");
        assert_eq!(si(4_520_000.0), "4.52M");
        assert_eq!(si(123_456_789.0), "123M");
        assert_eq!(si(2.5e9), "2.50G");
    }
}
