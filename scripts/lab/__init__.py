"""wirespan's proxy lab: a node made of network namespaces, real proxies and clients, and
captures with ground truth. See scripts/lab/README.md; CLI: ``python -m scripts.lab --help``."""

from .scenarios import SCENARIOS, missing  # noqa: F401
