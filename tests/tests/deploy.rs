//! docker-compose.kafka.yml, the Dockerfile and terraform/ validate offline
//! (`scripts/check-deploy`: compose config, terraform fmt, checkov, semantic checks).

use std::process::Command;

use pulseline_e2e::repo_root;

#[test]
fn deployment_files_validate_offline() {
    let out = Command::new(repo_root().join("scripts/check-deploy"))
        .current_dir(repo_root())
        .output()
        .expect("scripts/check-deploy runs");
    assert!(
        out.status.success(),
        "scripts/check-deploy failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
