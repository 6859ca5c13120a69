-- compose.yaml: the MLflow server's database beside Optuna's (created on the first start).
CREATE DATABASE mlflow OWNER doe;
