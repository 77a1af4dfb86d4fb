# The five security groups of the article, rule for rule, with no default egress. Each rule
# for the service port is mirrored for plprobe's responder port, so probes take exactly the
# path of real traffic through all five controls.
locals {
  ports = toset([tostring(var.service_port), tostring(var.responder_port)])
}

resource "aws_security_group" "client_1" {
  provider    = aws.consumer
  name        = "client-1"
  description = "client 1"
  vpc_id      = aws_vpc.vpc_1.id
  tags        = { Name = "client-1" }
}

resource "aws_security_group" "client_2" {
  provider    = aws.consumer
  name        = "client-2"
  description = "client 2"
  vpc_id      = aws_vpc.vpc_2.id
  tags        = { Name = "client-2" }
}

resource "aws_security_group" "endpoint" {
  provider    = aws.consumer
  name        = "endpoint"
  description = "interface endpoint"
  vpc_id      = aws_vpc.vpc_2.id
  tags        = { Name = "endpoint" }
}

resource "aws_security_group" "nlb" {
  provider    = aws.provider
  name        = "nlb"
  description = "network load balancer"
  vpc_id      = aws_vpc.vpc_3.id
  tags        = { Name = "nlb" }
}

resource "aws_security_group" "server" {
  provider    = aws.provider
  name        = "server"
  description = "targets"
  vpc_id      = aws_vpc.vpc_3.id
  tags        = { Name = "server" }
}

# ① client SG egress: 443 anywhere, the service ports to the endpoint SG
resource "aws_security_group_rule" "client_1_egress_https" {
  provider          = aws.consumer
  security_group_id = aws_security_group.client_1.id
  type              = "egress"
  protocol          = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_blocks       = ["0.0.0.0/0"]
}

resource "aws_security_group_rule" "client_1_egress_endpoint" {
  for_each                 = local.ports
  provider                 = aws.consumer
  security_group_id        = aws_security_group.client_1.id
  type                     = "egress"
  protocol                 = "tcp"
  from_port                = tonumber(each.value)
  to_port                  = tonumber(each.value)
  source_security_group_id = aws_security_group.endpoint.id
}

resource "aws_security_group_rule" "client_2_egress_https" {
  provider          = aws.consumer
  security_group_id = aws_security_group.client_2.id
  type              = "egress"
  protocol          = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_blocks       = ["0.0.0.0/0"]
}

resource "aws_security_group_rule" "client_2_egress_endpoint" {
  for_each                 = local.ports
  provider                 = aws.consumer
  security_group_id        = aws_security_group.client_2.id
  type                     = "egress"
  protocol                 = "tcp"
  from_port                = tonumber(each.value)
  to_port                  = tonumber(each.value)
  source_security_group_id = aws_security_group.endpoint.id
}

# ② endpoint SG ingress from the client SGs
resource "aws_security_group_rule" "endpoint_from_client_1" {
  for_each                 = local.ports
  provider                 = aws.consumer
  security_group_id        = aws_security_group.endpoint.id
  type                     = "ingress"
  protocol                 = "tcp"
  from_port                = tonumber(each.value)
  to_port                  = tonumber(each.value)
  source_security_group_id = aws_security_group.client_1.id
}

resource "aws_security_group_rule" "endpoint_from_client_2" {
  for_each                 = local.ports
  provider                 = aws.consumer
  security_group_id        = aws_security_group.endpoint.id
  type                     = "ingress"
  protocol                 = "tcp"
  from_port                = tonumber(each.value)
  to_port                  = tonumber(each.value)
  source_security_group_id = aws_security_group.client_2.id
}

# ④ NLB SG ingress: the clients' private IPs (the NLB sees the client IP, and cannot
# reference the consumer's SG across accounts)
resource "aws_security_group_rule" "nlb_from_clients" {
  for_each          = local.ports
  provider          = aws.provider
  security_group_id = aws_security_group.nlb.id
  type              = "ingress"
  protocol          = "tcp"
  from_port         = tonumber(each.value)
  to_port           = tonumber(each.value)
  cidr_blocks       = ["${aws_instance.client_1.private_ip}/32", "${aws_instance.client_2.private_ip}/32"]
}

# ④ NLB SG egress to the targets (traffic port = health-check port here)
resource "aws_security_group_rule" "nlb_egress_server" {
  for_each                 = local.ports
  provider                 = aws.provider
  security_group_id        = aws_security_group.nlb.id
  type                     = "egress"
  protocol                 = "tcp"
  from_port                = tonumber(each.value)
  to_port                  = tonumber(each.value)
  source_security_group_id = aws_security_group.server.id
}

# ⑤ target SG ingress from the NLB SG
resource "aws_security_group_rule" "server_from_nlb" {
  for_each                 = local.ports
  provider                 = aws.provider
  security_group_id        = aws_security_group.server.id
  type                     = "ingress"
  protocol                 = "tcp"
  from_port                = tonumber(each.value)
  to_port                  = tonumber(each.value)
  source_security_group_id = aws_security_group.nlb.id
}

resource "aws_security_group_rule" "server_egress_https" {
  provider          = aws.provider
  security_group_id = aws_security_group.server.id
  type              = "egress"
  protocol          = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_blocks       = ["0.0.0.0/0"]
}

# Inside the provider VPC: the provider agents' own probes and their peers. A provider agent
# probes each NLB listener through the NLB node (target -> NLB: target SG egress, NLB SG
# ingress from the target SG) and each target directly on the traffic and health-check ports
# (target -> target), and the agents of the target group share what they saw with each other on
# the responder port (target -> target). Traffic port = health-check port here.
resource "aws_security_group_rule" "server_egress_nlb" {
  for_each                 = local.ports
  provider                 = aws.provider
  security_group_id        = aws_security_group.server.id
  type                     = "egress"
  protocol                 = "tcp"
  from_port                = tonumber(each.value)
  to_port                  = tonumber(each.value)
  source_security_group_id = aws_security_group.nlb.id
}

resource "aws_security_group_rule" "nlb_from_server" {
  for_each                 = local.ports
  provider                 = aws.provider
  security_group_id        = aws_security_group.nlb.id
  type                     = "ingress"
  protocol                 = "tcp"
  from_port                = tonumber(each.value)
  to_port                  = tonumber(each.value)
  source_security_group_id = aws_security_group.server.id
}

resource "aws_security_group_rule" "server_egress_server" {
  for_each                 = local.ports
  provider                 = aws.provider
  security_group_id        = aws_security_group.server.id
  type                     = "egress"
  protocol                 = "tcp"
  from_port                = tonumber(each.value)
  to_port                  = tonumber(each.value)
  source_security_group_id = aws_security_group.server.id
}

resource "aws_security_group_rule" "server_from_server" {
  for_each                 = local.ports
  provider                 = aws.provider
  security_group_id        = aws_security_group.server.id
  type                     = "ingress"
  protocol                 = "tcp"
  from_port                = tonumber(each.value)
  to_port                  = tonumber(each.value)
  source_security_group_id = aws_security_group.server.id
}
