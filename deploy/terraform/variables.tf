variable "region" {
  description = "Region of both accounts (the article uses ap-northeast-1)."
  type        = string
  default     = "ap-northeast-1"
}

variable "availability_zone" {
  description = "The one AZ of the reference topology."
  type        = string
  default     = "ap-northeast-1a"
}

variable "consumer_profile" {
  description = "AWS CLI profile of the consumer (client) account."
  type        = string
}

variable "provider_profile" {
  description = "AWS CLI profile of the provider (service) account."
  type        = string
}

variable "instance_type" {
  description = "Instance type of the clients and targets."
  type        = string
  default     = "t3.micro"
}

variable "plprobe_wheel_url" {
  description = "HTTPS or S3 presigned URL of the plprobe wheel (build it with `pip wheel . -w dist`)."
  type        = string
}

variable "service_port" {
  description = "The service port (HTTP on the targets)."
  type        = number
  default     = 80
}

variable "responder_port" {
  description = "plprobe's responder port on the targets; mirrored through every control like the service port."
  type        = number
  default     = 9721
}

variable "probe_interval_seconds" {
  description = "How often the client agents probe each path."
  type        = number
  default     = 10
}
