//! Hashes: the request payload hash (idempotency) and the content hash of a stored item
//! (duplicate vs. correction).
//!
//! The payload hash is SHA-256 over the RFC 8785 (JCS) canonical JSON of the body without
//! its top-level `payloadHash` member. JCS numbers are IEEE doubles, so every number is
//! read as f64 before serialising: `72`, `72.0` and `7.2e1` hash alike, and an integer
//! beyond 2^53 hashes as the double it denotes (as in any JCS implementation).
//!
//! The canonical form is written directly from the parsed `serde_json::Value` (members
//! sorted by UTF-16 code units, numbers in ECMAScript form via ryu-js, strings with JSON's
//! minimal escaping) because serde_jcs re-parses every member name and buffers every
//! value, several milliseconds per 500-sample batch; a property test checks this writer
//! against serde_jcs on arbitrary JSON.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The member a client may send with its own hash; excluded from the hash.
pub const PAYLOAD_HASH_FIELD: &str = "payloadHash";

/// A SHA-256 digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Hash(pub [u8; 32]);

impl Sha256Hash {
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Compares with a client-supplied hex digest (case-insensitive).
    pub fn matches_hex(&self, hex_digest: &str) -> bool {
        hex::decode(hex_digest.trim()).is_ok_and(|bytes| bytes == self.0)
    }
}

/// A value that has no canonical form (a number that is not a finite double).
#[derive(Debug, thiserror::Error)]
#[error("JSON value has no RFC 8785 form: {0}")]
pub struct CanonicalError(&'static str);

/// SHA-256 of the canonical JSON of `body` without its top-level `payloadHash`.
pub fn payload_hash(body: &Value) -> Result<Sha256Hash, CanonicalError> {
    let canonical = canonical_json(body)?;
    Ok(Sha256Hash(Sha256::digest(&canonical).into()))
}

/// The RFC 8785 form of `body` without its top-level `payloadHash` (numbers as doubles).
pub fn canonical_json(body: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(4096);
    write_canonical(&mut out, body, true)?;
    Ok(out)
}

/// The canonical text of a free-form JSON value (metadata, attributes), so key order or
/// number spelling never turns a re-upload into an "update".
pub fn canonical_text(value: &Value) -> Result<String, CanonicalError> {
    let mut out = Vec::with_capacity(64);
    write_canonical(&mut out, value, false)?;
    String::from_utf8(out).map_err(|_| CanonicalError("not UTF-8"))
}

/// RFC 8785 sorts member names by their UTF-16 code units (not by UTF-8 bytes: they
/// differ for characters above U+FFFF versus U+E000..U+FFFF).
fn utf16_order(a: &str, b: &str) -> Ordering {
    // Below U+E000 (and so for ASCII) UTF-8 byte order is UTF-16 code unit order.
    if a.is_ascii() && b.is_ascii() {
        return a.as_bytes().cmp(b.as_bytes());
    }
    a.encode_utf16().cmp(b.encode_utf16())
}

fn write_canonical(out: &mut Vec<u8>, value: &Value, top: bool) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            let f = n.as_f64().ok_or(CanonicalError("number is not a double"))?;
            if !f.is_finite() {
                return Err(CanonicalError("number is not finite"));
            }
            out.extend_from_slice(ryu_js::Buffer::new().format_finite(f).as_bytes());
        }
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(out, item, false)?;
            }
            out.push(b']');
        }
        Value::Object(members) => {
            let mut sorted: Vec<(&String, &Value)> = members
                .iter()
                .filter(|(k, _)| !(top && k.as_str() == PAYLOAD_HASH_FIELD))
                .collect();
            sorted.sort_unstable_by(|a, b| utf16_order(a.0, b.0));
            out.push(b'{');
            for (i, (k, v)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(out, k);
                out.push(b':');
                write_canonical(out, v, false)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// JSON string with the minimal escaping RFC 8785 prescribes: `"`, `\`, the short forms
/// \b \t \n \f \r, other control characters as \u00xx (lowercase); nothing else.
fn write_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x09 => b"\\t",
            0x0a => b"\\n",
            0x0c => b"\\f",
            0x0d => b"\\r",
            0x00..=0x1f => &[],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// A JSON document parsed for hashing: strings borrow from the request body unless they
/// contain escapes, and objects are vectors of members (duplicates kept, in order). Far
/// fewer allocations than a `serde_json::Value` (a map node per object and a `String` per
/// member name and string value) for the same canonical form.
#[derive(Debug, Clone, PartialEq)]
pub enum Json<'a> {
    Null,
    Bool(bool),
    /// Every JSON number is hashed as the double it denotes (as `Value::as_f64` reads it).
    Number(f64),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> Json<'a> {
    /// The value of member `name` of an object (the last one if repeated, as a `Value`
    /// keeps it).
    pub fn get(&self, name: &str) -> Option<&Json<'a>> {
        match self {
            Json::Object(members) => members.iter().rev().find(|(k, _)| k == name).map(|m| &m.1),
            _ => None,
        }
    }
}

