//! Kubernetes resource quantities ("250m", "1.5", "64Mi", "1G") parsed into millicores and bytes.
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A quantity as the user wrote it. YAML lets users write `cpu: 1` or `cpu: "1"`; both are kept as text.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Quantity(pub String);

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Quantity;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a quantity such as 250m, 1, 64Mi")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid quantity {0:?}")]
pub struct QuantityError(pub String);

/// Splits "64Mi" into (64, multiplier) with Kubernetes' binary and decimal suffixes.
fn split(q: &str) -> Result<(f64, f64), QuantityError> {
    let err = || QuantityError(q.to_string());
    let q = q.trim();
    let idx = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-' || c == 'e'))
        .unwrap_or(q.len());
    // "1e3" is a number, but "1E" is exa: only treat 'e' as exponent when digits follow.
    let (num, suffix) = q.split_at(idx);
    let value: f64 = num.parse().map_err(|_| err())?;
    let mult = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0f64.powi(4),
        "Pi" => 1024.0f64.powi(5),
        _ => return Err(err()),
    };
    if !value.is_finite() || value < 0.0 {
        return Err(err());
    }
    Ok((value, mult))
}

impl Quantity {
    /// CPU in millicores ("250m" -> 250, "1.5" -> 1500).
    pub fn millicores(&self) -> Result<u64, QuantityError> {
        let (v, m) = split(&self.0)?;
        Ok((v * m * 1000.0).ceil() as u64)
    }

    /// Memory in bytes ("64Mi" -> 67108864).
    pub fn bytes(&self) -> Result<u64, QuantityError> {
        let (v, m) = split(&self.0)?;
        Ok((v * m).ceil() as u64)
    }

    pub fn from_millicores(m: u64) -> Quantity {
        if m.is_multiple_of(1000) {
            Quantity((m / 1000).to_string())
        } else {
            Quantity(format!("{m}m"))
        }
    }

    pub fn from_bytes(b: u64) -> Quantity {
        if b.is_multiple_of(1024 * 1024) {
            Quantity(format!("{}Mi", b / (1024 * 1024)))
        } else if b.is_multiple_of(1024) {
            Quantity(format!("{}Ki", b / 1024))
        } else {
            Quantity(b.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_quantities() {
        let q = |s: &str| Quantity(s.to_string());
        assert_eq!(q("250m").millicores(), Ok(250));
        assert_eq!(q("1.5").millicores(), Ok(1500));
        assert_eq!(q("2").millicores(), Ok(2000));
        assert_eq!(q("64Mi").bytes(), Ok(64 << 20));
        assert_eq!(q("1G").bytes(), Ok(1_000_000_000));
        assert_eq!(q("128974848").bytes(), Ok(128974848));
        assert!(q("12Qi").bytes().is_err());
        assert!(q("-1").bytes().is_err());
        assert!(q("").bytes().is_err());
        assert_eq!(Quantity::from_bytes(64 << 20).0, "64Mi");
        assert_eq!(Quantity::from_millicores(1500).0, "1500m");
    }
}
