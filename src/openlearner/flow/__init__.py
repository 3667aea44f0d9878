"""Flow: workflows of typed operators, traced into a DAG, run locally or on Ray, cached, resumable, tracked.

```python
from openlearner.flow import operator, workflow, Resources, Dataset, ModelArtifact

@operator(resources=Resources(cpu=2))
def train_gbdt(train: Dataset, num_trees: int = 200) -> ModelArtifact: ...

run = ws.flow.run(ads_ctr, params={"days": 7}, executor="local")   # or "ray"
```
"""

from openlearner.flow.executors.base import Executor
from openlearner.flow.executors.local import LocalExecutor
from openlearner.flow.facade import Flow, load_workflow
from openlearner.flow.operator import Operator, Resources, RetryPolicy, log_metric, operator
from openlearner.flow.runs import ArtifactLineage, OperatorRun, Run, RunTracker
from openlearner.flow.schedule import NewRows, Scheduler
from openlearner.flow.sweep import RunComparison, SweepResult
from openlearner.flow.values import Dataset, ModelArtifact, register_model_format
from openlearner.flow.workflow import Future, Workflow, workflow

__all__ = [
    "ArtifactLineage",
    "Dataset",
    "Executor",
    "Flow",
    "Future",
    "LocalExecutor",
    "ModelArtifact",
    "NewRows",
    "Operator",
    "OperatorRun",
    "Resources",
    "RetryPolicy",
    "Run",
    "RunComparison",
    "RunTracker",
    "Scheduler",
    "SweepResult",
    "Workflow",
    "load_workflow",
    "log_metric",
    "operator",
    "register_model_format",
    "workflow",
]
