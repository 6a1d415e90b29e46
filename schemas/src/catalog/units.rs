//! Unit conversions of the metric catalog. Owns the arithmetic of one conversion; knows
//! nothing about which metric accepts which unit (that is the catalog's job).

use serde::Deserialize;

/// `canonical = (value + offset) * factor / divisor`.
///
/// The offset is applied in the source unit so that degF -> degC is written exactly as
/// `(x - 32) * 5 / 9`; the divisor lets 1/4.184 or 5/9 be written without a rounded
/// decimal. With `factor > 0` and `divisor > 0` the conversion is strictly increasing,
/// which keeps range checks meaningful in every unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Conversion {
    factor: f64,
    divisor: f64,
    offset: f64,
}

impl Conversion {
    /// Value in the source unit -> canonical value.
    pub(crate) fn apply(self, value: f64) -> f64 {
        (value + self.offset) * self.factor / self.divisor
    }

    /// Canonical value -> value in the source unit.
    pub(crate) fn invert(self, canonical: f64) -> f64 {
        canonical * self.divisor / self.factor - self.offset
    }

    /// The canonical unit must convert to itself without any arithmetic.
    pub(crate) fn is_identity(self) -> bool {
        self.factor == 1.0 && self.divisor == 1.0 && self.offset == 0.0
    }

    /// Finite, strictly positive factor and divisor, finite offset; the message says
    /// what is wrong, the caller adds where.
    pub(crate) fn validate(self) -> Result<(), String> {
        if !(self.factor.is_finite() && self.factor > 0.0) {
            return Err(format!(
                "factor must be finite and > 0, got {}",
                self.factor
            ));
        }
        if !(self.divisor.is_finite() && self.divisor > 0.0) {
            return Err(format!(
                "divisor must be finite and > 0, got {}",
                self.divisor
            ));
        }
        if !self.offset.is_finite() {
            return Err(format!("offset must be finite, got {}", self.offset));
        }
        Ok(())
    }
}

/// A conversion as written in the TOML: a bare factor (`lb = 0.45359237`) or a table
/// (`degF = { factor = 5, divisor = 9, offset = -32 }`).
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a number (factor) or a table { factor, divisor, offset }"
)]
pub(crate) enum RawConversion {
    Factor(f64),
    Full(RawConversionTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConversionTable {
    #[serde(default = "one")]
    factor: f64,
    #[serde(default = "one")]
    divisor: f64,
    #[serde(default)]
    offset: f64,
}

fn one() -> f64 {
    1.0
}

impl From<RawConversion> for Conversion {
    fn from(raw: RawConversion) -> Self {
        match raw {
            RawConversion::Factor(factor) => Conversion {
                factor,
                divisor: 1.0,
                offset: 0.0,
            },
            RawConversion::Full(t) => Conversion {
                factor: t.factor,
                divisor: t.divisor,
                offset: t.offset,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(factor: f64, divisor: f64, offset: f64) -> Conversion {
        Conversion {
            factor,
            divisor,
            offset,
        }
    }

    #[test]
    fn fahrenheit_written_with_offset_and_divisor_is_exact_at_fixed_points() {
        let f = conv(5.0, 9.0, -32.0);
        assert_eq!(f.apply(212.0), 100.0);
        assert_eq!(f.apply(32.0), 0.0);
        assert_eq!(f.apply(-40.0), -40.0);
        assert_eq!(f.invert(100.0), 212.0);
    }

    #[test]
    fn validate_refuses_non_positive_and_non_finite_parameters() {
        assert!(conv(1.0, 1.0, 0.0).validate().is_ok());
        assert!(conv(0.0, 1.0, 0.0).validate().is_err());
        assert!(conv(-1.0, 1.0, 0.0).validate().is_err());
        assert!(conv(1.0, 0.0, 0.0).validate().is_err());
        assert!(conv(f64::NAN, 1.0, 0.0).validate().is_err());
        assert!(conv(1.0, 1.0, f64::INFINITY).validate().is_err());
    }

    #[test]
    fn identity_means_no_arithmetic_at_all() {
        assert!(conv(1.0, 1.0, 0.0).is_identity());
        assert!(!conv(1.0, 1.0, -273.15).is_identity());
        assert!(!conv(2.0, 2.0, 0.0).is_identity());
    }
}
