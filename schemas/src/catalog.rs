//! The metric catalog: which metrics exist, their canonical unit, accepted units and
//! conversions, plausible range, longest sample interval and how they aggregate.
//!
//! The data lives in `schemas/catalog/metrics.toml`, compiled into the binary and parsed
//! once, so every service agrees on what "HEART_RATE" means without reading a file at
//! run time. This module owns the meaning of a metric code; it must never do I/O, and
//! nothing downstream of the gateway should hold a value that is not in the canonical
//! unit.

mod units;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::LazyLock;

use chrono::TimeDelta;
use serde::{Deserialize, Serialize};

use units::{Conversion, RawConversion};

/// The embedded catalog text; `Catalog::builtin()` is its parsed form.
const BUILTIN_TOML: &str = include_str!("../catalog/metrics.toml");

static BUILTIN: LazyLock<Catalog> = LazyLock::new(|| {
    // The embedded file is validated by `tests::builtin_catalog_parses_and_is_consistent`,
    // so this cannot fail in a binary whose tests passed.
    #[allow(clippy::expect_used)]
    Catalog::from_toml(BUILTIN_TOML).expect("embedded schemas/catalog/metrics.toml is invalid")
});

/// Whether a metric carries a measured number or one of a fixed set of categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueKind {
    /// A number in a unit (heart rate, weight ...).
    Quantity,
    /// A category over an interval (sleep stage, workout type); no measured value.
    Category,
}

/// How samples of a metric combine in a time bucket; rollups dispatch on this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Values add up (steps, energy); overlapping sources must not be double counted.
    CumulativeSum,
    /// Independent readings summarised as avg/min/max (heart rate, glucose).
    Discrete,
    /// Only the most recent reading matters (weight, height).
    Latest,
}

/// Everything that can go wrong looking up a metric or checking a value against it.
/// All variants except `Invalid` are client data errors: retrying cannot help.
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum CatalogError {
    /// The metric code is not in the catalog (codes are case-sensitive UPPER_SNAKE).
    #[error("unknown metric `{metric}`")]
    UnknownMetric { metric: String },
    /// The unit is not one the metric accepts (units are case-sensitive).
    #[error("unit `{unit}` is not accepted for metric {metric}")]
    UnitMismatch { metric: String, unit: String },
    /// The value, in the canonical unit, is outside the metric's plausible range.
    #[error("value {value} is outside the plausible range [{min}, {max}] of metric {metric}")]
    OutOfRange {
        metric: String,
        value: f64,
        min: f64,
        max: f64,
    },
    /// The category is not one of the metric's categories (or the metric has none).
    #[error("`{category}` is not a category of metric {metric}")]
    InvalidCategory { metric: String, category: String },
    /// The value is NaN or infinite, or its conversion overflowed.
    #[error("value of metric {metric} is not a finite number: {value}")]
    NonFinite { metric: String, value: f64 },
    /// The catalog file itself is malformed or inconsistent.
    #[error("invalid metric catalog: {0}")]
    Invalid(String),
}

impl CatalogError {
    /// The stable code used in the HTTP error envelope.
    pub fn code(&self) -> &'static str {
        match self {
            CatalogError::UnknownMetric { .. } => "UNKNOWN_METRIC",
            CatalogError::UnitMismatch { .. } => "UNIT_MISMATCH",
            CatalogError::OutOfRange { .. } => "OUT_OF_RANGE",
            CatalogError::InvalidCategory { .. } => "INVALID_CATEGORY",
            CatalogError::NonFinite { .. } => "NON_FINITE_VALUE",
            CatalogError::Invalid(_) => "INVALID_CATALOG",
        }
    }
}

/// The set of known metrics, validated as a whole when built.
#[derive(Debug, Clone)]
pub struct Catalog {
    metrics: Vec<MetricDef>,
    by_code: HashMap<String, usize>,
}

