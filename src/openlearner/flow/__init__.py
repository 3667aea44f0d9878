"""Flow: where models are trained. Runs are tracked here for comparison and lineage."""

from openlearner.flow.runs import Run, RunTracker

__all__ = ["Run", "RunTracker"]
