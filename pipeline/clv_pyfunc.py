"""The CLV pyfunc as MLflow's "models from code" file: MLflow runs this file when it logs the model and when it loads
it (``mlflow.pyfunc.load_model``), instead of pickling a Python object.

Running it hands MLflow a ``pipeline.tracking.ClvPyfunc`` and nothing else; nothing imports it. The work at import
time is what MLflow's format asks of this one file.
"""

from pipeline import tracking

tracking.set_clv_model()
