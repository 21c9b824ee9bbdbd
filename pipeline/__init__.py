"""DVC stages: one module per stage, the only code that reads or writes files or talks to MLflow."""