impl Catalog {
    /// The catalog compiled into the binary; parsed on first use.
    pub fn builtin() -> &'static Catalog {
        &BUILTIN
    }

    /// Parses and validates a catalog; used by tests and for overrides. Refuses any
    /// inconsistency (duplicate code, canonical unit missing from its table, inverted
    /// range ...) so a bad file fails at load, never on a sample.
    pub fn from_toml(text: &str) -> Result<Catalog, CatalogError> {
        let raw: RawCatalog =
            toml::from_str(text).map_err(|e| CatalogError::Invalid(e.to_string()))?;
        raw.build()
    }

    /// Looks a metric up by its code (e.g. `"HEART_RATE"`).
    pub fn metric(&self, code: &str) -> Result<&MetricDef, CatalogError> {
        self.by_code
            .get(code)
            .map(|&i| &self.metrics[i])
            .ok_or_else(|| CatalogError::UnknownMetric {
                metric: code.to_owned(),
            })
    }

    /// All metrics, in file order.
    pub fn metrics(&self) -> impl Iterator<Item = &MetricDef> {
        self.metrics.iter()
    }
}

/// One metric: read-only, obtained from a [`Catalog`].
#[derive(Debug, Clone, PartialEq)]
pub struct MetricDef {
    code: String,
    name: String,
    kind: ValueKind,
    canonical_unit: String,
    units: BTreeMap<String, Conversion>,
    aggregation: Aggregation,
    range: Option<(f64, f64)>,
    max_interval: TimeDelta,
    priority_resolved: bool,
    categories: Vec<String>,
    category_aliases: BTreeMap<String, String>,
}

impl MetricDef {
    /// Converts `value` in `unit` to the canonical unit; only the canonical value is
    /// stored, so every downstream reader can ignore units.
    pub fn to_canonical(&self, value: f64, unit: &str) -> Result<f64, CatalogError> {
        let conversion = self.conversion(unit)?;
        self.finite(value)?;
        self.finite(conversion.apply(value))
    }

    /// Converts a canonical value to `unit`, for answers in the unit a client asked for.
    pub fn from_canonical(&self, value: f64, unit: &str) -> Result<f64, CatalogError> {
        let conversion = self.conversion(unit)?;
        self.finite(value)?;
        self.finite(conversion.invert(value))
    }

    /// Refuses a canonical value outside the plausible range (a sensor or unit mistake).
    /// Metrics without a range (categories) accept any finite value.
    pub fn check_range(&self, canonical_value: f64) -> Result<(), CatalogError> {
        self.finite(canonical_value)?;
        match self.range {
            Some((min, max)) if !(min..=max).contains(&canonical_value) => {
                Err(CatalogError::OutOfRange {
                    metric: self.code.clone(),
                    value: canonical_value,
                    min,
                    max,
                })
            }
            _ => Ok(()),
        }
    }

    /// Refuses a category the metric does not know (aliases are accepted).
    pub fn check_category(&self, category: &str) -> Result<(), CatalogError> {
        self.canonical_category(category).map(|_| ())
    }

    /// The stored spelling of a category: itself, or what its alias stands for
    /// (`"light"` -> `"core"` for SLEEP_STAGE), so read models see one name per stage.
    pub fn canonical_category(&self, category: &str) -> Result<&str, CatalogError> {
        if let Some(c) = self.categories.iter().find(|c| *c == category) {
            return Ok(c);
        }
        self.category_aliases
            .get(category)
            .map(String::as_str)
            .ok_or_else(|| CatalogError::InvalidCategory {
                metric: self.code.clone(),
                category: category.to_owned(),
            })
    }

    /// UPPER_SNAKE code, as clients send it.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// Human-readable name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Quantity or category.
    pub fn kind(&self) -> ValueKind {
        self.kind
    }

    /// The unit every stored value is in.
    pub fn canonical_unit(&self) -> &str {
        &self.canonical_unit
    }

    /// How samples combine in a bucket.
    pub fn aggregation(&self) -> Aggregation {
        self.aggregation
    }

    /// Plausible inclusive range in the canonical unit; `None` for categories.
    pub fn range(&self) -> Option<(f64, f64)> {
        self.range
    }

    /// Longest allowed `endAt - startAt` of one sample.
    pub fn max_interval(&self) -> TimeDelta {
        self.max_interval
    }

    /// Whether overlapping samples of several sources are resolved by source priority
    /// rather than all counted (true for cumulative metrics).
    pub fn priority_resolved(&self) -> bool {
        self.priority_resolved
    }

    /// Canonical categories (empty for quantities).
    pub fn categories(&self) -> &[String] {
        &self.categories
    }

