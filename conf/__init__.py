"""Hydra configs of wsca_lightning; installed as the package ``wsca_lightning.conf`` (see pyproject.toml)."""
