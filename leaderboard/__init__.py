"""Rankings built from the logged runs: `python -m bench leaderboard`.

- :mod:`leaderboard.build`: runs from the MLflow store -> one JSON-able document (rules there);
- :mod:`leaderboard.render`: Markdown, CSV, a static HTML page with plots, terminal tables;
- :mod:`leaderboard.reference`: the reference runs behind the committed ``leaderboard.md``/``.csv``.
"""
