// `sqlx::migrate!` embeds the gateway's migration files at compile time (see
// `gateway_schema`); rebuild when one is added or changed.
fn main() {
    println!("cargo:rerun-if-changed=../ingest-gateway/migrations");
}
