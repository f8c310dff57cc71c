"""Running a model through the front door (`python -m bench run`) and reading back its MLflow run."""

import json

import pytest


@pytest.fixture
def bench_run(capsys):
    """bench_run(*cli_args) -> (result JSON, the MLflow run, its artifact paths, the client)."""

    def run(*args):
        from bench.cli import main
        from bench.tracking import client as mlflow_client

        capsys.readouterr()
        assert main(["run", *args, "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        client = mlflow_client(None)
        mlflow_run = client.get_run(result["mlflow_run_id"])
        artifacts = {a.path for a in client.list_artifacts(mlflow_run.info.run_id)}
        return result, mlflow_run, artifacts, client

    return run
