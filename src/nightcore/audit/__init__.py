"""Tamper-evident evidence: the audit log, its RFC 9162 Merkle tree and signed checkpoints."""
