variable "region" {
  description = "AWS region."
  type        = string
  default     = "eu-central-1"
}

variable "environment" {
  description = "Environment name, used in resource names and tags (e.g. prod, staging)."
  type        = string
  default     = "prod"
}

variable "vpc_id" {
  description = "Existing VPC to deploy into (the network itself is managed elsewhere)."
  type        = string
}

variable "private_subnet_ids" {
  description = "Three private subnets in three different AZs: MSK brokers, RDS and the ECS tasks. They need a NAT route to ECR, Secrets Manager, CloudWatch and Scylla Cloud."
  type        = list(string)

  validation {
    condition     = length(var.private_subnet_ids) == 3
    error_message = "MSK runs one broker per AZ: give exactly three private subnets, one per AZ."
  }
}

variable "public_subnet_ids" {
  description = "Public subnets (at least two AZs) for the gateway's load balancer."
  type        = list(string)
}

variable "certificate_arn" {
  description = "ACM certificate for the gateway's HTTPS listener."
  type        = string
}

variable "image" {
  description = "Container image built from the workspace Dockerfile (e.g. <account>.dkr.ecr.<region>.amazonaws.com/pulseline:<git sha>)."
  type        = string
}

variable "kafka_version" {
  description = "MSK Kafka version (3.x)."
  type        = string
  default     = "3.9.x"
}

variable "msk_instance_type" {
  type    = string
  default = "kafka.m7g.large"
}

variable "msk_volume_gib" {
  description = "EBS volume per broker. Input topics keep 30 days."
  type        = number
  default     = 500
}

variable "db_instance_class" {
  type    = string
  default = "db.m7g.large"
}

variable "db_allocated_gib" {
  type    = number
  default = 100
}

variable "schema_registry_url" {
  description = "Confluent-compatible schema registry (Confluent Cloud or self-run cp-schema-registry). AWS Glue's registry speaks another API."
  type        = string
}

variable "scylla_uri" {
  description = "ScyllaDB contact point(s), host:port, as PULSELINE_SCYLLA_URI expects: Scylla Cloud or a self-managed cluster peered with the VPC. No provider manages it here."
  type        = string
}

variable "scylla_tls" {
  description = "Connect to Scylla over TLS, each node's certificate verified against its IP address and the image's system CAs (client-to-node encryption must be on in the cluster)."
  type        = bool
  default     = true
}

variable "read_store" {
  description = "Where the sink writes and the query API reads the read models: postgres (the RDS instance) or scylla (scylla_uri). The Parquet export reads them from Postgres."
  type        = string
  default     = "postgres"
  validation {
    condition     = contains(["postgres", "scylla"], var.read_store)
    error_message = "read_store must be postgres or scylla."
  }
}

variable "gateway_count" {
  type    = number
  default = 2
}

variable "relay_count" {
  description = "Relays claim outbox rows with FOR UPDATE SKIP LOCKED, so more than one is safe."
  type        = number
  default     = 1
}

variable "log_retention_days" {
  type    = number
  default = 365
}
