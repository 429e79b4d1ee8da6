"""Health: the sample the tick stores (`sample`), `GET /v1/health` judged from them (`report`),
and the keep-hot schedule (`schedule`)."""
