//! Tests of the metric catalog through its public API: known conversions for every
//! accepted unit of every metric, refusals, property tests, and bad catalog files.
//!
//! Tolerance: two numbers agree when |a - b| <= 1e-9 * max(1, |a|, |b|), i.e. 1e-9
//! relative, with an absolute floor of 1e-9 near zero (where a temperature offset makes
//! relative error meaningless). Expected values below were computed independently with
//! exact decimal arithmetic, not with the catalog's factors.

use std::collections::{BTreeSet, HashSet};

use proptest::prelude::*;
use pulseline_schemas::catalog::{Catalog, CatalogError, ValueKind};

const TOL: f64 = 1e-9;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= TOL * 1f64.max(a.abs()).max(b.abs())
}

/// (metric, unit, value in unit, expected canonical value)
const KNOWN: &[(&str, &str, f64, f64)] = &[
    ("STEPS", "count", 8421.0, 8421.0),
    ("DISTANCE_WALKING_RUNNING", "m", 420.5, 420.5),
    ("DISTANCE_WALKING_RUNNING", "km", 42.195, 42195.0),
    ("DISTANCE_WALKING_RUNNING", "mi", 3.1, 4988.9664),
    ("DISTANCE_WALKING_RUNNING", "ft", 10000.0, 3048.0),
    ("DISTANCE_WALKING_RUNNING", "yd", 100.0, 91.44),
    ("DISTANCE_CYCLING", "m", 12.0, 12.0),
    ("DISTANCE_CYCLING", "km", 160.0, 160000.0),
    ("DISTANCE_CYCLING", "mi", 100.0, 160934.4),
    ("DISTANCE_CYCLING", "ft", 1.0, 0.3048),
    ("DISTANCE_CYCLING", "yd", 1760.0, 1609.344),
    ("ACTIVE_ENERGY", "kcal", 512.5, 512.5),
    ("ACTIVE_ENERGY", "Cal", 250.0, 250.0),
    ("ACTIVE_ENERGY", "kJ", 4184.0, 1000.0),
    ("ACTIVE_ENERGY", "kJ", 1000.0, 239.005_736_137_667_3),
    ("BASAL_ENERGY", "kcal", 1650.0, 1650.0),
    ("BASAL_ENERGY", "Cal", 1.0, 1.0),
    ("BASAL_ENERGY", "kJ", 418.4, 100.0),
    ("FLIGHTS_CLIMBED", "count", 12.0, 12.0),
    ("EXERCISE_MINUTES", "min", 30.0, 30.0),
    ("EXERCISE_MINUTES", "s", 90.0, 1.5),
    ("EXERCISE_MINUTES", "h", 1.5, 90.0),
    ("EXERCISE_MINUTES", "hr", 2.0, 120.0),
    ("STAND_HOURS", "count", 1.0, 1.0),
    ("MINDFUL_MINUTES", "min", 10.0, 10.0),
    ("MINDFUL_MINUTES", "s", 300.0, 5.0),
    ("MINDFUL_MINUTES", "h", 0.25, 15.0),
    ("MINDFUL_MINUTES", "hr", 1.0, 60.0),
    ("HEART_RATE", "count/min", 72.0, 72.0),
    ("HEART_RATE", "bpm", 58.0, 58.0),
    ("HEART_RATE", "count/s", 1.2, 72.0),
    ("RESTING_HEART_RATE", "count/min", 55.0, 55.0),
    ("RESTING_HEART_RATE", "bpm", 61.0, 61.0),
    ("RESTING_HEART_RATE", "count/s", 1.0, 60.0),
    ("WALKING_HEART_RATE_AVERAGE", "count/min", 98.0, 98.0),
    ("WALKING_HEART_RATE_AVERAGE", "bpm", 101.0, 101.0),
    ("WALKING_HEART_RATE_AVERAGE", "count/s", 1.75, 105.0),
    ("HEART_RATE_VARIABILITY_SDNN", "ms", 45.0, 45.0),
    ("HEART_RATE_VARIABILITY_SDNN", "s", 0.045, 45.0),
    ("RESPIRATORY_RATE", "count/min", 14.0, 14.0),
    ("RESPIRATORY_RATE", "count/s", 0.25, 15.0),
    ("OXYGEN_SATURATION", "%", 97.0, 97.0),
    ("OXYGEN_SATURATION", "fraction", 0.97, 97.0),
    ("VO2_MAX", "mL/kg/min", 42.3, 42.3),
    ("VO2_MAX", "ml/(kg*min)", 38.1, 38.1),
    ("VO2_MAX", "mL/(kg*min)", 51.0, 51.0),
    ("BODY_TEMPERATURE", "degC", 36.6, 36.6),
    ("BODY_TEMPERATURE", "degF", 98.6, 37.0),
    ("BODY_TEMPERATURE", "degF", 100.4, 38.0),
    ("BODY_TEMPERATURE", "degF", 97.0, 36.111_111_111_111_11),
    ("BODY_TEMPERATURE", "degF", 212.0, 100.0),
    ("BODY_TEMPERATURE", "degF", -40.0, -40.0),
    ("BODY_TEMPERATURE", "K", 310.15, 37.0),
    ("WRIST_TEMPERATURE", "degC", 34.2, 34.2),
    ("WRIST_TEMPERATURE", "degF", 32.0, 0.0),
    ("WRIST_TEMPERATURE", "K", 309.65, 36.5),
    ("BLOOD_PRESSURE_SYSTOLIC", "mmHg", 120.0, 120.0),
    (
        "BLOOD_PRESSURE_SYSTOLIC",
        "kPa",
        16.0,
        120.009_852_135_305_01,
    ),
    ("BLOOD_PRESSURE_SYSTOLIC", "kPa", 13.3322387415, 100.0),
    ("BLOOD_PRESSURE_DIASTOLIC", "mmHg", 80.0, 80.0),
    (
        "BLOOD_PRESSURE_DIASTOLIC",
        "kPa",
        10.666,
        80.001_567_679_697_7,
    ),
    ("BLOOD_GLUCOSE", "mg/dL", 95.0, 95.0),
    ("BLOOD_GLUCOSE", "mmol/L", 5.5, 99.0858),
    ("BLOOD_GLUCOSE", "mmol/L", 7.8, 140.52168),
    ("WEIGHT", "kg", 70.0, 70.0),
    ("WEIGHT", "g", 3500.0, 3.5),
    ("WEIGHT", "lb", 150.0, 68.0388555),
    ("WEIGHT", "oz", 16.0, 0.45359237),
    ("WEIGHT", "st", 12.0, 76.20351816),
    ("HEIGHT", "m", 1.75, 1.75),
    ("HEIGHT", "cm", 180.0, 1.8),
    ("HEIGHT", "in", 70.0, 1.778),
    ("HEIGHT", "ft", 5.5, 1.6764),
    ("BMI", "kg/m2", 22.9, 22.9),
    ("BMI", "count", 31.2, 31.2),
    ("BODY_FAT", "%", 18.5, 18.5),
    ("BODY_FAT", "fraction", 0.225, 22.5),
    ("LEAN_BODY_MASS", "kg", 58.0, 58.0),
    ("LEAN_BODY_MASS", "g", 58000.0, 58.0),
    ("LEAN_BODY_MASS", "lb", 1.0, 0.45359237),
    ("LEAN_BODY_MASS", "oz", 8.0, 0.226796185),
    ("LEAN_BODY_MASS", "st", 11.5, 73.02837157),
    ("WATER", "mL", 250.0, 250.0),
    ("WATER", "L", 1.5, 1500.0),
    ("WATER", "fl_oz_us", 8.0, 236.5882365),
    ("WATER", "fl oz", 1.0, 29.5735295625),
    ("CAFFEINE", "mg", 95.0, 95.0),
    ("CAFFEINE", "g", 0.2, 200.0),
    ("SLEEP_STAGE", "count", 1.0, 1.0),
    ("WORKOUT", "count", 1.0, 1.0),
];

