//! Pseudonyms: hex(HMAC-SHA-256(export key, identifier)). Without the key nobody can map
//! a pseudonym back to a user (or test a guessed user id against it); with it, the same
//! user has the same `subject_id` in every dataset and every export, so analysts can join.

use std::collections::HashMap;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The development export key, documented so a local export works out of the box.
/// `PULSELINE_ENV=production` refuses it (as it refuses the development JWT secret).
pub const DEV_EXPORT_KEY: &str = "pulseline-dev-export-key-do-not-use-in-production";

/// A keyed pseudonymiser. Debug never prints the key.
#[derive(Clone)]
pub struct Pseudonymizer {
    mac: Hmac<Sha256>,
    cache: HashMap<String, String>,
}

impl std::fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pseudonymizer(<key redacted>)")
    }
}

impl Pseudonymizer {
    /// Refuses keys shorter than 32 bytes: a short key can be brute-forced, and with it
    /// every pseudonym reversed by trying user ids.
    pub fn new(key: &str) -> Result<Self, &'static str> {
        if key.len() < 32 {
            return Err("PULSELINE_EXPORT_KEY must be at least 32 bytes");
        }
        let mac = Hmac::<Sha256>::new_from_slice(key.as_bytes())
            .map_err(|_| "PULSELINE_EXPORT_KEY is not a usable HMAC key")?;
        Ok(Self {
            mac,
            cache: HashMap::new(),
        })
    }

    /// The pseudonym of `id` (cached: a partition repeats the same few users).
    pub fn pseudonym(&mut self, id: &str) -> &str {
        if !self.cache.contains_key(id) {
            if self.cache.len() > 1_000_000 {
                self.cache.clear();
            }
            let p = hmac_hex(&self.mac, id);
            self.cache.insert(id.to_owned(), p);
        }
        self.cache.get(id).map_or("", String::as_str)
    }

    /// Identifies the key without revealing it: a manifest written under another key is
    /// rewritten whole, so one export never mixes two keys' pseudonyms.
    pub fn key_fingerprint(&self) -> String {
        hmac_hex(&self.mac, "pulseline-export-key-fingerprint")[..16].to_owned()
    }
}

fn hmac_hex(mac: &Hmac<Sha256>, text: &str) -> String {
    let mut m = mac.clone();
    m.update(text.as_bytes());
    hex::encode(m.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_keyed_stable_and_hex() {
        let mut a = Pseudonymizer::new(DEV_EXPORT_KEY).unwrap();
        let mut b = Pseudonymizer::new(&"k".repeat(40)).unwrap();
        let user = "0192f6d2-0000-7000-8000-000000000001";
        let pa = a.pseudonym(user).to_owned();
        assert_eq!(pa.len(), 64);
        assert!(pa.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a.pseudonym(user), pa);
        assert_ne!(b.pseudonym(user), pa);
        assert!(!pa.contains(user));
        assert!(Pseudonymizer::new("short").is_err());
    }

    #[test]
    fn matches_rfc4231_test_case_2() {
        // RFC 4231, test case 2 (key "Jefe" is too short for us, so pad-check via the raw MAC).
        let mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        assert_eq!(
            hmac_hex(&mac, "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
