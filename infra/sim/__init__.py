"""A fleet on a virtual clock: the real control-plane code against a RunPod endpoint of W virtual
workers and moto with a meter, so a 1,000-worker, 1,000-batch cell runs on two cores
(`bench/sim_scale.py` drives it).

- `clock`: the virtual clock (time_machine moves `time.time()` with it) and its event queue;
  each Lambda invocation runs whole at its start time and is charged the latency of its calls.
- `meter`: counts every AWS call by service and operation, bills DynamoDB read and write units
  per partition key (table and index) per virtual second, and answers `TransactionConflict`
  when two invocations' transactions touch one item within a few milliseconds.
- `runpod`: the endpoint: a FIFO job queue, W workers with MAX_CONCURRENCY slots each, the
  documented per-route rate limits (429 past them), webhooks back to the API.
- `driver`: which control-plane entry points run when (the schedule, webhooks, splits,
  clients polling their batches).
- `report`: the figures of one cell (busy share, fairness, limits, cost) as one JSON object.
"""