/// Units a careless client might send, each refused for the metric.
const BAD_UNITS: &[(&str, &str)] = &[
    ("HEART_RATE", "kg"),
    ("HEART_RATE", "BPM"),
    ("WEIGHT", "LB"),
    ("WEIGHT", "Kg"),
    ("WEIGHT", "lbs"),
    ("STEPS", ""),
    ("STEPS", " count"),
    ("ACTIVE_ENERGY", "cal"),
    ("BODY_TEMPERATURE", "F"),
    ("BODY_TEMPERATURE", "degf"),
    ("BLOOD_GLUCOSE", "mmol/l"),
    ("BLOOD_GLUCOSE", "mg/dl"),
    ("HEIGHT", "mi"),
    ("WATER", "ml"),
    ("OXYGEN_SATURATION", "percent"),
    ("HEART_RATE_VARIABILITY_SDNN", "min"),
    ("SLEEP_STAGE", "min"),
    ("WORKOUT", "kcal"),
];

fn all_pairs() -> Vec<(String, String)> {
    Catalog::builtin()
        .metrics()
        .flat_map(|m| {
            m.accepted_units()
                .map(|u| (m.code().to_owned(), u.to_owned()))
        })
        .collect()
}

#[test]
fn known_values_convert_for_every_unit_of_every_metric() {
    let catalog = Catalog::builtin();
    for &(code, unit, value, expected) in KNOWN {
        let m = catalog.metric(code).unwrap();
        let got = m.to_canonical(value, unit).unwrap();
        assert!(
            close(got, expected),
            "{code}: {value} {unit} -> {got}, expected {expected}"
        );
        let back = m.from_canonical(expected, unit).unwrap();
        assert!(
            close(back, value),
            "{code}: {expected} canonical -> {back} {unit}, expected {value}"
        );
    }
}

