//! Serde for byte sizes that round-trips exactly.
//!
//! `bytesize::ByteSize` parses `16MB` and `1GiB` fine, but serializes through its `Display`, which
//! rounds (`16MB` comes back as `15.3 MiB`): a spec written back out, or hashed to notice that a job
//! changed, would not be the spec that was read. This writes the largest unit that divides exactly.

use bytesize::ByteSize;
use serde::{Deserialize, Deserializer, Serializer};

/// Units from largest to smallest, binary before decimal at each step so `1GiB` stays `1GiB`.
const UNITS: [(&str, u64); 6] =
    [("GiB", 1 << 30), ("GB", 1_000_000_000), ("MiB", 1 << 20), ("MB", 1_000_000), ("KiB", 1 << 10), ("kB", 1_000)];

/// `16MB`, `1GiB`, `1500B`: exact, and parsed back by `ByteSize`.
pub fn exact(size: ByteSize) -> String {
    let bytes = size.as_u64();
    UNITS
        .iter()
        .find(|(_, unit)| bytes != 0 && bytes.is_multiple_of(*unit))
        .map(|(name, unit)| format!("{}{name}", bytes / unit))
        .unwrap_or_else(|| format!("{bytes}B"))
}

/// For `Option<ByteSize>` fields: `#[serde(with = "byte_size::option")]`.
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Option<ByteSize>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(size) => serializer.serialize_str(&exact(*size)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<ByteSize>, D::Error> {
        Option::<ByteSize>::deserialize(deserializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_round_trips() {
        for (text, shown) in [
            ("16MB", "16MB"),
            ("1GiB", "1GiB"),
            ("1500000", "1500kB"),
            ("1500001", "1500001B"),
            ("0", "0B"),
            ("3 KiB", "3KiB"),
        ] {
            let size: ByteSize = text.parse().unwrap();
            assert_eq!(exact(size), shown);
            assert_eq!(exact(size).parse::<ByteSize>().unwrap(), size, "{text}");
        }
    }
}
