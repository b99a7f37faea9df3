"""The retention core: policy, decisions and actions. It never imports Airflow."""
