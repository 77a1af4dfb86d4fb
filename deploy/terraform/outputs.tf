output "endpoint_dns_name" {
  description = "The endpoint's regional DNS name (what the clients probe)."
  value       = aws_vpc_endpoint.endpoint.dns_entry[0].dns_name
}

output "ssm_session_client_2" {
  description = "Open a shell on client-2 (consumer account)."
  value       = "aws ssm start-session --profile ${var.consumer_profile} --region ${var.region} --target ${aws_instance.client_2.id}"
}

output "ssm_session_server_1" {
  description = "Open a shell on server-1 (provider account)."
  value       = "aws ssm start-session --profile ${var.provider_profile} --region ${var.region} --target ${aws_instance.server_1.id}"
}

output "check_from_client_1" {
  description = "One probe round plus diagnosis on client-1, through SSM."
  value       = "aws ssm send-command --profile ${var.consumer_profile} --region ${var.region} --instance-ids ${aws_instance.client_1.id} --document-name AWS-RunShellScript --parameters 'commands=[\"/opt/plprobe/venv/bin/plprobe check --config /etc/plprobe/plprobe.yaml --aws\"]'"
}

output "check_from_client_2" {
  description = "One probe round plus diagnosis on client-2, through SSM."
  value       = "aws ssm send-command --profile ${var.consumer_profile} --region ${var.region} --instance-ids ${aws_instance.client_2.id} --document-name AWS-RunShellScript --parameters 'commands=[\"/opt/plprobe/venv/bin/plprobe check --config /etc/plprobe/plprobe.yaml --aws\"]'"
}

output "metrics_urls" {
  description = "Scrape targets for Prometheus (both accounts' agents)."
  value = [
    "http://${aws_instance.client_1.private_ip}:9720/metrics",
    "http://${aws_instance.client_2.private_ip}:9720/metrics",
    "http://${aws_instance.server_1.private_ip}:9720/metrics",
    "http://${aws_instance.server_2.private_ip}:9720/metrics",
  ]
}