    /// Accepted alternative spellings of categories, as `(alias, canonical)`.
    pub fn category_aliases(&self) -> impl Iterator<Item = (&str, &str)> {
        self.category_aliases
            .iter()
            .map(|(a, c)| (a.as_str(), c.as_str()))
    }

    /// Every unit string this metric accepts, the canonical one included (sorted).
    pub fn accepted_units(&self) -> impl Iterator<Item = &str> {
        self.units.keys().map(String::as_str)
    }

    fn conversion(&self, unit: &str) -> Result<Conversion, CatalogError> {
        self.units
            .get(unit)
            .copied()
            .ok_or_else(|| CatalogError::UnitMismatch {
                metric: self.code.clone(),
                unit: unit.to_owned(),
            })
    }

    fn finite(&self, value: f64) -> Result<f64, CatalogError> {
        if value.is_finite() {
            Ok(value)
        } else {
            Err(CatalogError::NonFinite {
                metric: self.code.clone(),
                value,
            })
        }
    }
}

// ---------------------------------------------------------------------------------------
// The file format and its validation.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    #[serde(default)]
    unit_tables: BTreeMap<String, BTreeMap<String, RawConversion>>,
    #[serde(default, rename = "metric")]
    metrics: Vec<RawMetric>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetric {
    code: String,
    name: String,
    kind: ValueKind,
    canonical_unit: String,
    /// Name of a table under `[unit_tables]`.
    units: String,
    aggregation: Aggregation,
    #[serde(default)]
    range: Option<[f64; 2]>,
    max_interval_seconds: i64,
    priority_resolved: bool,
    #[serde(default)]
    categories: Vec<String>,
    #[serde(default)]
    category_aliases: BTreeMap<String, String>,
}

fn invalid(msg: String) -> CatalogError {
    CatalogError::Invalid(msg)
}

impl RawCatalog {
    fn build(self) -> Result<Catalog, CatalogError> {
        let mut tables: BTreeMap<String, BTreeMap<String, Conversion>> = BTreeMap::new();
        for (table_name, entries) in self.unit_tables {
            if entries.is_empty() {
                return Err(invalid(format!("unit table `{table_name}` is empty")));
            }
            let mut table = BTreeMap::new();
            for (unit, raw) in entries {
                let conversion = Conversion::from(raw);
                if unit.trim().is_empty() || unit.trim() != unit {
                    return Err(invalid(format!(
                        "unit table `{table_name}`: unit `{unit}` is empty or has surrounding spaces"
                    )));
                }
                conversion.validate().map_err(|e| {
                    invalid(format!("unit table `{table_name}`, unit `{unit}`: {e}"))
                })?;
                table.insert(unit, conversion);
            }
            tables.insert(table_name, table);
        }

        if self.metrics.is_empty() {
            return Err(invalid("the catalog defines no [[metric]]".to_owned()));
        }
        let mut metrics = Vec::with_capacity(self.metrics.len());
        let mut by_code = HashMap::with_capacity(self.metrics.len());
        for raw in self.metrics {
            let code = raw.code.clone();
            if by_code.contains_key(&code) {
                return Err(invalid(format!("duplicate metric code `{code}`")));
            }
            let def = raw.build(&tables)?;
            by_code.insert(code, metrics.len());
            metrics.push(def);
        }
        Ok(Catalog { metrics, by_code })
    }
}

