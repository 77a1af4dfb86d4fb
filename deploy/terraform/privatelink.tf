# ---------------------------------------------------------------- provider: NLB + service
resource "aws_lb" "nlb" {
  provider           = aws.provider
  name               = "plprobe-nlb"
  load_balancer_type = "network"
  internal           = true
  security_groups    = [aws_security_group.nlb.id]
  subnet_mapping {
    subnet_id            = aws_subnet.vpc_3_nlb.id
    private_ipv4_address = "10.3.0.100"
  }
  # The default, written out: the NLB SG is evaluated on PrivateLink traffic (control ④).
  enforce_security_group_inbound_rules_on_private_link_traffic = "on"
  enable_cross_zone_load_balancing                             = false
  tags                                                         = { Name = "nlb" }
}

resource "aws_lb_target_group" "service" {
  for_each    = local.ports
  provider    = aws.provider
  name        = "plprobe-tg-${each.value}"
  vpc_id      = aws_vpc.vpc_3.id
  port        = tonumber(each.value)
  protocol    = "TCP"
  target_type = "instance"
  health_check {
    protocol            = "TCP"
    port                = "traffic-port"
    interval            = 10
    healthy_threshold   = 3
    unhealthy_threshold = 3
  }
}

resource "aws_lb_listener" "service" {
  for_each          = local.ports
  provider          = aws.provider
  load_balancer_arn = aws_lb.nlb.arn
  port              = tonumber(each.value)
  protocol          = "TCP"
  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.service[each.key].arn
  }
}

resource "aws_lb_target_group_attachment" "server" {
  for_each = {
    for pair in setproduct(["server_1", "server_2"], tolist(local.ports)) : "${pair[0]}-${pair[1]}" => {
      instance = pair[0]
      port     = pair[1]
    }
  }
  provider         = aws.provider
  target_group_arn = aws_lb_target_group.service[each.value.port].arn
  target_id        = each.value.instance == "server_1" ? aws_instance.server_1.id : aws_instance.server_2.id
  port             = tonumber(each.value.port)
}

resource "aws_vpc_endpoint_service" "service" {
  provider                   = aws.provider
  acceptance_required        = false
  network_load_balancer_arns = [aws_lb.nlb.arn]
  allowed_principals         = ["arn:aws:iam::${data.aws_caller_identity.consumer.account_id}:root"]
  tags                       = { Name = "service" }
}

# ---------------------------------------------------------------- consumer: the endpoint
resource "aws_vpc_endpoint" "endpoint" {
  provider            = aws.consumer
  vpc_id              = aws_vpc.vpc_2.id
  service_name        = aws_vpc_endpoint_service.service.service_name
  vpc_endpoint_type   = "Interface"
  subnet_ids          = [aws_subnet.vpc_2_endpoint.id]
  security_group_ids  = [aws_security_group.endpoint.id]
  private_dns_enabled = false
  tags                = { Name = "endpoint" }
}
