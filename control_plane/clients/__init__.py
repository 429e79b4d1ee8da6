"""The control plane's doors to other systems: boto3 clients, RunPod's client API, Secrets
Manager, the two SQS event queues and the local kick."""
