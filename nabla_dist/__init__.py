"""nabla_dist: ∇-Reasoner experiments at scale (see README.md and shared design docs)."""

__version__ = "0.1.0"
