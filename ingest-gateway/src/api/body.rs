//! Reading a request body: content type, size limit (after gzip decompression, which the
//! decompression layer does while we read), JSON syntax, then the typed schema with a
//! message that names the field and never echoes a value.

use axum::body::Body;
use axum::http::{HeaderMap, header};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::GatewayError;
use crate::hashing::Json;

/// Checks the media type, then reads at most `limit` bytes (decompressed) and parses JSON.
/// The top level must be an object.
pub async fn read_json_object(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Value, GatewayError> {
    let bytes = read_json_bytes(headers, body, limit).await?;
    let value: Value = serde_json::from_slice(&bytes).map_err(malformed)?;
    if !value.is_object() {
        return Err(not_an_object());
    }
    Ok(value)
}

/// The checks of [`read_json_object`] up to the JSON syntax: media type, encoding, size
/// limit, not empty. The bytes are then parsed with [`parse_document`].
pub async fn read_json_bytes(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Vec<u8>, GatewayError> {
    check_content_type(headers)?;
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING) {
        // The decompression layer removes the gzip header it handles; anything left is
        // an encoding we do not speak.
        let shown = encoding
            .to_str()
            .unwrap_or("?")
            .chars()
            .take(32)
            .collect::<String>();
        return Err(GatewayError::UnsupportedMediaType(format!(
            "Content-Encoding `{shown}` is not supported; send identity or gzip"
        )));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    let bytes = read_limited(body, limit).await?;
    if bytes.is_empty() {
        return Err(GatewayError::invalid_body("the body is empty"));
    }
    Ok(bytes)
}

/// Syntax errors name a position, never content.
fn malformed(e: serde_json::Error) -> GatewayError {
    GatewayError::invalid_body(format!("malformed JSON: {e}"))
}

fn not_an_object() -> GatewayError {
    GatewayError::invalid_body("the body must be a JSON object")
}

/// Parses the body for hashing and counting (strings borrowed from `bytes`), with the
/// errors of [`read_json_object`]: same syntax check, the top level must be an object.
pub fn parse_document(bytes: &[u8]) -> Result<Json<'_>, GatewayError> {
    let doc: Json<'_> = serde_json::from_slice(bytes).map_err(malformed)?;
    if !matches!(doc, Json::Object(_)) {
        return Err(not_an_object());
    }
    Ok(doc)
}

/// Refuses more than `limit` items across the named top-level arrays, before the typed
/// parse does any work on them.
pub fn check_document_item_count(
    doc: &Json<'_>,
    arrays: &[&str],
    limit: usize,
) -> Result<(), GatewayError> {
    let items: usize = arrays
        .iter()
        .filter_map(|a| match doc.get(a)? {
            Json::Array(items) => Some(items.len()),
            _ => None,
        })
        .sum();
    if items > limit {
        Err(GatewayError::TooManyItems { items, limit })
    } else {
        Ok(())
    }
}

/// The typed body straight from the bytes (no intermediate `Value`). Any error, and any
/// body with a repeated member name (`exact` is set: a `Value` keeps the last one where a
/// typed parse refuses the repetition), goes through [`parse`] of a `Value` instead, so the
/// answers, errors and named fields included, are exactly those of the `Value` path.
pub fn parse_bytes<T: DeserializeOwned>(bytes: &[u8], exact: bool) -> Result<T, GatewayError> {
    if !exact {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        if let Ok(typed) = serde_path_to_error::deserialize(&mut de)
            && de.end().is_ok()
        {
            return Ok(typed);
        }
    }
    let value: Value = serde_json::from_slice(bytes).map_err(malformed)?;
    parse(value)
}

fn check_content_type(headers: &HeaderMap) -> Result<(), GatewayError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Err(GatewayError::UnsupportedMediaType(
            "Content-Type must be application/json".into(),
        ));
    };
    let essence = ct
        .to_str()
        .ok()
        .and_then(|s| s.split(';').next())
        .map(str::trim)
        .unwrap_or_default();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(GatewayError::UnsupportedMediaType(
            "Content-Type must be application/json".into(),
        ))
    }
}

/// Collects the (decompressed) body, refusing it as soon as it passes `limit`, so a gzip
/// bomb costs at most `limit` bytes of memory.
async fn read_limited(body: Body, limit: usize) -> Result<Vec<u8>, GatewayError> {
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            tracing::debug!(error = %e, "reading request body");
            GatewayError::invalid_body(
                "the body could not be read (corrupt gzip data or interrupted upload)",
            )
        })?;
        if buf.len() + chunk.len() > limit {
            return Err(GatewayError::BodyTooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// The typed body, or 400 INVALID_BODY naming the field (`samples[3].startAt`).
pub fn parse<T: DeserializeOwned>(value: Value) -> Result<T, GatewayError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        let message = sanitize(&e.inner().to_string());
        if field.is_empty() || field == "." {
            GatewayError::invalid_body(message)
        } else {
            GatewayError::invalid_field(field.clone(), format!("{field}: {message}"))
        }
    })
}

/// serde's messages quote the offending value ("invalid type: string \"72\", expected
/// f64"); keep the rule, drop the value. Messages of our own parsers carry no values.
fn sanitize(message: &str) -> String {
    for prefix in [
        "invalid type",
        "invalid value",
        "unknown variant",
        "invalid length",
    ] {
        if message.starts_with(prefix) {
            return match message.find(", expected ") {
                Some(pos) => format!(
                    "{prefix}, expected {}",
                    &message[pos + ", expected ".len()..]
                ),
                None => prefix.to_owned(),
            };
        }
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let name: String = rest
            .split('`')
            .next()
            .unwrap_or_default()
            .chars()
            .take(64)
            .collect();
        return format!("unknown field `{name}`");
    }
    message.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_drops_values() {
        assert_eq!(
            sanitize("invalid type: string \"72 bpm\", expected f64"),
            "invalid type, expected f64"
        );
        assert_eq!(
            sanitize("unknown variant `iwatch`, expected one of `apple_watch`, `iphone`"),
            "unknown variant, expected one of `apple_watch`, `iphone`"
        );
        assert_eq!(
            sanitize("unknown field `tzOffset`, expected one of `a`"),
            "unknown field `tzOffset`"
        );
        assert_eq!(
            sanitize("missing field `startAt`"),
            "missing field `startAt`"
        );
    }
}
