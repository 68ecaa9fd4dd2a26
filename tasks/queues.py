"""Queue names and task names: the stable public contract with other services (DESIGN §2, §3.4).

Other services enqueue by these names with `send_task`, so they never change meaning.
"""

from __future__ import annotations

ACCEPT_QUEUE = "wa.accept"  # validation + outbox write for outbound messages
INBOUND_QUEUE = "wa.inbound"  # routing of received messages into Postgres
WEBHOOKS_QUEUE = "wa.webhooks"  # webhook deliveries from the outbox
HOUSEKEEPING_QUEUE = "wa.housekeeping"  # beat-driven sweeps
OUT_QUEUE_PREFIX = "wa.out."  # one queue per instance, consumed only by its owner
SESSION_QUEUE_PREFIX = "wa.session."  # one queue per session worker (instance commands)

SEND_MESSAGE_TASK = "wafleet.send_message"
SEND_BULK_TASK = "wafleet.send_bulk"
DELIVER_TASK = "wafleet.deliver"
ROUTE_INBOUND_TASK = "wafleet.route_inbound"  # one message (older producers, queued tasks)
ROUTE_INBOUND_BATCH_TASK = "wafleet.route_inbound_batch"  # a list of messages, one transaction
MESSAGE_STATUS_TASK = "wafleet.message_status"
WEBHOOK_DELIVER_TASK = "wafleet.webhooks.deliver"
WEBHOOK_SWEEP_TASK = "wafleet.housekeeping.webhook_sweep"
WEBHOOK_REPLAY_TASK = "wafleet.webhooks.replay"
INSTANCE_COMMAND_TASK = "wafleet.instance_command"  # public: connect/disconnect/logout
SESSION_COMMAND_TASK = "wafleet.session_command"  # internal: "apply the instance's command"
CHECK_NUMBER_TASK = "wafleet.check_number"  # internal: is a number on WhatsApp (via the owner)


def out_queue(instance_id: object) -> str:
    """The per-instance outbound queue, `wa.out.<instance_id>` (DESIGN §3.4)."""
    return f"{OUT_QUEUE_PREFIX}{instance_id}"


def session_queue(worker_id: str) -> str:
    """A session worker's own queue, `wa.session.<worker_id>` (instance commands)."""
    return f"{SESSION_QUEUE_PREFIX}{worker_id}"