#[test]
fn the_known_value_table_covers_every_accepted_unit() {
    let covered: BTreeSet<(String, String)> = KNOWN
        .iter()
        .map(|&(m, u, _, _)| (m.to_owned(), u.to_owned()))
        .collect();
    let missing: Vec<_> = all_pairs()
        .into_iter()
        .filter(|p| !covered.contains(p))
        .collect();
    assert!(
        missing.is_empty(),
        "no known conversion tested for {missing:?}"
    );
}

#[test]
fn every_metric_has_a_canonical_unit_and_a_conversion_table() {
    let mut count = 0;
    for m in Catalog::builtin().metrics() {
        count += 1;
        assert!(!m.canonical_unit().is_empty(), "{}", m.code());
        assert!(m.accepted_units().count() >= 1, "{}", m.code());
        assert!(
            m.accepted_units().any(|u| u == m.canonical_unit()),
            "{}",
            m.code()
        );
        assert_eq!(
            m.to_canonical(12.5, m.canonical_unit()),
            Ok(12.5),
            "{}",
            m.code()
        );
    }
    assert!(count >= 30, "only {count} metrics");
}

#[test]
fn bad_units_give_unit_mismatch_naming_metric_and_unit() {
    let catalog = Catalog::builtin();
    let mismatch = |metric: &str, unit: &str| {
        Err(CatalogError::UnitMismatch {
            metric: metric.to_owned(),
            unit: unit.to_owned(),
        })
    };
    for &(code, unit) in BAD_UNITS {
        let m = catalog.metric(code).unwrap();
        assert_eq!(
            m.to_canonical(1.0, unit),
            mismatch(code, unit),
            "{code} {unit:?}"
        );
        assert_eq!(
            m.from_canonical(1.0, unit),
            mismatch(code, unit),
            "{code} {unit:?}"
        );
    }
    // Every unit some other metric accepts is refused by a metric that does not list it.
    let every_unit: HashSet<String> = all_pairs().into_iter().map(|(_, u)| u).collect();
    for m in catalog.metrics() {
        let own: HashSet<&str> = m.accepted_units().collect();
        for unit in every_unit.iter().filter(|u| !own.contains(u.as_str())) {
            assert_eq!(m.to_canonical(1.0, unit), mismatch(m.code(), unit));
        }
    }
    let err = catalog
        .metric("HEART_RATE")
        .unwrap()
        .to_canonical(1.0, "kg")
        .unwrap_err();
    assert_eq!(err.code(), "UNIT_MISMATCH");
}

