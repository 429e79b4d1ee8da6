"""What batches cost and take: each batch's engine time, cost, cache hit rate, throughput and
ETA (`figures`), the endpoint's measured throughput (`rates`), and the estimate of a file
before it is submitted (`estimate`)."""
