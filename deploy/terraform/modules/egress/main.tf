# Internet egress for one VPC (public subnet, internet gateway, NAT gateway, default route of
# the main route table), so the instances can install plprobe and reach SSM and CloudWatch on
# 443 — the article's "443 to 0.0.0.0/0" egress rules assume such a path.
terraform {
  required_providers {
    aws = {
      source = "hashicorp/aws"
    }
  }
}

variable "vpc_id" {
  type = string
}

variable "route_table_id" {
  type = string
}

variable "public_cidr" {
  type = string
}

variable "availability_zone" {
  type = string
}

variable "name" {
  type = string
}

resource "aws_internet_gateway" "this" {
  vpc_id = var.vpc_id
  tags   = { Name = "${var.name}-igw" }
}

resource "aws_subnet" "public" {
  vpc_id            = var.vpc_id
  cidr_block        = var.public_cidr
  availability_zone = var.availability_zone
  tags              = { Name = "${var.name}-public" }
}

resource "aws_route_table" "public" {
  vpc_id = var.vpc_id
  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.this.id
  }
  tags = { Name = "${var.name}-public" }
}

resource "aws_route_table_association" "public" {
  subnet_id      = aws_subnet.public.id
  route_table_id = aws_route_table.public.id
}

resource "aws_eip" "nat" {
  domain = "vpc"
  tags   = { Name = "${var.name}-nat" }
}

resource "aws_nat_gateway" "this" {
  allocation_id = aws_eip.nat.id
  subnet_id     = aws_subnet.public.id
  tags          = { Name = "${var.name}-nat" }
  depends_on    = [aws_internet_gateway.this]
}

resource "aws_route" "default" {
  route_table_id         = var.route_table_id
  destination_cidr_block = "0.0.0.0/0"
  nat_gateway_id         = aws_nat_gateway.this.id
}
