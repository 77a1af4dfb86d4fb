# The instances of the article (client-1, client-2, server-1, server-2) with plprobe installed
# and started by cloud-init, the shared HMAC key in SSM Parameter Store of each account, and a
# read-only instance profile per side (deploy/iam/*.json: each side reads only its own
# account's configuration).

data "aws_ami" "debian_consumer" {
  provider    = aws.consumer
  most_recent = true
  owners      = ["136693071363"] # Debian
  filter {
    name   = "name"
    values = ["debian-12-amd64-*"]
  }
}

data "aws_ami" "debian_provider" {
  provider    = aws.provider
  most_recent = true
  owners      = ["136693071363"] # Debian
  filter {
    name   = "name"
    values = ["debian-12-amd64-*"]
  }
}

# ---------------------------------------------------------------- the shared HMAC key
resource "random_password" "hmac_key" {
  length  = 48
  special = false
}

resource "aws_ssm_parameter" "hmac_key_consumer" {
  provider = aws.consumer
  name     = "/plprobe/hmac-key"
  type     = "SecureString"
  value    = random_password.hmac_key.result
}

resource "aws_ssm_parameter" "hmac_key_provider" {
  provider = aws.provider
  name     = "/plprobe/hmac-key"
  type     = "SecureString"
  value    = random_password.hmac_key.result
}

# ---------------------------------------------------------------- instance profiles
data "aws_iam_policy_document" "ec2_assume_consumer" {
  provider = aws.consumer
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "ec2_assume_provider" {
  provider = aws.provider
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "agent_consumer" {
  provider           = aws.consumer
  name               = "plprobe-client"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume_consumer.json
}

resource "aws_iam_role" "agent_provider" {
  provider           = aws.provider
  name               = "plprobe-provider"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume_provider.json
}

resource "aws_iam_role_policy" "readonly_consumer" {
  provider = aws.consumer
  name     = "plprobe-consumer-readonly"
  role     = aws_iam_role.agent_consumer.id
  policy   = file("${path.module}/../iam/consumer-readonly.json")
}

resource "aws_iam_role_policy" "readonly_provider" {
  provider = aws.provider
  name     = "plprobe-provider-readonly"
  role     = aws_iam_role.agent_provider.id
  policy   = file("${path.module}/../iam/provider-readonly.json")
}

resource "aws_iam_role_policy" "key_consumer" {
  provider = aws.consumer
  name     = "plprobe-hmac-key"
  role     = aws_iam_role.agent_consumer.id
  policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Action = ["ssm:GetParameter"], Resource = aws_ssm_parameter.hmac_key_consumer.arn }]
  })
}

resource "aws_iam_role_policy" "key_provider" {
  provider = aws.provider
  name     = "plprobe-hmac-key"
  role     = aws_iam_role.agent_provider.id
  policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Action = ["ssm:GetParameter"], Resource = aws_ssm_parameter.hmac_key_provider.arn }]
  })
}

