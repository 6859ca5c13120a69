"""Study specification, objectives and the Optuna/MLflow loop."""
