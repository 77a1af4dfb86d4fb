# ---------------------------------------------------------------- consumer account
resource "aws_vpc" "vpc_1" {
  provider             = aws.consumer
  cidr_block           = "10.1.0.0/16"
  enable_dns_support   = true
  enable_dns_hostnames = true
  tags                 = { Name = "vpc-1" }
}

resource "aws_vpc" "vpc_2" {
  provider             = aws.consumer
  cidr_block           = "10.2.0.0/16"
  enable_dns_support   = true
  enable_dns_hostnames = true
  tags                 = { Name = "vpc-2" }
}

resource "aws_subnet" "vpc_1_client" {
  provider          = aws.consumer
  vpc_id            = aws_vpc.vpc_1.id
  cidr_block        = "10.1.0.0/24"
  availability_zone = var.availability_zone
  tags              = { Name = "vpc-1-client" }
}

resource "aws_subnet" "vpc_2_endpoint" {
  provider          = aws.consumer
  vpc_id            = aws_vpc.vpc_2.id
  cidr_block        = "10.2.0.0/24"
  availability_zone = var.availability_zone
  tags              = { Name = "vpc-2-endpoint" }
}

resource "aws_subnet" "vpc_2_client" {
  provider          = aws.consumer
  vpc_id            = aws_vpc.vpc_2.id
  cidr_block        = "10.2.1.0/24"
  availability_zone = var.availability_zone
  tags              = { Name = "vpc-2-client" }
}

resource "aws_vpc_peering_connection" "vpc_1_to_vpc_2" {
  provider    = aws.consumer
  vpc_id      = aws_vpc.vpc_1.id
  peer_vpc_id = aws_vpc.vpc_2.id
  auto_accept = true
  tags        = { Name = "vpc-1-to-vpc-2" }
}

resource "aws_route" "vpc_1_to_vpc_2" {
  provider                  = aws.consumer
  route_table_id            = aws_vpc.vpc_1.main_route_table_id
  destination_cidr_block    = aws_vpc.vpc_2.cidr_block
  vpc_peering_connection_id = aws_vpc_peering_connection.vpc_1_to_vpc_2.id
}

resource "aws_route" "vpc_2_to_vpc_1" {
  provider                  = aws.consumer
  route_table_id            = aws_vpc.vpc_2.main_route_table_id
  destination_cidr_block    = aws_vpc.vpc_1.cidr_block
  vpc_peering_connection_id = aws_vpc_peering_connection.vpc_1_to_vpc_2.id
}

# ---------------------------------------------------------------- provider account
resource "aws_vpc" "vpc_3" {
  provider             = aws.provider
  cidr_block           = "10.3.0.0/16"
  enable_dns_support   = true
  enable_dns_hostnames = true
  tags                 = { Name = "vpc-3" }
}

resource "aws_subnet" "vpc_3_nlb" {
  provider          = aws.provider
  vpc_id            = aws_vpc.vpc_3.id
  cidr_block        = "10.3.0.0/24"
  availability_zone = var.availability_zone
  tags              = { Name = "vpc-3-nlb" }
}

resource "aws_subnet" "vpc_3_server" {
  provider          = aws.provider
  vpc_id            = aws_vpc.vpc_3.id
  cidr_block        = "10.3.1.0/24"
  availability_zone = var.availability_zone
  tags              = { Name = "vpc-3-server" }
}


module "egress_vpc_1" {
  source            = "./modules/egress"
  providers         = { aws = aws.consumer }
  name              = "vpc-1"
  vpc_id            = aws_vpc.vpc_1.id
  route_table_id    = aws_vpc.vpc_1.main_route_table_id
  public_cidr       = "10.1.255.0/24"
  availability_zone = var.availability_zone
}

module "egress_vpc_2" {
  source            = "./modules/egress"
  providers         = { aws = aws.consumer }
  name              = "vpc-2"
  vpc_id            = aws_vpc.vpc_2.id
  route_table_id    = aws_vpc.vpc_2.main_route_table_id
  public_cidr       = "10.2.255.0/24"
  availability_zone = var.availability_zone
}

module "egress_vpc_3" {
  source            = "./modules/egress"
  providers         = { aws = aws.provider }
  name              = "vpc-3"
  vpc_id            = aws_vpc.vpc_3.id
  route_table_id    = aws_vpc.vpc_3.main_route_table_id
  public_cidr       = "10.3.255.0/24"
  availability_zone = var.availability_zone
}
