"""Event webhooks, OpenAI's way: a tenant's endpoints (`/v1/webhook_endpoints`), the events
hotbatch emits (`batch.completed|failed|expired|cancelled`), signing (Standard Webhooks) and
sending. The tick's side (fan-out, retries) is `scheduler/notify.py`.

Not to be confused with `control_plane/webhooks.py`, the signed URLs RunPod calls back.
"""
