# The article's reference topology in two AWS accounts, with plprobe agents on the clients and
# on the targets. Every resource names its provider explicitly (aws.consumer / aws.provider) —
# the article's companion code left some to the default provider and quoted provider
# references; both are fixed here.
terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source                = "hashicorp/aws"
      version               = ">= 5.40"
      configuration_aliases = [aws.consumer, aws.provider]
    }
    random = {
      source  = "hashicorp/random"
      version = ">= 3.5"
    }
  }
}
