//! Per-user privacy settings (`user_privacy`): the metrics a user does not want stored.

use uuid::Uuid;

use super::Store;
use crate::error::GatewayError;

impl Store {
    /// The user's blocked metric codes, sorted (empty when never set).
    pub async fn blocked_metrics(&self, user_id: Uuid) -> Result<Vec<String>, GatewayError> {
        let row: Option<(Vec<String>,)> =
            sqlx::query_as("SELECT blocked_metrics FROM user_privacy WHERE user_id = $1")
                .bind(user_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(m,)| m).unwrap_or_default())
    }

    /// Replaces the user's blocked metrics (codes already checked against the catalog).
    pub async fn set_blocked_metrics(
        &self,
        user_id: Uuid,
        metrics: &[String],
    ) -> Result<(), GatewayError> {
        sqlx::query(
            "INSERT INTO user_privacy (user_id, blocked_metrics) VALUES ($1, $2)
             ON CONFLICT (user_id) DO UPDATE SET blocked_metrics = EXCLUDED.blocked_metrics",
        )
        .bind(user_id)
        .bind(metrics)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
