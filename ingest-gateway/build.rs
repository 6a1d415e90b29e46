// sqlx::migrate!() embeds migrations/ at compile time; rebuild when a file is added there.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
