"""Session workers: long-lived processes owning a shard of instances' WhatsApp sockets.

    host     `SessionHost`: membership, rendezvous assignment, fenced leases, staggered starts,
             self-fencing, and the handover order of DESIGN §3.2 (pure asyncio; no Celery)
    worker   `wafleet worker session`: the Celery worker (threads pool) that runs the host on an
             asyncio loop thread and switches `wa.out.<instance_id>` consumers at runtime

Must not import: protocol.simulator.
"""
