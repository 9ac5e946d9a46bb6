"""Evidence: signed run attestations, SBOMs, proof and forensic bundles."""