# SSM Session Manager, so the outputs' `aws ssm start-session` commands work without SSH.
resource "aws_iam_role_policy_attachment" "ssm_consumer" {
  provider   = aws.consumer
  role       = aws_iam_role.agent_consumer.name
  policy_arn = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_role_policy_attachment" "ssm_provider" {
  provider   = aws.provider
  role       = aws_iam_role.agent_provider.name
  policy_arn = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "agent_consumer" {
  provider = aws.consumer
  name     = "plprobe-client"
  role     = aws_iam_role.agent_consumer.name
}

resource "aws_iam_instance_profile" "agent_provider" {
  provider = aws.provider
  name     = "plprobe-provider"
  role     = aws_iam_role.agent_provider.name
}

# ---------------------------------------------------------------- instances + agents
locals {
  unit = file("${path.module}/../systemd/plprobe.service")
  endpoint_dns = {
    regional = aws_vpc_endpoint.endpoint.dns_entry[0].dns_name
    zonal    = aws_vpc_endpoint.endpoint.dns_entry[1].dns_name
  }
  client_config = {
    for name in ["client-1", "client-2"] : name => templatefile("${path.module}/templates/client.yaml.tftpl", {
      agent_id       = name
      regional       = local.endpoint_dns.regional
      zonal          = local.endpoint_dns.zonal
      az_id          = aws_subnet.vpc_2_endpoint.availability_zone_id
      service_port   = var.service_port
      responder_port = var.responder_port
      interval       = var.probe_interval_seconds
    })
  }
}

resource "aws_instance" "client_1" {
  provider               = aws.consumer
  ami                    = data.aws_ami.debian_consumer.id
  instance_type          = var.instance_type
  subnet_id              = aws_subnet.vpc_1_client.id
  private_ip             = "10.1.0.10"
  vpc_security_group_ids = [aws_security_group.client_1.id]
  iam_instance_profile   = aws_iam_instance_profile.agent_consumer.name
  metadata_options {
    http_tokens = "required" # IMDSv2 only; plprobe finds its instance through it
  }
  user_data = templatefile("${path.module}/templates/cloud-init.yaml.tftpl", {
    config    = local.client_config["client-1"]
    unit      = local.unit
    wheel_url = var.plprobe_wheel_url
    key_param = aws_ssm_parameter.hmac_key_consumer.name
    region    = var.region
  })
  tags = { Name = "client-1" }
}

resource "aws_instance" "client_2" {
  provider               = aws.consumer
  ami                    = data.aws_ami.debian_consumer.id
  instance_type          = var.instance_type
  subnet_id              = aws_subnet.vpc_2_client.id
  private_ip             = "10.2.1.15"
  vpc_security_group_ids = [aws_security_group.client_2.id]
  iam_instance_profile   = aws_iam_instance_profile.agent_consumer.name
  metadata_options {
    http_tokens = "required"
  }
  user_data = templatefile("${path.module}/templates/cloud-init.yaml.tftpl", {
    config    = local.client_config["client-2"]
    unit      = local.unit
    wheel_url = var.plprobe_wheel_url
    key_param = aws_ssm_parameter.hmac_key_consumer.name
    region    = var.region
  })
  tags = { Name = "client-2" }
}

resource "aws_instance" "server_1" {
  provider               = aws.provider
  ami                    = data.aws_ami.debian_provider.id
  instance_type          = var.instance_type
  subnet_id              = aws_subnet.vpc_3_server.id
  private_ip             = "10.3.1.10"
  vpc_security_group_ids = [aws_security_group.server.id]
  iam_instance_profile   = aws_iam_instance_profile.agent_provider.name
  metadata_options {
    http_tokens = "required"
  }
  user_data = templatefile("${path.module}/templates/cloud-init.yaml.tftpl", {
    config = templatefile("${path.module}/templates/provider.yaml.tftpl", {
      agent_id       = "server-1"
      service_port   = var.service_port
      responder_port = var.responder_port
      region         = var.region
    })
    unit      = local.unit
    wheel_url = var.plprobe_wheel_url
    key_param = aws_ssm_parameter.hmac_key_provider.name
    region    = var.region
  })
  tags = { Name = "server-1" }
}

resource "aws_instance" "server_2" {
  provider               = aws.provider
  ami                    = data.aws_ami.debian_provider.id
  instance_type          = var.instance_type
  subnet_id              = aws_subnet.vpc_3_server.id
  private_ip             = "10.3.1.11"
  vpc_security_group_ids = [aws_security_group.server.id]
  iam_instance_profile   = aws_iam_instance_profile.agent_provider.name
  metadata_options {
    http_tokens = "required"
  }
  user_data = templatefile("${path.module}/templates/cloud-init.yaml.tftpl", {
    config = templatefile("${path.module}/templates/provider.yaml.tftpl", {
      agent_id       = "server-2"
      service_port   = var.service_port
      responder_port = var.responder_port
      region         = var.region
    })
    unit      = local.unit
    wheel_url = var.plprobe_wheel_url
    key_param = aws_ssm_parameter.hmac_key_provider.name
    region    = var.region
  })
  tags = { Name = "server-2" }
}
