"""Airflow wiring of the retention core: configuration from connections and variables, task
callables and the DAG factory. The core (`lifecycle`) never imports Airflow."""
