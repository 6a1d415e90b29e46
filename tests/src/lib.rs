//! End-to-end and fault-injection tests of pulseline against the real local stack. The
//! tests live in `tests/tests/`; this library only locates the repository's scripts.

use std::path::{Path, PathBuf};

/// The repository root (the tests run scripts from it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}
