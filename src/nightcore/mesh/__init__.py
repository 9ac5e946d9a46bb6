"""Night Mesh: many nodes coordinated through NATS JetStream (``nightcore node --mesh``).

``config`` (what to connect to), ``names`` (every subject, stream, bucket from the deployment
prefix), ``connect`` (nats-py, imported lazily), ``agent`` (the node's asyncio thread running the
mesh services), ``trust`` (the signed trust-state broadcast), ``heartbeat`` (node liveness),
``documents`` (the signed change documents), ``ops`` (publishing and ``mesh status``).
``docs/mesh.md`` describes the deployment, the names and the failure behaviour.
"""
