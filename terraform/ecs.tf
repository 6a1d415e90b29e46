# The pulseline services on ECS Fargate: one image, one task definition per binary, the
# same environment variables as docker-compose.kafka.yml. Only the gateway and the relay
# exist today; the processor, sink and query-api join as entries of local.services
# (the sink and query-api with a task-role policy on the exports bucket).

resource "aws_secretsmanager_secret" "jwt" {
  #checkov:skip=CKV2_AWS_57:rotating the JWT signing secret invalidates live tokens; it is rotated by hand (docs/deploy.md) until the gateway accepts two keys
  name        = "${local.name}/jwt-secret"
  description = "PULSELINE_JWT_SECRET. Value set out of band, never in Terraform state (docs/deploy.md)."
  kms_key_id  = aws_kms_key.this.arn
}

locals {
  # Service name => binary, port behind the load balancer (null: none), the port of its
  # /healthz, and task size. Liveness only (/healthz, not /readyz): a Postgres or Kafka
  # blip must not make ECS replace every task at once.
  services = {
    gateway = { command = "pulseline-gateway", port = 8080, health_port = 8080, count = var.gateway_count, cpu = 512, memory = 1024 }
    relay   = { command = "pulseline-relay", port = null, health_port = 9101, count = var.relay_count, cpu = 256, memory = 512 }
  }

  environment = [for k, v in {
    PULSELINE_DATABASE_URL              = "postgres://pulseline@${aws_db_instance.this.endpoint}/pulseline?sslmode=require"
    PULSELINE_KAFKA_BOOTSTRAP           = aws_msk_cluster.this.bootstrap_brokers_tls
    PULSELINE_KAFKA_SECURITY_PROTOCOL   = "ssl"
    PULSELINE_SCHEMA_REGISTRY_URL       = var.schema_registry_url
    PULSELINE_TOPIC_PREFIX              = ""
    PULSELINE_GATEWAY_ADDR              = "0.0.0.0:8080"
    PULSELINE_RELAY_METRICS_ADDR        = "0.0.0.0:9101"
    PULSELINE_ENV                       = "production"
    PULSELINE_READ_STORE                = var.read_store
    PULSELINE_SCYLLA_URI                = var.scylla_uri
    PULSELINE_SCYLLA_KEYSPACE           = "pulseline"
    PULSELINE_SCYLLA_REPLICATION_FACTOR = "3"
    PULSELINE_SCYLLA_TLS                = tostring(var.scylla_tls)
    PULSELINE_EXPORT_DIR                = "s3://${aws_s3_bucket.exports.bucket}/export"
    RUST_LOG                            = "info"
  } : { name = k, value = v }]

  secrets = [
    { name = "PULSELINE_JWT_SECRET", valueFrom = aws_secretsmanager_secret.jwt.arn },
    { name = "PGPASSWORD", valueFrom = "${aws_db_instance.this.master_user_secret[0].secret_arn}:password::" },
  ]
}

resource "aws_ecs_cluster" "this" {
  name = local.name
  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

resource "aws_cloudwatch_log_group" "services" {
  name              = "/${local.name}/services"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
}

data "aws_iam_policy_document" "ecs_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

# Execution role: pulls the image, writes logs, reads the two secrets at task start.
resource "aws_iam_role" "execution" {
  name               = "${local.name}-ecs-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_assume.json
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

resource "aws_iam_role_policy" "execution_secrets" {
  name = "secrets"
  role = aws_iam_role.execution.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      { Effect = "Allow", Action = "secretsmanager:GetSecretValue", Resource = [aws_secretsmanager_secret.jwt.arn, aws_db_instance.this.master_user_secret[0].secret_arn] },
      { Effect = "Allow", Action = "kms:Decrypt", Resource = aws_kms_key.this.arn },
    ]
  })
}

# Task role: what the binaries themselves may call. The gateway and relay need no AWS API.
resource "aws_iam_role" "task" {
  name               = "${local.name}-ecs-task"
  assume_role_policy = data.aws_iam_policy_document.ecs_assume.json
}

resource "aws_ecs_task_definition" "service" {
  for_each                 = local.services
  family                   = "${local.name}-${each.key}"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = each.value.cpu
  memory                   = each.value.memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  container_definitions = jsonencode([{
    name                   = each.key
    image                  = var.image
    command                = [each.value.command]
    essential              = true
    readonlyRootFilesystem = true
    portMappings           = each.value.port == null ? [] : [{ containerPort = each.value.port, protocol = "tcp" }]
    environment            = local.environment
    secrets                = local.secrets
    healthCheck = {
      command  = ["CMD", "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${each.value.health_port} && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
      interval = 10, timeout = 5, retries = 3, startPeriod = 30
    }
    logConfiguration = {
      logDriver = "awslogs"
      options   = { awslogs-group = aws_cloudwatch_log_group.services.name, awslogs-region = data.aws_region.current.name, awslogs-stream-prefix = each.key }
    }
  }])
}

resource "aws_ecs_service" "service" {
  for_each         = local.services
  name             = each.key
  cluster          = aws_ecs_cluster.this.id
  task_definition  = aws_ecs_task_definition.service[each.key].arn
  desired_count    = each.value.count
  launch_type      = "FARGATE"
  platform_version = "LATEST"
  propagate_tags   = "SERVICE"

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.services.id]
    assign_public_ip = false
  }

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  # The target group must belong to a load balancer before a service can use it.
  depends_on = [aws_lb_listener.https]

  dynamic "load_balancer" {
    for_each = each.value.port == null ? [] : [each.value.port]
    content {
      target_group_arn = aws_lb_target_group.gateway.arn
      container_name   = each.key
      container_port   = load_balancer.value
    }
  }
}

# Public HTTPS entry point for the mobile clients; TLS ends here, inside the VPC the
# gateway speaks HTTP on 8080.
resource "aws_lb" "gateway" {
  #checkov:skip=CKV2_AWS_28:rate limits are per user in the gateway (429 + Retry-After); a WAF web ACL is attached per account if required
  #checkov:skip=CKV_AWS_91:request logs would need their own bucket; the gateway logs every request (request ids, no PHI) to CloudWatch
  name                       = "${local.name}-gw"
  load_balancer_type         = "application"
  internal                   = false
  subnets                    = var.public_subnet_ids
  security_groups            = [aws_security_group.alb.id]
  drop_invalid_header_fields = true
  enable_deletion_protection = true
}

resource "aws_lb_target_group" "gateway" {
  name        = "${local.name}-gw"
  port        = 8080
  protocol    = "HTTP"
  target_type = "ip"
  vpc_id      = var.vpc_id

  health_check {
    path    = "/healthz"
    matcher = "200"
  }
}

resource "aws_lb_listener" "https" {
  load_balancer_arn = aws_lb.gateway.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.gateway.arn
  }
}
