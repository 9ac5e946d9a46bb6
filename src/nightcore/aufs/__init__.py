"""AUFS: Night Core's TUF-secured update channel (docs/aufs.md).

* :mod:`~nightcore.aufs.repo` -- repository tooling: offline threshold signing of root and
  targets, online snapshot/timestamp, key rotation, status, backups.
* :mod:`~nightcore.aufs.client` -- python-tuf ``Updater`` with bounded transport and stable
  refusal codes.
* :mod:`~nightcore.aufs.update` -- refresh, download what changed, apply it safely
  (tenants, trust material, runtime releases), downgrade protection and overrides.
* :mod:`~nightcore.aufs.adapters` -- manifest schema translators and host ABI table.

Every TUF rule is python-tuf's; this package adds Night Core's artifacts, limits and codes.
"""
