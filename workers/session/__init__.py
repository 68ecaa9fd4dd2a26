"""Session workers: long-lived processes owning a shard of instances' WhatsApp sockets.

    host     `SessionHost`: membership, rendezvous assignment, fenced leases, staggered starts,
             self-fencing, and the handover order of DESIGN §3.2 (pure asyncio; no Celery)
    worker   `wafleet worker session`: the Celery worker (threads pool) that runs the host on an
             asyncio loop thread and switches `wa.out.<instance_id>` consumers at runtime;
             its `wa.session.<worker_id>` queue carries instance commands to the host
    whatsapp the production session (protocol.aio client + key store + actor): applies the
             instance's desired state (connect by QR/code, disconnect, logout)
    actor    `OutboundActor`: the outbox sent in per-chat order with pacing and retries
    inbound  `InboundBatcher`: decrypted messages gathered into one routing task, then acked
    media    outbound media bytes (inline, or an SSRF-guarded URL fetch) and their upload
    metrics  the worker process's Prometheus metrics (sends, retries, reconnects, hosted
             sessions), served on WAFLEET_SESSION_METRICS_PORT; bounded labels only

Must not import: protocol.simulator.
"""
