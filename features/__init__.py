"""Pure code from transactions to per-customer features and labels: no files, no params, no MLflow."""
