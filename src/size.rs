//! Sizes as people write them: `64MiB`, `8GiB`, `512KiB`, or plain bytes (`67108864`), in
//! flags and environment variables, and shown back the same way in help and messages.
//!
//! Binary units only (KiB = 1024 bytes): a limit is set to match powers of two that the
//! code uses, and `64MiB` must mean exactly the 67108864 that a raw-byte setting meant.
//! `KB`/`MB`/`GB`, `K`/`M`/`G` are read as the binary units too, since people type them
//! meaning the same thing; nothing is ever shown that way.

use std::{fmt, str::FromStr};

/// A size in bytes, parsed from and shown in binary units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Size(pub u64);

const UNITS: [(&str, u64); 5] = [
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("B", 1),
];

impl Size {
    /// The number of bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

/// Why a size did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a size: write bytes (67108864) or a number with a unit (64MiB, 8GiB)")]
pub struct SizeError(String);

impl FromStr for Size {
    type Err = SizeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || SizeError(text.to_owned());
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (digits, unit) = trimmed.split_at(split);
        let number: u64 = digits.parse().map_err(|_| error())?;
        let multiplier = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            _ => return Err(error()),
        };
        number.checked_mul(multiplier).map(Size).ok_or_else(error)
    }
}

impl fmt::Display for Size {
    /// The largest unit that shows the size exactly (`64MiB`, `1536KiB`, `100B`).
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (unit, multiplier) = UNITS
            .iter()
            .copied()
            .find(|&(_, multiplier)| self.0 != 0 && self.0.is_multiple_of(multiplier))
            .unwrap_or(("B", 1));
        write!(formatter, "{}{unit}", self.0 / multiplier)
    }
}

impl From<u64> for Size {
    fn from(bytes: u64) -> Self {
        Self(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::Size;

    /// Units and raw bytes parse to the same byte counts; junk and overflow are refused.
    #[test]
    fn parses_units_and_raw_bytes() {
        assert_eq!("64MiB".parse(), Ok(Size(64 << 20)));
        assert_eq!("8GiB".parse(), Ok(Size(8 << 30)));
        assert_eq!("8589934592".parse(), Ok(Size(8 << 30)));
        assert_eq!("512 kb".parse(), Ok(Size(512 << 10)));
        assert_eq!("1T".parse(), Ok(Size(1 << 40)));
        assert!("".parse::<Size>().is_err());
        assert!("MiB".parse::<Size>().is_err());
        assert!("1.5GiB".parse::<Size>().is_err());
        assert!("99999999999TiB".parse::<Size>().is_err());
    }

    /// Shown in the largest exact unit.
    #[test]
    fn shows_the_largest_exact_unit() {
        assert_eq!(Size(64 << 20).to_string(), "64MiB");
        assert_eq!(Size(8 << 30).to_string(), "8GiB");
        assert_eq!(Size(1536 << 10).to_string(), "1536KiB");
        assert_eq!(Size(67_174_400).to_string(), "65600KiB");
        assert_eq!(Size(100).to_string(), "100B");
        assert_eq!(Size(0).to_string(), "0B");
    }
}
