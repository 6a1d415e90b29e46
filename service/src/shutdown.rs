//! The signal every long-running service stops on.

/// Completes on SIGINT (ctrl-c) or SIGTERM (what an orchestrator sends before it kills).
/// A signal that cannot be installed never completes rather than stopping the service at
/// once.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received");
}

#[cfg(all(test, unix))]
mod tests {
    use std::time::Duration;

    #[tokio::test]
    async fn completes_on_sigterm() {
        let signal = super::shutdown_signal();
        tokio::pin!(signal);
        // The first poll installs the handlers; only then may the signal be sent (without
        // a handler, SIGTERM would end the test process).
        tokio::select! {
            () = &mut signal => panic!("completed without a signal"),
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(5), signal)
            .await
            .expect("shutdown_signal completes on SIGTERM");
    }
}