fn is_upper_snake(s: &str) -> bool {
    !s.is_empty()
        && s.starts_with(|c: char| c.is_ascii_uppercase())
        && !s.ends_with('_')
        && !s.contains("__")
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

fn is_lower_snake(s: &str) -> bool {
    !s.is_empty()
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('_')
        && !s.contains("__")
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl RawMetric {
    fn build(
        self,
        tables: &BTreeMap<String, BTreeMap<String, Conversion>>,
    ) -> Result<MetricDef, CatalogError> {
        let code = self.code;
        let err = |msg: String| invalid(format!("metric `{code}`: {msg}"));

        if !is_upper_snake(&code) {
            return Err(err("code must be UPPER_SNAKE".to_owned()));
        }
        if self.name.trim().is_empty() {
            return Err(err("name is empty".to_owned()));
        }

        let units = tables
            .get(&self.units)
            .ok_or_else(|| err(format!("unit table `{}` does not exist", self.units)))?
            .clone();
        match units.get(&self.canonical_unit) {
            None => {
                return Err(err(format!(
                    "canonical unit `{}` is not in unit table `{}`",
                    self.canonical_unit, self.units
                )));
            }
            Some(c) if !c.is_identity() => {
                return Err(err(format!(
                    "canonical unit `{}` must have factor 1 and no offset in unit table `{}`",
                    self.canonical_unit, self.units
                )));
            }
            Some(_) => {}
        }

        let range = match (self.kind, self.range) {
            (ValueKind::Quantity, None) => {
                return Err(err("a quantity metric needs a plausible range".to_owned()));
            }
            (ValueKind::Category, Some(_)) => {
                return Err(err("a category metric has no value, so no range".to_owned()));
            }
            (_, Some([min, max])) => {
                if !(min.is_finite() && max.is_finite()) {
                    return Err(err(format!("range [{min}, {max}] is not finite")));
                }
                if min > max {
                    return Err(err(format!("range min {min} > max {max}")));
                }
                Some((min, max))
            }
            (ValueKind::Category, None) => None,
        };

        if self.max_interval_seconds <= 0 {
            return Err(err(format!(
                "max_interval_seconds must be > 0, got {}",
                self.max_interval_seconds
            )));
        }
        let max_interval = TimeDelta::try_seconds(self.max_interval_seconds)
            .ok_or_else(|| err("max_interval_seconds is too large".to_owned()))?;

        if self.aggregation == Aggregation::CumulativeSum && !self.priority_resolved {
            return Err(err(
                "a cumulative_sum metric must be priority_resolved (summing overlapping sources double counts)"
                    .to_owned(),
            ));
        }

        match self.kind {
            ValueKind::Quantity => {
                if !self.categories.is_empty() || !self.category_aliases.is_empty() {
                    return Err(err("a quantity metric has no categories".to_owned()));
                }
            }
            ValueKind::Category => {
                if self.categories.is_empty() {
                    return Err(err("a category metric needs categories".to_owned()));
                }
                let mut seen = HashSet::new();
                for c in &self.categories {
                    if !is_lower_snake(c) {
                        return Err(err(format!("category `{c}` must be lower_snake")));
                    }
                    if !seen.insert(c.as_str()) {
                        return Err(err(format!("duplicate category `{c}`")));
                    }
                }
                for (alias, target) in &self.category_aliases {
                    if seen.contains(alias.as_str()) {
                        return Err(err(format!("alias `{alias}` shadows a category")));
                    }
                    if !is_lower_snake(alias) {
                        return Err(err(format!("alias `{alias}` must be lower_snake")));
                    }
                    if !seen.contains(target.as_str()) {
                        return Err(err(format!(
                            "alias `{alias}` points to unknown category `{target}`"
                        )));
                    }
                }
            }
        }

        Ok(MetricDef {
            code,
            name: self.name,
            kind: self.kind,
            canonical_unit: self.canonical_unit,
            units,
            aggregation: self.aggregation,
            range,
            max_interval,
            priority_resolved: self.priority_resolved,
            categories: self.categories,
            category_aliases: self.category_aliases,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes other crates are written against; dropping one must fail here.
    const REQUIRED: &[(&str, Aggregation, ValueKind)] = &[
        ("STEPS", Aggregation::CumulativeSum, ValueKind::Quantity),
        (
            "DISTANCE_WALKING_RUNNING",
            Aggregation::CumulativeSum,
            ValueKind::Quantity,
        ),
        (
            "DISTANCE_CYCLING",
            Aggregation::CumulativeSum,
            ValueKind::Quantity,
        ),
        (
            "ACTIVE_ENERGY",
            Aggregation::CumulativeSum,
            ValueKind::Quantity,
        ),
        (
            "BASAL_ENERGY",
            Aggregation::CumulativeSum,
            ValueKind::Quantity,
        ),
        (
            "FLIGHTS_CLIMBED",
            Aggregation::CumulativeSum,
            ValueKind::Quantity,
        ),
        (
            "EXERCISE_MINUTES",
            Aggregation::CumulativeSum,
            ValueKind::Quantity,
        ),
        (
            "STAND_HOURS",
            Aggregation::CumulativeSum,
            ValueKind::Quantity,
        ),
        ("HEART_RATE", Aggregation::Discrete, ValueKind::Quantity),
        (
            "RESTING_HEART_RATE",
            Aggregation::Discrete,
            ValueKind::Quantity,
        ),
        (
            "WALKING_HEART_RATE_AVERAGE",
            Aggregation::Discrete,
            ValueKind::Quantity,
        ),
        (
            "HEART_RATE_VARIABILITY_SDNN",
            Aggregation::Discrete,
            ValueKind::Quantity,
        ),
        (
            "RESPIRATORY_RATE",
            Aggregation::Discrete,
            ValueKind::Quantity,
        ),
        (
            "OXYGEN_SATURATION",
            Aggregation::Discrete,
            ValueKind::Quantity,
        ),
        (
            "BODY_TEMPERATURE",
            Aggregation::Discrete,
            ValueKind::Quantity,
        ),
        (
            "WRIST_TEMPERATURE",
            Aggregation::Discrete,
            ValueKind::Quantity,
        ),
        ("VO2_MAX", Aggregation::Latest, ValueKind::Quantity),
        (
            "BLOOD_PRESSURE_SYSTOLIC",
            Aggregation::Discrete,
            ValueKind::Quantity,
        ),
        (
            "BLOOD_PRESSURE_DIASTOLIC",
            Aggregation::Discrete,
            ValueKind::Quantity,
        ),
        ("BLOOD_GLUCOSE", Aggregation::Discrete, ValueKind::Quantity),
        ("WEIGHT", Aggregation::Latest, ValueKind::Quantity),
        ("HEIGHT", Aggregation::Latest, ValueKind::Quantity),
        ("BMI", Aggregation::Latest, ValueKind::Quantity),
        ("BODY_FAT", Aggregation::Latest, ValueKind::Quantity),
        ("LEAN_BODY_MASS", Aggregation::Latest, ValueKind::Quantity),
        ("WATER", Aggregation::CumulativeSum, ValueKind::Quantity),
        ("CAFFEINE", Aggregation::CumulativeSum, ValueKind::Quantity),
        (
            "MINDFUL_MINUTES",
            Aggregation::CumulativeSum,
            ValueKind::Quantity,
        ),
        ("SLEEP_STAGE", Aggregation::Discrete, ValueKind::Category),
        ("WORKOUT", Aggregation::Discrete, ValueKind::Category),
    ];

    #[test]
    fn builtin_catalog_parses_and_is_consistent() {
        // Parse the embedded text directly so a failure shows the error, not a panic
        // inside the LazyLock.
        let catalog = Catalog::from_toml(BUILTIN_TOML).unwrap();
        assert_eq!(
            catalog.metrics().count(),
            Catalog::builtin().metrics().count()
        );
        for m in catalog.metrics() {
            let canonical = m.canonical_unit();
            assert!(
                m.accepted_units().any(|u| u == canonical),
                "{}: canonical unit not accepted",
                m.code()
            );
            assert!(
                m.units[canonical].is_identity(),
                "{}: canonical factor != 1",
                m.code()
            );
            for x in [-3.5, 0.0, 1.0, 72.25, 1e6] {
                assert_eq!(m.to_canonical(x, canonical).unwrap(), x, "{}", m.code());
            }
            match m.kind() {
                ValueKind::Quantity => {
                    let (min, max) = m.range().unwrap();
                    assert!(
                        min.is_finite() && max.is_finite() && min <= max,
                        "{}",
                        m.code()
                    );
                    assert!(m.categories().is_empty(), "{}", m.code());
                }
                ValueKind::Category => {
                    assert!(m.range().is_none(), "{}", m.code());
                    assert!(!m.categories().is_empty(), "{}", m.code());
                }
            }
            assert!(m.max_interval() > TimeDelta::zero(), "{}", m.code());
            assert_eq!(
                m.priority_resolved(),
                m.aggregation() == Aggregation::CumulativeSum,
                "{}: priority resolution is for cumulative metrics only",
                m.code()
            );
        }
    }

    #[test]
    fn builtin_catalog_has_the_required_metrics_with_their_aggregation() {
        let catalog = Catalog::builtin();
        for &(code, aggregation, kind) in REQUIRED {
            let m = catalog.metric(code).unwrap();
            assert_eq!(m.aggregation(), aggregation, "{code}");
            assert_eq!(m.kind(), kind, "{code}");
        }
    }

    #[test]
    fn realistic_ranges_from_the_spec() {
        let c = Catalog::builtin();
        let range = |code: &str| c.metric(code).unwrap().range().unwrap();
        assert_eq!(range("HEART_RATE"), (20.0, 300.0));
        assert_eq!(range("BLOOD_GLUCOSE"), (10.0, 1000.0));
        assert_eq!(range("WEIGHT"), (0.5, 650.0));
        assert_eq!(range("BODY_TEMPERATURE"), (25.0, 45.0));
        assert_eq!(range("OXYGEN_SATURATION"), (50.0, 100.0));
        assert_eq!(range("STEPS"), (0.0, 100_000.0));
        assert_eq!(
            c.metric("STEPS").unwrap().max_interval(),
            TimeDelta::hours(24)
        );
        assert_eq!(
            c.metric("HEART_RATE").unwrap().max_interval(),
            TimeDelta::hours(24)
        );
        assert_eq!(
            c.metric("SLEEP_STAGE").unwrap().max_interval(),
            TimeDelta::hours(24)
        );
    }

    #[test]
    fn sleep_stage_accepts_light_as_core() {
        let m = Catalog::builtin().metric("SLEEP_STAGE").unwrap();
        let expected = [
            "in_bed",
            "awake",
            "asleep_unspecified",
            "core",
            "deep",
            "rem",
        ];
        assert_eq!(m.categories(), expected);
        assert_eq!(m.canonical_category("light").unwrap(), "core");
        assert_eq!(m.canonical_category("deep").unwrap(), "deep");
        assert!(m.check_category("light").is_ok());
        assert_eq!(
            m.check_category("Deep"),
            Err(CatalogError::InvalidCategory {
                metric: "SLEEP_STAGE".into(),
                category: "Deep".into()
            })
        );
    }

    #[test]
    fn quantity_metric_has_no_categories() {
        let m = Catalog::builtin().metric("HEART_RATE").unwrap();
        assert_eq!(
            m.check_category("core").unwrap_err().code(),
            "INVALID_CATEGORY"
        );
    }

    #[test]
    fn error_codes_are_the_api_codes() {
        let s = String::new;
        let cases = [
            (
                CatalogError::UnknownMetric { metric: s() },
                "UNKNOWN_METRIC",
            ),
            (
                CatalogError::UnitMismatch {
                    metric: s(),
                    unit: s(),
                },
                "UNIT_MISMATCH",
            ),
            (
                CatalogError::OutOfRange {
                    metric: s(),
                    value: 0.0,
                    min: 0.0,
                    max: 0.0,
                },
                "OUT_OF_RANGE",
            ),
            (
                CatalogError::InvalidCategory {
                    metric: s(),
                    category: s(),
                },
                "INVALID_CATEGORY",
            ),
            (
                CatalogError::NonFinite {
                    metric: s(),
                    value: f64::NAN,
                },
                "NON_FINITE_VALUE",
            ),
            (CatalogError::Invalid(s()), "INVALID_CATALOG"),
        ];
        for (e, code) in cases {
            assert_eq!(e.code(), code);
        }
    }

    #[test]
    fn non_finite_values_and_overflow_are_refused() {
        let m = Catalog::builtin().metric("WEIGHT").unwrap();
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(
                m.to_canonical(v, "kg").unwrap_err().code(),
                "NON_FINITE_VALUE"
            );
            assert_eq!(
                m.from_canonical(v, "lb").unwrap_err().code(),
                "NON_FINITE_VALUE"
            );
            assert_eq!(m.check_range(v).unwrap_err().code(), "NON_FINITE_VALUE");
        }
        let d = Catalog::builtin().metric("DISTANCE_CYCLING").unwrap();
        assert_eq!(
            d.to_canonical(f64::MAX, "km").unwrap_err().code(),
            "NON_FINITE_VALUE"
        );
    }

    #[test]
    fn range_bounds_are_inclusive() {
        let m = Catalog::builtin().metric("HEART_RATE").unwrap();
        assert!(m.check_range(20.0).is_ok());
        assert!(m.check_range(300.0).is_ok());
        assert_eq!(
            m.check_range(300.5),
            Err(CatalogError::OutOfRange {
                metric: "HEART_RATE".into(),
                value: 300.5,
                min: 20.0,
                max: 300.0
            })
        );
        assert!(m.check_range(19.99).is_err());
    }
}
