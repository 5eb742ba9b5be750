"""Triggers: what invokes a function besides a direct call.

Webhooks and HTTP routes are served by the gateway; NATS subjects and cron
schedules by the trigger service (``python -m soulbox.triggers``), of which
several replicas may run: subjects are consumed in a queue group and every
cron tick is claimed by compare-and-set, so each fires once. The service
also delivers completion callbacks of asynchronous invocations.
"""
