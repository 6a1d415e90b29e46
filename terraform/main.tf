# Shared pieces: naming, one customer-managed KMS key for every store, security groups.
# By concern: msk.tf (Kafka), rds.tf (Postgres), s3.tf (Parquet exports), ecs.tf (services).

data "aws_caller_identity" "current" {}
data "aws_region" "current" {}

locals {
  name = "pulseline-${var.environment}"
}

resource "aws_kms_key" "this" {
  description         = "${local.name}: MSK, RDS, S3, Secrets Manager and CloudWatch Logs"
  enable_key_rotation = true
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "AccountAdmin"
        Effect    = "Allow"
        Principal = { AWS = "arn:aws:iam::${data.aws_caller_identity.current.account_id}:root" }
        Action    = "kms:*"
        Resource  = "*"
      },
      {
        Sid       = "CloudWatchLogs"
        Effect    = "Allow"
        Principal = { Service = "logs.${data.aws_region.current.name}.amazonaws.com" }
        Action    = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
        Resource  = "*"
        Condition = {
          ArnLike = { "kms:EncryptionContext:aws:logs:arn" = "arn:aws:logs:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:log-group:/${local.name}/*" }
        }
      },
    ]
  })
}

resource "aws_kms_alias" "this" {
  name          = "alias/${local.name}"
  target_key_id = aws_kms_key.this.key_id
}

resource "aws_security_group" "alb" {
  name        = "${local.name}-alb"
  description = "Gateway load balancer: HTTPS from clients"
  vpc_id      = var.vpc_id

  ingress {
    description = "HTTPS from mobile clients"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }

  egress {
    description     = "To the gateway tasks"
    from_port       = 8080
    to_port         = 8080
    protocol        = "tcp"
    security_groups = [aws_security_group.services.id]
  }
}

resource "aws_security_group" "services" {
  #checkov:skip=CKV_AWS_382:tasks reach ECR, Secrets Manager, CloudWatch, the schema registry and Scylla Cloud through NAT; destinations outside the VPC have no fixed CIDR
  name        = "${local.name}-services"
  description = "pulseline ECS tasks"
  vpc_id      = var.vpc_id

  egress {
    description = "AWS APIs, schema registry, Scylla, MSK and RDS"
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

resource "aws_security_group_rule" "gateway_from_alb" {
  description              = "Gateway HTTP from the load balancer"
  type                     = "ingress"
  security_group_id        = aws_security_group.services.id
  from_port                = 8080
  to_port                  = 8080
  protocol                 = "tcp"
  source_security_group_id = aws_security_group.alb.id
}

resource "aws_security_group" "kafka" {
  name        = "${local.name}-kafka"
  description = "MSK brokers: TLS from the services only"
  vpc_id      = var.vpc_id

  ingress {
    description     = "Kafka TLS"
    from_port       = 9094
    to_port         = 9094
    protocol        = "tcp"
    security_groups = [aws_security_group.services.id]
  }
}

resource "aws_security_group" "db" {
  name        = "${local.name}-db"
  description = "RDS Postgres: from the services only"
  vpc_id      = var.vpc_id

  ingress {
    description     = "Postgres"
    from_port       = 5432
    to_port         = 5432
    protocol        = "tcp"
    security_groups = [aws_security_group.services.id]
  }
}