#[test]
fn unknown_metrics_are_refused() {
    for code in [
        "heart_rate",
        "HEARTRATE",
        "",
        "STEPS ",
        "BLOOD_PRESSURE",
        "SLEEP",
    ] {
        let err = Catalog::builtin().metric(code).unwrap_err();
        assert_eq!(
            err,
            CatalogError::UnknownMetric {
                metric: code.to_owned()
            }
        );
        assert_eq!(err.code(), "UNKNOWN_METRIC");
    }
}

#[test]
fn out_of_range_values_are_refused_in_canonical_units() {
    let catalog = Catalog::builtin();
    let cases: &[(&str, f64, &str, bool)] = &[
        ("HEART_RATE", 72.0, "bpm", true),
        ("HEART_RATE", 6.0, "count/s", false),    // 360/min
        ("BLOOD_GLUCOSE", 55.0, "mmol/L", true),  // 990.858 mg/dL
        ("BLOOD_GLUCOSE", 56.0, "mmol/L", false), // 1008.87 mg/dL
        ("WEIGHT", 1400.0, "lb", true),           // 635.03 kg
        ("WEIGHT", 1440.0, "lb", false),          // 653.17 kg
        ("BODY_TEMPERATURE", 98.6, "degF", true),
        ("BODY_TEMPERATURE", 37.0, "degF", false), // 2.8 degC: a Celsius value sent as degF
        ("OXYGEN_SATURATION", 0.97, "%", false),   // a HealthKit ratio sent as %
        ("OXYGEN_SATURATION", 0.97, "fraction", true),
        ("STEPS", -1.0, "count", false),
        ("STEPS", 100_001.0, "count", false),
    ];
    for &(code, value, unit, ok) in cases {
        let m = catalog.metric(code).unwrap();
        let canonical = m.to_canonical(value, unit).unwrap();
        let result = m.check_range(canonical);
        assert_eq!(result.is_ok(), ok, "{code} {value} {unit}: {result:?}");
        if let Err(e) = result {
            assert_eq!(e.code(), "OUT_OF_RANGE");
        }
    }
}

#[test]
fn categories_are_checked() {
    let catalog = Catalog::builtin();
    let workout = catalog.metric("WORKOUT").unwrap();
    for c in [
        "running", "walking", "cycling", "swimming", "strength", "yoga", "hiit", "other",
    ] {
        assert_eq!(workout.canonical_category(c), Ok(c));
    }
    assert_eq!(
        workout.canonical_category("high_intensity_interval_training"),
        Ok("hiit")
    );
    assert_eq!(
        workout.check_category("Running"),
        Err(CatalogError::InvalidCategory {
            metric: "WORKOUT".into(),
            category: "Running".into()
        })
    );
    let sleep = catalog.metric("SLEEP_STAGE").unwrap();
    assert_eq!(sleep.canonical_category("light"), Ok("core"));
    assert_eq!(
        sleep.check_category("nap").unwrap_err().code(),
        "INVALID_CATEGORY"
    );
    for m in catalog
        .metrics()
        .filter(|m| m.kind() == ValueKind::Category)
    {
        assert!(!m.categories().is_empty(), "{}", m.code());
        for c in m.categories() {
            assert!(m.check_category(c).is_ok());
        }
    }
}

