"""Pure model code (CLV, churn, segments) on top of ``features``: no files, no params, no MLflow."""
