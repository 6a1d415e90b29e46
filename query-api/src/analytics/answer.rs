//! A query's batches as the API answers them: columns with their Arrow type names, and
//! rows as JSON arrays. Integers and floats stay numbers (non-finite floats become null),
//! booleans stay booleans; everything else (text, dates, times, decimals, nested values)
//! is Arrow's display form, so an answer never depends on a hand-written formatter.

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type, UInt64Type};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::{SqlError, SqlResult};

/// One column of an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct SqlColumn {
    pub name: String,
    /// The Arrow type, e.g. `Int64`, `Float64`, `Utf8`, `Date32`, `Timestamp(µs, "UTC")`.
    #[serde(rename = "type")]
    pub data_type: String,
}

/// The answer of `POST /v1/analytics/sql`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SqlAnswer {
    pub columns: Vec<SqlColumn>,
    /// One array per row, in column order.
    #[schema(value_type = Vec<Vec<Object>>)]
    pub rows: Vec<Vec<Value>>,
    /// True when the query had more rows than the row limit.
    pub truncated: bool,
    pub elapsed_ms: u64,
}

impl SqlAnswer {
    pub fn from_result(result: &SqlResult) -> Result<Self, SqlError> {
        let columns = result
            .schema
            .fields()
            .iter()
            .map(|f| SqlColumn {
                name: f.name().clone(),
                data_type: type_name(f.data_type()),
            })
            .collect();
        let mut rows = Vec::with_capacity(result.rows);
        for batch in &result.batches {
            append_rows(batch, &mut rows)?;
        }
        Ok(Self {
            columns,
            rows,
            truncated: result.truncated,
            elapsed_ms: u64::try_from(result.elapsed.as_millis()).unwrap_or(u64::MAX),
        })
    }
}

/// The column type an answer names: Arrow's, except that the string encodings the engine
/// uses inside are all `Utf8` to a caller.
fn type_name(t: &DataType) -> String {
    match t {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8.to_string(),
        other => other.to_string(),
    }
}

/// Keeps the first `max_rows` rows; says how many were kept and whether any were cut.
pub(super) fn cut(batches: Vec<RecordBatch>, max_rows: usize) -> (Vec<RecordBatch>, usize, bool) {
    let mut kept = Vec::with_capacity(batches.len());
    let mut rows = 0;
    let mut truncated = false;
    for batch in batches {
        let room = max_rows - rows;
        if batch.num_rows() > room {
            truncated = true;
            if room > 0 {
                kept.push(batch.slice(0, room));
                rows += room;
            }
            break;
        }
        rows += batch.num_rows();
        kept.push(batch);
    }
    (kept, rows, truncated)
}

fn append_rows(batch: &RecordBatch, rows: &mut Vec<Vec<Value>>) -> Result<(), SqlError> {
    let columns = batch
        .columns()
        .iter()
        .map(|c| column_values(c.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    for i in 0..batch.num_rows() {
        rows.push(columns.iter().map(|c| c[i].clone()).collect());
    }
    Ok(())
}

fn column_values(array: &dyn Array) -> Result<Vec<Value>, SqlError> {
    let internal = |e: datafusion::arrow::error::ArrowError| SqlError::Execution(e.to_string());
    let values = match array.data_type() {
        DataType::Boolean => {
            let a = array.as_boolean();
            (0..a.len())
                .map(|i| a.is_valid(i).then(|| Value::Bool(a.value(i))))
                .map(|v| v.unwrap_or(Value::Null))
                .collect()
        }
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32 => {
            let cast = cast(array, &DataType::Int64).map_err(internal)?;
            let a = cast.as_primitive::<Int64Type>();
            a.iter()
                .map(|v| v.map_or(Value::Null, Value::from))
                .collect()
        }
        DataType::UInt64 => array
            .as_primitive::<UInt64Type>()
            .iter()
            .map(|v| v.map_or(Value::Null, Value::from))
            .collect(),
        DataType::Float16 | DataType::Float32 | DataType::Float64 => {
            let cast = cast(array, &DataType::Float64).map_err(internal)?;
            let a = cast.as_primitive::<Float64Type>();
            a.iter()
                .map(|v| {
                    v.and_then(serde_json::Number::from_f64)
                        .map_or(Value::Null, Value::Number)
                })
                .collect()
        }
        _ => {
            let options = FormatOptions::default().with_null("");
            let formatter = ArrayFormatter::try_new(array, &options).map_err(internal)?;
            (0..array.len())
                .map(|i| {
                    if array.is_valid(i) {
                        Value::String(formatter.value(i).to_string())
                    } else {
                        Value::Null
                    }
                })
                .collect()
        }
    };
    Ok(values)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use datafusion::arrow::array::{
        BooleanArray, Date32Array, Float64Array, Int32Array, StringArray, UInt64Array,
    };
    use datafusion::arrow::datatypes::{Field, Schema};
    use serde_json::json;

    use super::*;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("i", DataType::Int32, true),
            Field::new("u", DataType::UInt64, true),
            Field::new("f", DataType::Float64, true),
            Field::new("b", DataType::Boolean, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("d", DataType::Date32, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int32Array::from(vec![Some(1), None, Some(-3)])),
                Arc::new(UInt64Array::from(vec![Some(u64::MAX), Some(0), None])),
                Arc::new(Float64Array::from(vec![Some(1.5), Some(f64::NAN), None])),
                Arc::new(BooleanArray::from(vec![Some(true), None, Some(false)])),
                Arc::new(StringArray::from(vec![Some("a"), Some(""), None])),
                Arc::new(Date32Array::from(vec![Some(20_454), None, Some(0)])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn values_keep_their_json_kind() {
        let b = batch();
        let (batches, rows, truncated) = cut(vec![b.clone()], 10);
        let answer = SqlAnswer::from_result(&SqlResult {
            schema: b.schema(),
            batches,
            rows,
            truncated,
            elapsed: Duration::from_millis(3),
        })
        .unwrap();
        assert_eq!(answer.columns[5].data_type, "Date32");
        assert_eq!(
            serde_json::to_value(&answer.rows).unwrap(),
            json!([
                [1, u64::MAX, 1.5, true, "a", "2026-01-01"],
                [null, 0, null, null, "", null],
                [-3, null, null, false, null, "1970-01-01"],
            ])
        );
        assert!(!answer.truncated);
        assert_eq!(answer.elapsed_ms, 3);
    }

    #[test]
    fn cut_keeps_the_first_rows_across_batches() {
        let b = batch();
        let (kept, rows, truncated) = cut(vec![b.clone(), b.clone()], 4);
        assert_eq!((rows, truncated), (4, true));
        assert_eq!(kept.iter().map(|b| b.num_rows()).sum::<usize>(), 4);
        let (_, rows, truncated) = cut(vec![b.clone(), b], 6);
        assert_eq!((rows, truncated), (6, false));
    }

    #[test]
    fn string_encodings_are_named_utf8() {
        assert_eq!(type_name(&DataType::Utf8View), "Utf8");
        assert_eq!(type_name(&DataType::LargeUtf8), "Utf8");
        assert_eq!(type_name(&DataType::Date32), "Date32");
    }
}