impl<'de> serde::Deserialize<'de> for Json<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> serde::de::Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(v as f64))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(v as f64))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Json<'de>, E> {
        Ok(Json::Number(v))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(v)))
    }

    fn visit_none<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Json<'de>, D::Error> {
        serde::Deserialize::deserialize(d)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8).min(64));
        while let Some(key) = map.next_key::<JsonKey<'de>>()? {
            members.push((key.0, map.next_value()?));
        }
        Ok(Json::Object(members))
    }
}

/// A member name, borrowed when it has no escapes.
struct JsonKey<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for JsonKey<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> serde::de::Visitor<'de> for KeyVisitor {
            type Value = JsonKey<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a member name")
            }

            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<JsonKey<'de>, E> {
                Ok(JsonKey(Cow::Borrowed(v)))
            }

            fn visit_str<E>(self, v: &str) -> Result<JsonKey<'de>, E> {
                Ok(JsonKey(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E>(self, v: String) -> Result<JsonKey<'de>, E> {
                Ok(JsonKey(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// The payload hash of a parsed body, equal to [`payload_hash`] of the same text parsed
/// as a `Value` (where a repeated member name keeps its last value). Sorts the members
/// of `doc` in place. Also says whether any object repeated a member name.
pub fn document_hash(doc: &mut Json<'_>) -> Result<(Sha256Hash, bool), CanonicalError> {
    let mut sink = HashSink {
        hasher: Sha256::new(),
        buf: Vec::with_capacity(HashSink::CHUNK + 256),
        duplicates: false,
    };
    write_document(&mut sink, doc, true)?;
    sink.flush();
    Ok((Sha256Hash(sink.hasher.finalize().into()), sink.duplicates))
}

/// Canonical text fed to SHA-256 in chunks, never held whole.
struct HashSink {
    hasher: Sha256,
    buf: Vec<u8>,
    duplicates: bool,
}

impl HashSink {
    const CHUNK: usize = 16 * 1024;

    fn maybe_flush(&mut self) {
        if self.buf.len() >= Self::CHUNK {
            self.flush();
        }
    }

    fn flush(&mut self) {
        self.hasher.update(&self.buf);
        self.buf.clear();
    }
}

fn write_document(
    sink: &mut HashSink,
    doc: &mut Json<'_>,
    top: bool,
) -> Result<(), CanonicalError> {
    match doc {
        Json::Null => sink.buf.extend_from_slice(b"null"),
        Json::Bool(true) => sink.buf.extend_from_slice(b"true"),
        Json::Bool(false) => sink.buf.extend_from_slice(b"false"),
        Json::Number(f) => {
            if !f.is_finite() {
                return Err(CanonicalError("number is not finite"));
            }
            sink.buf
                .extend_from_slice(ryu_js::Buffer::new().format_finite(*f).as_bytes());
        }
        Json::String(s) => write_string(&mut sink.buf, s),
        Json::Array(items) => {
            sink.buf.push(b'[');
            for (i, item) in items.iter_mut().enumerate() {
                if i > 0 {
                    sink.buf.push(b',');
                }
                write_document(sink, item, false)?;
                sink.maybe_flush();
            }
            sink.buf.push(b']');
        }
        Json::Object(members) => {
            // Stable: repeated names stay in document order, and the last one counts.
            members.sort_by(|a, b| utf16_order(&a.0, &b.0));
            sink.buf.push(b'{');
            let mut first = true;
            let n = members.len();
            for i in 0..n {
                if i + 1 < n && members[i].0 == members[i + 1].0 {
                    sink.duplicates = true;
                    continue;
                }
                let (k, v) = &mut members[i];
                if top && k.as_ref() == PAYLOAD_HASH_FIELD {
                    continue;
                }
                if !first {
                    sink.buf.push(b',');
                }
                first = false;
                write_string(&mut sink.buf, k);
                sink.buf.push(b':');
                write_document(sink, v, false)?;
                sink.maybe_flush();
            }
            sink.buf.push(b'}');
        }
    }
    Ok(())
}

/// Builds a content hash from typed fields, each tagged and length-prefixed so no two
/// different contents can produce the same byte stream.
#[derive(Debug, Default)]
pub struct ContentHasher(Sha256);

impl ContentHasher {
    pub fn new() -> Self {
        Self(Sha256::new())
    }

    pub fn str(mut self, s: &str) -> Self {
        self.0.update([1u8]);
        self.0.update((s.len() as u64).to_le_bytes());
        self.0.update(s.as_bytes());
        self
    }

    pub fn opt_str(self, s: Option<&str>) -> Self {
        match s {
            Some(s) => self.str(s),
            None => self.none(),
        }
    }

    pub fn i64(mut self, v: i64) -> Self {
        self.0.update([2u8]);
        self.0.update(v.to_le_bytes());
        self
    }

    pub fn opt_i64(self, v: Option<i64>) -> Self {
        match v {
            Some(v) => self.i64(v),
            None => self.none(),
        }
    }

    /// -0.0 and 0.0 are the same measurement.
    pub fn opt_f64(mut self, v: Option<f64>) -> Self {
        match v {
            Some(v) => {
                let v = if v == 0.0 { 0.0 } else { v };
                self.0.update([3u8]);
                self.0.update(v.to_bits().to_le_bytes());
                self
            }
            None => self.none(),
        }
    }

    fn none(mut self) -> Self {
        self.0.update([0u8]);
        self
    }

    pub fn finish(self) -> Sha256Hash {
        Sha256Hash(self.0.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// Any JSON, with strings over the whole Unicode range (control characters included).
    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            ".*".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map(".*", inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// serde_jcs writes integers as integers; JCS wants every number as a double.
    fn numbers_as_doubles(v: &Value) -> Value {
        match v {
            Value::Number(n) => {
                serde_json::Number::from_f64(n.as_f64().unwrap()).map_or(Value::Null, Value::Number)
            }
            Value::Array(a) => Value::Array(a.iter().map(numbers_as_doubles).collect()),
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| (k.clone(), numbers_as_doubles(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    proptest! {
        /// The canonical writer agrees with serde_jcs, the reference implementation.
        #[test]
        fn canonical_writer_agrees_with_serde_jcs(v in arb_json()) {
            let ours = String::from_utf8(canonical_json(&v).unwrap()).unwrap();
            let mut reference_input = numbers_as_doubles(&v);
            if let Value::Object(m) = &mut reference_input {
                m.remove(PAYLOAD_HASH_FIELD);
            }
            let reference = serde_jcs::to_string(&reference_input).unwrap();
            prop_assert_eq!(ours, reference);
        }
    }

    proptest! {
        /// Hashing the parsed document gives the `Value` path's hash, for any JSON text.
        #[test]
        fn document_hash_equals_the_value_hash(v in arb_json()) {
            let text = serde_json::to_string(&v).unwrap();
            let mut doc: Json<'_> = serde_json::from_str(&text).unwrap();
            let value: Value = serde_json::from_str(&text).unwrap();
            let (hash, duplicates) = document_hash(&mut doc).unwrap();
            prop_assert_eq!(hash, payload_hash(&value).unwrap());
            prop_assert!(!duplicates);
        }
    }

    #[test]
    fn document_hash_keeps_the_last_of_repeated_members_like_value() {
        for text in [
            r#"{"a": 1, "b": [{"x": 1, "x": {"y": 2}}], "a": 2.0, "payloadHash": "p", "payloadHash": 1}"#,
            r#"{"requestId": "r", "samples": [], "samples": [{"value": 7.2e1, "\u00e9": "\n"}]}"#,
        ] {
            let mut doc: Json<'_> = serde_json::from_str(text).unwrap();
            let value: Value = serde_json::from_str(text).unwrap();
            assert_eq!(doc.get("samples").is_some(), value.get("samples").is_some());
            let (hash, duplicates) = document_hash(&mut doc).unwrap();
            assert_eq!(hash, payload_hash(&value).unwrap(), "{text}");
            assert!(duplicates);
        }
        let doc: Json<'_> = serde_json::from_str(r#"{"s": [1], "s": [1, 2]}"#).unwrap();
        assert!(matches!(doc.get("s"), Some(Json::Array(a)) if a.len() == 2));
    }

    #[test]
    fn members_sort_by_utf16_code_units() {
        // U+1F600 (surrogates D83D DE00) sorts before U+FB01 in UTF-16, after it in UTF-8.
        let v = json!({"\u{fb01}": 1, "\u{1f600}": 2});
        assert_eq!(
            String::from_utf8(canonical_json(&v).unwrap()).unwrap(),
            "{\"\u{1f600}\":2,\"\u{fb01}\":1}"
        );
    }

    #[test]
    fn numbers_hash_in_jcs_form() {
        let a = json!({"requestId": "x", "samples": [{"value": 72}]});
        let b = json!({"requestId": "x", "samples": [{"value": 72.0}]});
        let c: Value =
            serde_json::from_str(r#"{"samples":[{"value":7.2e1}],"requestId":"x"}"#).unwrap();
        assert_eq!(payload_hash(&a).unwrap(), payload_hash(&b).unwrap());
        assert_eq!(payload_hash(&a).unwrap(), payload_hash(&c).unwrap());
        let d = json!({"requestId": "x", "samples": [{"value": 72.5}]});
        assert_ne!(payload_hash(&a).unwrap(), payload_hash(&d).unwrap());
    }

    #[test]
    fn payload_hash_member_is_excluded_at_the_top_only() {
        let a = json!({"requestId": "x", "b": 1});
        let b = json!({"requestId": "x", "b": 1, "payloadHash": "abc"});
        assert_eq!(payload_hash(&a).unwrap(), payload_hash(&b).unwrap());
        let nested = json!({"requestId": "x", "b": {"payloadHash": "abc"}});
        let nested_empty = json!({"requestId": "x", "b": {}});
        assert_ne!(
            payload_hash(&nested).unwrap(),
            payload_hash(&nested_empty).unwrap()
        );
    }

    #[test]
    fn canonical_json_matches_rfc_8785_examples() {
        let v: Value = serde_json::from_str(
            r#"{"b": [1.0, 1e30, 0.000001, -0.0], "a": "\u00e9\n", "c": null}"#,
        )
        .unwrap();
        let text = String::from_utf8(canonical_json(&v).unwrap()).unwrap();
        assert_eq!(
            text,
            "{\"a\":\"é\\n\",\"b\":[1,1e+30,0.000001,0],\"c\":null}"
        );
    }

    #[test]
    fn matches_hex_is_case_insensitive() {
        let h = payload_hash(&json!({"a": 1})).unwrap();
        assert!(h.matches_hex(&h.to_hex().to_uppercase()));
        assert!(!h.matches_hex("zz"));
    }

    #[test]
    fn content_hash_separates_fields() {
        let a = ContentHasher::new().str("ab").str("c").finish();
        let b = ContentHasher::new().str("a").str("bc").finish();
        assert_ne!(a, b);
        let z = ContentHasher::new().opt_f64(Some(0.0)).finish();
        let nz = ContentHasher::new().opt_f64(Some(-0.0)).finish();
        assert_eq!(z, nz);
        assert_ne!(
            ContentHasher::new().opt_str(None).finish(),
            ContentHasher::new().str("").finish()
        );
    }
}
