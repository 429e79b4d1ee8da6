"""What batches cost and take: each batch's engine time, cost, cache hit rate, throughput and
ETA (`figures`), the endpoint's measured throughput (`rates`), and the estimate of a file
before it is submitted (`estimate`), the chunk size a new batch gets (`sizing`) and how busy
the engines were for a batch (`throughput`)."""
