provider "aws" {
  alias   = "consumer"
  region  = var.region
  profile = var.consumer_profile
}

provider "aws" {
  alias   = "provider"
  region  = var.region
  profile = var.provider_profile
}

data "aws_caller_identity" "consumer" {
  provider = aws.consumer
}

data "aws_caller_identity" "provider" {
  provider = aws.provider
}
