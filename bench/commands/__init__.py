"""One module per `python -m bench` sub-command."""