// --------------------------------------------------------------------------------------
// Property tests. Each case runs over every (metric, unit) pair so none is left to luck.
// --------------------------------------------------------------------------------------

proptest! {
    #[test]
    fn round_trip_through_every_unit(x in -1.0e6f64..1.0e6) {
        let catalog = Catalog::builtin();
        for (code, unit) in all_pairs() {
            let m = catalog.metric(&code).unwrap();
            let there = m.to_canonical(x, &unit).unwrap();
            let back = m.from_canonical(there, &unit).unwrap();
            prop_assert!(close(back, x), "{} {}: {} -> {} -> {}", code, unit, x, there, back);
            let other_way = m.to_canonical(m.from_canonical(x, &unit).unwrap(), &unit).unwrap();
            prop_assert!(close(other_way, x), "{} {}: canonical {} -> {}", code, unit, x, other_way);
        }
    }

    #[test]
    fn conversions_are_increasing(a in -1.0e6f64..1.0e6, b in -1.0e6f64..1.0e6) {
        let (x, y) = if a <= b { (a, b) } else { (b, a) };
        // Rounding may merge values an ulp apart, so strictness is only required for a
        // gap the tolerance can see; non-decreasing must hold always.
        let clearly_apart = y - x > TOL * 1f64.max(x.abs()).max(y.abs());
        let catalog = Catalog::builtin();
        for (code, unit) in all_pairs() {
            let m = catalog.metric(&code).unwrap();
            for (fx, fy) in [
                (m.to_canonical(x, &unit).unwrap(), m.to_canonical(y, &unit).unwrap()),
                (m.from_canonical(x, &unit).unwrap(), m.from_canonical(y, &unit).unwrap()),
            ] {
                prop_assert!(fx <= fy, "{} {}: f({}) = {} > f({}) = {}", code, unit, x, fx, y, fy);
                if clearly_apart {
                    prop_assert!(fx < fy, "{} {}: f({}) = f({}) = {}", code, unit, x, y, fx);
                }
            }
        }
    }

    /// A value in any unit is in range exactly when it lies between the range ends
    /// converted to that unit (away from the ends, where the tolerance decides).
    #[test]
    fn range_check_is_consistent_after_conversion(t in -0.5f64..1.5) {
        prop_assume!(t.abs() > 1e-6 && (t - 1.0).abs() > 1e-6);
        let inside = (0.0..=1.0).contains(&t);
        let catalog = Catalog::builtin();
        for (code, unit) in all_pairs() {
            let m = catalog.metric(&code).unwrap();
            let Some((min, max)) = m.range() else { continue };
            let lo = m.from_canonical(min, &unit).unwrap();
            let hi = m.from_canonical(max, &unit).unwrap();
            let value = lo + t * (hi - lo);
            let canonical = m.to_canonical(value, &unit).unwrap();
            prop_assert_eq!(
                m.check_range(canonical).is_ok(), inside,
                "{} {}: {} {} -> {} canonical, range [{}, {}]", code, unit, value, unit, canonical, min, max
            );
        }
    }
}

// --------------------------------------------------------------------------------------
// Bad catalog files.
// --------------------------------------------------------------------------------------

const VALID: &str = r#"
[unit_tables.mass]
kg = 1
lb = 0.45359237

[unit_tables.count]
count = 1

[[metric]]
code = "WEIGHT"
name = "Body weight"
kind = "quantity"
canonical_unit = "kg"
units = "mass"
aggregation = "latest"
range = [0.5, 650]
max_interval_seconds = 86400
priority_resolved = false

[[metric]]
code = "SLEEP_STAGE"
name = "Sleep stage"
kind = "category"
canonical_unit = "count"
units = "count"
aggregation = "discrete"
max_interval_seconds = 86400
priority_resolved = false
categories = ["core", "deep"]
category_aliases = { light = "core" }
"#;

