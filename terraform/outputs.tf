output "gateway_url" {
  description = "Point the gateway's DNS name (CNAME/alias) at this load balancer."
  value       = "https://${aws_lb.gateway.dns_name}"
}

output "kafka_bootstrap_brokers_tls" {
  value = aws_msk_cluster.this.bootstrap_brokers_tls
}

output "database_endpoint" {
  value = aws_db_instance.this.endpoint
}

output "database_secret_arn" {
  description = "RDS-managed secret with the master password (rotated by RDS)."
  value       = aws_db_instance.this.master_user_secret[0].secret_arn
}

output "jwt_secret_arn" {
  description = "Set its value once: aws secretsmanager put-secret-value --secret-id <arn> --secret-string \"$(openssl rand -hex 32)\""
  value       = aws_secretsmanager_secret.jwt.arn
}

output "exports_bucket" {
  value = aws_s3_bucket.exports.bucket
}

output "ecs_cluster" {
  value = aws_ecs_cluster.this.name
}
