//! Which database errors mean "try again later" (503 with Retry-After) rather than "a bug"
//! (500): one classification for every service that talks to Postgres.

/// Postgres error codes that mean "try again later", not "this request is wrong".
fn is_transient_sqlstate(code: &str) -> bool {
    code.starts_with("08") // connection exception
        || code.starts_with("53") // insufficient resources
        || code.starts_with("57") // operator intervention (shutdown, cannot connect now)
        || code == "40001" // serialization failure
        || code == "40P01" // deadlock detected
        || code == "55P03" // lock not available
}

/// Whether `e` says the database cannot serve now (pool exhausted or closed, connection
/// lost, transient server state), so the same request can succeed later.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| is_transient_sqlstate(&c)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_timeouts_are_unavailable_and_bugs_are_not() {
        assert!(is_unavailable(&sqlx::Error::PoolTimedOut));
        assert!(!is_unavailable(&sqlx::Error::RowNotFound));
        assert!(is_transient_sqlstate("08006") && !is_transient_sqlstate("23505"));
    }
}