fn refused(text: &str) -> String {
    match Catalog::from_toml(text) {
        Ok(_) => panic!("catalog accepted:\n{text}"),
        Err(CatalogError::Invalid(msg)) => msg,
        Err(other) => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn the_base_of_the_bad_catalogs_is_valid() {
    let c = Catalog::from_toml(VALID).unwrap();
    assert_eq!(c.metrics().count(), 2);
    assert!(close(
        c.metric("WEIGHT").unwrap().to_canonical(2.0, "lb").unwrap(),
        0.90718474
    ));
}

#[test]
fn bad_catalogs_are_refused_with_a_specific_error() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "aggregation = \"latest\"",
            "aggregation = \"average\"",
            "unknown variant `average`",
        ),
        (
            "kind = \"quantity\"",
            "kind = \"number\"",
            "unknown variant `number`",
        ),
        (
            "canonical_unit = \"kg\"",
            "canonical_unit = \"g\"",
            "canonical unit `g` is not in unit table `mass`",
        ),
        (
            "kg = 1\n",
            "kg = 1000\n",
            "canonical unit `kg` must have factor 1",
        ),
        (
            "range = [0.5, 650]",
            "range = [650, 0.5]",
            "range min 650 > max 0.5",
        ),
        (
            "code = \"SLEEP_STAGE\"",
            "code = \"WEIGHT\"",
            "duplicate metric code `WEIGHT`",
        ),
        (
            "units = \"mass\"",
            "units = \"masses\"",
            "unit table `masses` does not exist",
        ),
        (
            "lb = 0.45359237",
            "lb = -0.45359237",
            "unit `lb`: factor must be finite and > 0",
        ),
        (
            "lb = 0.45359237",
            "lb = { factor = 1, divisor = 0 }",
            "divisor must be finite and > 0",
        ),
        (
            "lb = 0.45359237",
            "lb = { factr = 0.45 }",
            "a number (factor) or a table",
        ),
        (
            "categories = [\"core\", \"deep\"]",
            "categories = []",
            "a category metric needs categories",
        ),
        (
            "categories = [\"core\", \"deep\"]",
            "categories = [\"core\", \"core\"]",
            "duplicate category `core`",
        ),
        (
            "light = \"core\"",
            "light = \"rem\"",
            "alias `light` points to unknown category `rem`",
        ),
        (
            "range = [0.5, 650]\n",
            "",
            "a quantity metric needs a plausible range",
        ),
        (
            "max_interval_seconds = 86400\npriority_resolved = false\ncategories",
            "max_interval_seconds = 86400\npriority_resolved = false\nrange = [0, 1]\ncategories",
            "a category metric has no value, so no range",
        ),
        (
            "max_interval_seconds = 86400\npriority_resolved = false\n\n",
            "max_interval_seconds = 0\npriority_resolved = false\n\n",
            "max_interval_seconds must be > 0",
        ),
        (
            "aggregation = \"latest\"",
            "aggregation = \"cumulative_sum\"",
            "must be priority_resolved",
        ),
        (
            "code = \"WEIGHT\"",
            "code = \"weight\"",
            "code must be UPPER_SNAKE",
        ),
        (
            "name = \"Body weight\"",
            "name = \"Body weight\"\ncolour = \"red\"",
            "unknown field `colour`",
        ),
    ];
    for &(from, to, expected) in cases {
        assert!(
            VALID.contains(from),
            "test bug: `{from}` not in the base catalog"
        );
        let text = VALID.replacen(from, to, 1);
        let msg = refused(&text);
        assert!(
            msg.contains(expected),
            "replacing `{from}` by `{to}`: got `{msg}`, expected `{expected}`"
        );
    }
    assert!(refused("").contains("no [[metric]]"));
    assert!(refused("this is not toml").contains("expected"));
}
